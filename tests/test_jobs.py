"""Shipped job configs are valid, and a real `ray job submit` of the entrypoint completes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    data = yaml.safe_load(path.read_text())
    cfg = PipelineConfig.from_dict(data)
    cfg.output = cfg.output or "/tmp/x"
    cfg.validate()


def test_unknown_config_key_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown config key.*batchsize"):
        PipelineConfig.from_dict({"batchsize": 3})


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_of_the_shipped_entrypoint(tmp_path):
    """Token auth as the AWS launcher sets it up: one token file, read by the head and by `ray job submit`."""
    import secrets

    venv_bin = Path(sys.executable).parent
    ray_cli = venv_bin / "ray"
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
    }
    env.pop("RAY_ADDRESS", None)
    gcs, dash = _port(), _port()
    temp = Path("/tmp") / f"rayjob-{os.getpid()}"  # short path: Ray's socket names have a length limit
    start = [
        str(ray_cli),
        "start",
        "--head",
        "--block",
        "--num-cpus=4",
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        # the agents' default ports are taken by any other Ray on the machine (the suite's in-process one): a
        # head that cannot bind them never gets a job agent ("No available agent")
        f"--dashboard-agent-listen-port={_port()}",
        f"--dashboard-agent-grpc-port={_port()}",
        f"--runtime-env-agent-port={_port()}",
        f"--metrics-export-port={_port()}",
        f"--ray-client-server-port={_port()}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    # --block + own process group: stopping it stops this cluster only (never `ray stop`, which kills every cluster)
    head = subprocess.Popen(
        start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    out = tmp_path / "job-run"
    try:
        _wait_for_dashboard(dash, token.read_text())
        submit = [str(ray_cli), "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                  "--", "python", "jobs/attribute_dataset.py", "--config", "jobs/configs/example.yaml",
                  "--output", str(out), "--quiet"]  # fmt: skip
        deadline = time.monotonic() + 600  # a safety net only: the loop ends on the agent's answer
        while True:  # the dashboard answers before its job agent is up (slow on a loaded machine): wait for it
            job = subprocess.run(submit, check=False, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in job.stdout + job.stderr or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        manifest = Storage(str(out)).read_json("manifest.json")
        assert manifest["records"] == 201 and manifest["errors"] == 1
        assert "done: 201 records" in job.stdout
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_dashboard(port: int, token: str, timeout: float = 120) -> None:
    import time
    import urllib.request

    deadline = time.time() + timeout
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"Ray dashboard on 127.0.0.1:{port} did not come up")


def test_the_job_entrypoint_refuses_a_relative_output(capsys):
    sys.path.insert(0, str(ROOT / "jobs"))
    try:
        import attribute_dataset
    finally:
        sys.path.pop(0)
    assert attribute_dataset.main(["--config", str(ROOT / "jobs/configs/example.yaml"), "--output", "out/x"]) == 2
    assert "temporary working directory" in capsys.readouterr().err
