"""Cluster definitions: YAMLs parse and point at real files; versions agree everywhere; no secrets committed."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RAY_PIN = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray")).split("==")[1]
YAMLS = sorted(p for d in ("infra", "jobs") for p in (ROOT / d).rglob("*.yaml"))


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(ROOT)) for p in YAMLS])
def test_yaml_parses(path):
    assert _docs(path)


def _entrypoint_files(cmd: str) -> list[Path]:
    return [ROOT / tok for tok in cmd.split() if tok.endswith((".py", ".yaml"))]


def test_rayjob_entrypoint_config_and_versions():
    (job,) = _docs(ROOT / "infra/kuberay/rayjob.yaml")
    files = _entrypoint_files(job["spec"]["entrypoint"])
    assert files and all(f.exists() for f in files), files
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == RAY_PIN
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    workers = spec["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert workers["minReplicas"] < workers["maxReplicas"] and spec["enableInTreeAutoscaling"]
    for pod in [spec["headGroupSpec"]["template"]["spec"], workers["template"]["spec"]]:
        container = pod["containers"][0]
        assert "value" not in str([e for e in container.get("env", []) if "SECRET" in e["name"] or "KEY" in e["name"]])
        assert pod["securityContext"]["runAsNonRoot"]


def test_aws_cluster_launcher():
    (cfg,) = _docs(ROOT / "infra/aws/cluster.yaml")
    assert cfg["provider"]["type"] == "aws"
    for node in cfg["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Name"]
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd and "RAY_AUTH_MODE=token" in head_cmd
    # the token exists before the head starts: file_mounts copies the client's token to every node
    token_path = next(iter(cfg["file_mounts"]))
    assert cfg["file_mounts"][token_path] == "~/.ray/auth_token"
    for cmd in (*cfg["head_start_ray_commands"], *cfg["worker_start_ray_commands"]):
        if "ray start" in cmd:
            assert f"RAY_AUTH_TOKEN_PATH={token_path}" in cmd and "RAY_AUTH_MODE=token" in cmd
    commands = (ROOT / "infra/aws/cluster.yaml").read_text()
    for f in re.findall(r"(jobs/\S+\.(?:py|yaml))", commands):
        assert (ROOT / f).exists(), f


def test_dockerfile_matches_pyproject_and_ci():
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    args = [i["value"] for i in parser.structure if i["instruction"] == "ARG"]
    assert f"RAY_VERSION={RAY_PIN}" in args
    assert "VARIANT=-gpu" in args  # GPU by default; --build-arg VARIANT= gives the CPU image
    assert parser.baseimage == f"rayproject/ray:{RAY_PIN}-py311-gpu"  # ARGs resolved by the parser
    assert ">=3.11" in PYPROJECT["project"]["requires-python"]
    runs = [i["value"] for i in parser.structure if i["instruction"] == "RUN"]
    setup = (ROOT / "scripts/setup").read_text()  # what .ci/run, scripts/test and scripts/demo install with
    assert "scripts/setup" in (ROOT / ".ci/run").read_text()
    # torch 2.13.0 first, then the project, as in scripts/setup
    assert setup.index("torch==2.13.0") < setup.index('install -e ".[dev]"')
    assert len(runs) == 2 and "torch==2.13.0" in runs[0] and runs[1] == "pip install --no-cache-dir ."
    users = [i["value"] for i in parser.structure if i["instruction"] == "USER"]
    assert users == ["ray"]
    assert (ROOT / ".dockerignore").exists()
    docker_images = re.findall(r"image: (\S+)", (ROOT / "infra/aws/cluster.yaml").read_text())
    assert docker_images and all(PYPROJECT["project"]["version"] in img for img in docker_images)


SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"(?i)(secret|password|token)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{32,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"gh[pousr]_[A-Za-z0-9]{30,}"),
    re.compile(r"hf_[A-Za-z0-9]{30,}"),
    re.compile(r"xox[baprs]-[A-Za-z0-9-]{10,}"),
]


def test_no_secret_looking_values_are_committed():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in (".safetensors", ".png") or path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(errors="ignore")
        hits += [f"{name}: {p.pattern}" for p in SECRET_PATTERNS if p.search(text)]
    assert not hits, hits


def test_dry_run_estimate_is_within_10_percent_of_the_real_run(tmp_path):
    from inseq_ray.pipeline.config import PipelineConfig
    from inseq_ray.pipeline.estimate import estimate
    from inseq_ray.pipeline.runner import run
    from inseq_ray.toy.tasks import translation_corpus

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(s for s, _, _ in translation_corpus(1500, seed=8)) + "\n")
    cfg = PipelineConfig(input=str(corpus), output=str(tmp_path / "run"), shard_bytes=4096, use_ray=False)
    est = estimate(cfg, sample_records=300, attribute_records=48)
    assert est["sampled_records"] < 1500  # a sample, not the whole corpus
    manifest = run(cfg, progress=False)
    assert abs(est["estimated_records"] - manifest["records"]) <= 0.1 * manifest["records"]
    assert abs(est["estimated_target_tokens"] - manifest["target_tokens"]) <= 0.1 * manifest["target_tokens"]
    assert est["estimated_gpu_hours"] == pytest.approx(est["estimated_records"] / 1500 / 3600)
    # requests: one PUT per object, plus tables and marker per shard (counted from what the run wrote)
    written = sum(1 for p in (tmp_path / "run").rglob("*") if p.is_file() and "_tmp" not in p.parts)
    assert abs(est["estimated_put_requests"] - written) <= 0.1 * written
    assert est["estimated_request_usd"] == pytest.approx(
        est["estimated_put_requests"] * 0.005 / 1000 + est["estimated_get_requests"] * 0.0004 / 1000
    )
