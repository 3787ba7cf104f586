"""Session fixtures: tiny models built locally once (no hub), and test markers."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from inseq_ray.toy import build_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {
        "gpt2": str(build_tiny_model("gpt2", root / "gpt2", init_std=0.2)),
        # init_std=0.2: peaked outputs, so gradients are far above the 1e-5 tolerance.
        # relu activation: DeepLift's rescale rule applies to nn.ReLU modules
        "bart": str(build_tiny_model("bart", root / "bart", activation="relu", init_std=0.2)),
        # Llama-style (BOS, RMSNorm, rotary) and T5 (relative bias; rescaled tied head -> "full" mode)
        "llama": str(build_tiny_model("llama", root / "llama", init_std=0.2)),
        "t5": str(build_tiny_model("t5", root / "t5", init_std=0.2)),
        "marian": str(build_tiny_model("marian", root / "marian", init_std=0.2)),  # non-zero final_logits_bias
    }


def _loaded(name: str):
    """A session fixture loading the tiny ``name`` model through the public path, once."""

    @pytest.fixture(scope="session")
    def fixture(model_dir):
        import inseq_ray

        return inseq_ray.load_model(model_dir[name], "saliency", device="cpu")

    return fixture


gpt2, bart, llama, t5, marian = (_loaded(n) for n in ("gpt2", "bart", "llama", "t5", "marian"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on 127.0.0.1 (free port); env points s3fs/pyarrow/polars/Ray workers at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="inseq-test")
    yield {"endpoint": endpoint, "bucket": "inseq-test", "env": env}
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(s3):
    """One in-process Ray for the session (4 logical CPUs), started after the S3 env is in place."""
    import ray

    import tests.faults

    ray.cloudpickle.register_pickle_by_value(tests.faults)  # test blocks travel to the actors by value
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield {}
    ray.shutdown()


@pytest.fixture
def s3_proxy(s3):
    """Start benchmarks/s3proxy.py in front of moto: ``start(latency_ms, fail_put, fail_get) -> endpoint``;
    ``start.counts(endpoint)`` stops that proxy and returns its request and fault counts."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    procs = []

    def start(latency_ms: float = 0.0, fail_put: float = 0.0, fail_get: float = 0.0, seed: int = 0) -> str:
        port = _free_port()
        script = Path(__file__).resolve().parents[1] / "benchmarks" / "s3proxy.py"
        args = [sys.executable, str(script), "--listen", f"127.0.0.1:{port}", "--upstream", s3["endpoint"]]
        args += ["--latency-ms", str(latency_ms), "--fail-put", str(fail_put), "--fail-get", str(fail_get)]
        procs.append(subprocess.Popen([*args, "--seed", str(seed)], stdout=subprocess.PIPE, text=True))
        import socket

        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}"
            time.sleep(0.05)
        raise RuntimeError("s3proxy did not start")

    by_endpoint: dict = {}

    def counts(endpoint: str) -> dict:
        import json

        proc = by_endpoint[endpoint]
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        return json.loads(out.strip().splitlines()[-1])

    def started(*args, **kwargs) -> str:
        endpoint = start(*args, **kwargs)
        by_endpoint[endpoint] = procs[-1]
        return endpoint

    started.counts = counts
    yield started
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait(timeout=10)
