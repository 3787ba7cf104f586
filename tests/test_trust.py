"""A run a researcher can trust: refusals that say what differs, one-line errors, resume messages, quiet output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

import inseq_ray as inseq
from inseq_ray.cli import main
from inseq_ray.pipeline.blocks import Attribute, CommitShard, ReadShard, WriteObjects
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import PipelineError, run
from inseq_ray.pipeline.storage import Storage
from inseq_ray.toy.tasks import translation_corpus

ROOT = Path(__file__).parent.parent
SENTENCES = [s for s, _, _ in translation_corpus(60, seed=21)]


def corpus(tmp_path, n=12, name="c.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(s + "\n" for s in SENTENCES[:n]))
    return path


def cli(*argv: str) -> list[str]:
    return ["attribute-dataset", "--local", "--quiet", "--no-report", *argv]


def test_a_finished_run_is_complete_for_its_config_and_refused_for_another(tmp_path, capsys):
    args = cli("--input", str(corpus(tmp_path)), "--output", str(tmp_path / "run"))
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    assert "already complete: 12 records (see manifest.json)" in capsys.readouterr().out
    assert main([*args, "--method", "input_x_gradient"]) == 2
    err = capsys.readouterr().err
    assert "complete run with another configuration (method: 'saliency' there -> 'input_x_gradient' here)" in err
    assert "nothing was changed" in err and "Traceback" not in err


class Boom:
    """A block that fails every shard (as a broken model or disk would), before anything commits."""

    needs, provides = ("records",), ()

    def __init__(self, cfg) -> None: ...

    def __call__(self, batch):
        raise RuntimeError("boom: the attribute step failed")


def test_a_start_that_commits_nothing_leaves_the_output_reusable(tmp_path):
    cfg = PipelineConfig(input=str(corpus(tmp_path)), output=str(tmp_path / "run"), use_ray=False)
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg, progress=False, blocks=(ReadShard, Boom, Attribute, WriteObjects, CommitShard))
    assert not (tmp_path / "run" / "_run.json").exists()
    other = PipelineConfig(input=cfg.input, output=cfg.output, use_ray=False, method="input_x_gradient")
    assert run(other, progress=False)["ok"] == 12  # the mistake fixed, the same output works


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--input", "/nonexistent/corpus/*.jsonl"], "input: No input files found"),
        (["--model", "someone/not-a-model-xyz"], "model: 'someone/not-a-model-xyz' cannot be loaded"),
        (["--source-column", "text"], "no string column 'text' in c.jsonl; pass --source-column"),
        (["--method", "salency"], "Unknown attribution method 'salency'. Valid ids:"),
    ],
)
def test_mistakes_are_one_line_before_any_cluster_starts(tmp_path, capsys, argv, expected):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"source": s}) + "\n" for s in SENTENCES[:3]))
    args = ["attribute-dataset", "--quiet", "--no-report", "--input", str(path), "--output", str(tmp_path / "run")]
    assert main([*args, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run" / "_run.json").exists()


def test_s3_output_without_credentials_names_the_variables(tmp_path, s3):
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": s3["endpoint"],
        "AWS_EC2_METADATA_DISABLED": "true",
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    out = subprocess.run(
        [sys.executable, "-m", "inseq_ray.cli", *cli("--input", str(corpus(tmp_path))),
         "--output", f"s3://{s3['bucket']}/nocreds/run"],
        env=env, check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "AWS_ACCESS_KEY_ID" in out.stderr and "AWS_PROFILE" in out.stderr and "Traceback" not in out.stderr


def test_ctrl_c_says_how_far_it_got_and_a_rerun_resumes(tmp_path):
    path = corpus(tmp_path, n=60)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "inseq_ray.cli", *cli("--input", str(path), "--output", str(out))]
    args += ["--shard-bytes", "1024"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "_shards").glob("*.json"))) < 1:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    committed = len(list((out / "_shards").glob("*.json")))
    assert f"interrupted after {committed}/" in err
    again = subprocess.run(
        [a for a in args if a != "--quiet"], check=False, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and f"resuming: {committed}/" in again.stderr


@pytest.mark.ray
def test_a_failure_inside_an_actor_is_one_line_with_the_log_folder(tmp_path, ray_local):
    cfg = PipelineConfig(input=str(corpus(tmp_path)), output=str(tmp_path / "run"), num_actors=1)
    with pytest.raises(PipelineError) as e:
        run(cfg, progress=False, blocks=(ReadShard, Boom, Attribute, WriteObjects, CommitShard))
    message = str(e.value)
    assert message.startswith("RuntimeError: boom: the attribute step failed") and "full logs:" in message
    assert len(message.splitlines()) == 1


def test_progress_is_reported_per_batch_not_per_shard(tmp_path):
    from inseq_ray.pipeline.runner import run_local
    from inseq_ray.pipeline.shards import plan_shards

    cfg = PipelineConfig(input=str(corpus(tmp_path, n=40)), output=str(tmp_path / "run"), batch_size=8)
    calls: list[int] = []
    summaries = list(run_local(cfg, plan_shards(cfg.input), on_records=calls.append))
    assert len(summaries) == 1 and sum(calls) == 40 and len([c for c in calls if c]) == 5  # 5 batches of 8


def test_rays_known_noise_is_dropped_from_stderr_and_the_rest_kept():
    code = (
        "import os, sys\n"
        "from inseq_ray.pipeline.quiet import filter_stderr\n"
        "filter_stderr()\n"
        "os.write(2, b'[2026 E 1 1] core_worker.cc:2465: Actor has constructor arguments in the object store\\n')\n"
        "sys.stderr.write('\\rAttributing: 50%')\n"
        "sys.stderr.write('\\nreal error line\\n')\n"
        "sys.stderr.flush()\n"
        "import time; time.sleep(0.3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert "constructor arguments" not in out.stderr
    assert "Attributing: 50%" in out.stderr and "real error line" in out.stderr


def test_object_uris_are_absolute_and_load_from_anywhere(tmp_path, monkeypatch):
    path = corpus(tmp_path, n=3)
    monkeypatch.chdir(tmp_path)
    run(PipelineConfig(input=str(path), output="relative/run", use_ray=False), progress=False)
    import polars as pl

    uris = pl.read_parquet(str(tmp_path / "relative/run/tables/sequences/*.parquet"))["object_uri"].to_list()
    assert Storage("relative/run").prefix == str(tmp_path / "relative/run")
    monkeypatch.chdir("/")
    for uri in uris:
        assert os.path.isabs(uri)
        assert inseq.FeatureAttributionOutput.load(uri)[0].n_steps > 0


def test_setup_announces_its_steps_and_pyproject_has_no_deprecated_license_table():
    setup = (ROOT / "scripts/setup").read_text()
    assert all(f"setup {i}/6" in setup for i in range(1, 7)) and " -q " not in setup
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
