"""No secret a user gives us (environment, presigned input URLs, ``user:pass@``, config files) is stored or printed.

Each secret is a distinct planted value; after real CLI runs (local and on Ray, output on S3 through moto,
input over HTTP from a loopback server) every byte the runs wrote is searched for each of them: every object
under the output prefix, the report folder, the captured stdout/stderr, and Ray's session log folder.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from inseq_ray.redact import redact_text, redact_url
from inseq_ray.toy.tasks import translation_corpus

SENTENCES = [s for s, _, _ in translation_corpus(12, seed=5)]
# Planted values: distinct, and nothing else in a run could produce them by chance.
ENV_SECRETS = {
    "AWS_SESSION_TOKEN": "PLANTEDenvSessionToken7c1d",
    "HF_TOKEN": "hf_PLANTEDenvHubToken93ab",
    "DB_PASSWORD": "PLANTEDenvUnrelatedPassword55",
}
PRESIGN_KEY, PRESIGN_SECRET, PRESIGN_TOKEN = "ASIAXPLANTEDPRESIGN9", "PLANTEDpresignSecret0x9", "PLANTEDpresignToken42"
GCS_CREDENTIAL, GCS_SIGNATURE = "PLANTEDgcsServiceAccount", "9f1e2d3cPLANTEDgcsSignature"
AZURE_SIG = "PLANTEDazureSasSig%2Bq%3D"
TOKEN = "PLANTEDbearerQueryToken"
USER_PASSWORD = "PLANTEDuserinfoPassword"


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ignores the query (as a signed-URL store would after checking it); sends an ETag."""

    def end_headers(self) -> None:
        path = self.translate_path(self.path)
        if os.path.isfile(path):
            self.send_header("ETag", '"' + hashlib.md5(Path(path).read_bytes()).hexdigest() + '"')
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "corpus.txt").write_text("".join(s + "\n" for s in SENTENCES[:6]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Files(*a, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _presigned(s3, seconds: int) -> str:
    """A real SigV4 presigned GET URL of the corpus on moto, with a session token (re-issued per call)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        region_name="us-east-1",
        config=Config(signature_version="s3v4"),
        aws_access_key_id=PRESIGN_KEY,
        aws_secret_access_key=PRESIGN_SECRET,
        aws_session_token=PRESIGN_TOKEN,
    )
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": s3["bucket"], "Key": "secrets/corpus.txt"}, ExpiresIn=seconds
    )


def _env(s3, ray_tmp: str | None = None) -> dict:
    env = {**os.environ, **s3["env"], **ENV_SECRETS, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if ray_tmp:
        env["RAY_TMPDIR"] = ray_tmp
    env.pop("RAY_ADDRESS", None)
    return env


def _cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "inseq_ray.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)


def _secrets(s3) -> list[str]:
    """Every planted value, plus the moto session's own secret key, in the forms a leak could take."""
    values = [*ENV_SECRETS.values(), PRESIGN_KEY, PRESIGN_TOKEN, GCS_CREDENTIAL, GCS_SIGNATURE, TOKEN, USER_PASSWORD]
    values += [AZURE_SIG, AZURE_SIG.split("%")[0], s3["env"]["AWS_SECRET_ACCESS_KEY"], PRESIGN_SECRET]
    return values


def _find(secrets: list[str], blobs: dict[str, bytes]) -> list[str]:
    return [f"{secret!r} in {where}" for where, data in blobs.items() for secret in secrets if secret.encode() in data]


def _folder_bytes(root: str | Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    out[path] = f.read()
    return out


def _s3_bytes(prefix: str) -> dict[str, bytes]:
    import s3fs

    fs = s3fs.S3FileSystem()
    return {path: fs.cat_file(path) for path in fs.find(prefix)}


def test_redaction_drops_every_signing_scheme_and_is_stable_across_reissues():
    aws = "https://b.s3.amazonaws.com/c.txt?versionId=3&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAX%2F2026&X-Amz-Date=20261201T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Security-Token=TOK&X-Amz-Signature=SIG"
    aws2 = aws.replace("20261201T000000Z", "20261202T101010Z").replace("SIG", "OTHER").replace("TOK", "TOK2")
    assert redact_url(aws) == redact_url(aws2) == "https://b.s3.amazonaws.com/c.txt?versionId=3"
    gcs = "https://storage.googleapis.com/b/c.txt?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa&X-Goog-Signature=ab"
    azure = "https://a.blob.core.windows.net/c/c.txt?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-12-02&spr=https&sig=Zz%3D"
    v2 = "https://b.s3.amazonaws.com/c.txt?AWSAccessKeyId=AKIA&Expires=1&Signature=s"
    front = "https://d.cloudfront.net/c.txt?Expires=1&Signature=s&Key-Pair-Id=K&Policy=p"
    for url in (gcs, azure, v2, front):
        assert "?" not in redact_url(url), url
    assert redact_url("https://u:PW@h/c.txt?token=T&alt=media#x") == "https://h/c.txt?alt=media#x"
    assert redact_url("s3://bucket/corpus/*.jsonl") == "s3://bucket/corpus/*.jsonl"  # plain URLs unchanged
    text = f"GET {aws} failed; retried with X-Amz-Signature=SIG2 and sig=S3"
    assert not any(s in redact_text(text) for s in ("AKIAX", "TOK", "SIG", "S3"))
    assert "versionId=3" in redact_text(text) and "first=1" in redact_text("first=1 step=2")


def test_no_planted_secret_is_stored_or_printed_local_ray_and_report(tmp_path, s3, http_files):
    import boto3

    corpus = "".join(s + "\n" for s in SENTENCES[:6]).encode()
    boto3.client("s3", endpoint_url=s3["endpoint"], region_name="us-east-1").put_object(
        Bucket=s3["bucket"], Key="secrets/corpus.txt", Body=corpus
    )
    aws = _presigned(s3, 3600)
    assert PRESIGN_KEY in aws and "X-Amz-Signature" in aws and "X-Amz-Security-Token" in aws
    signature = parse_qs(urlsplit(aws).query)["X-Amz-Signature"][0]
    gcs = (
        f"{http_files}/corpus.txt?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential={GCS_CREDENTIAL}%2F20261201"
        f"%2Fauto%2Fstorage%2Fgoog4_request&X-Goog-Date=20261201T000000Z&X-Goog-Expires=900"
        f"&X-Goog-SignedHeaders=host&X-Goog-Signature={GCS_SIGNATURE}"
    )
    azure = f"{http_files}/corpus.txt?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-12-02T00:00:00Z&spr=http&sig={AZURE_SIG}"
    config = tmp_path / "run.yaml"
    config.write_text(f"input: '{azure}'\nshard_bytes: 4096\n")
    ray_tmp = tempfile.mkdtemp(prefix="ir", dir="/tmp")  # short: Ray's socket paths must fit
    out = f"s3://{s3['bucket']}/secret-runs"
    common = ["attribute-dataset", "--quiet", "--batch-size", "4"]
    try:
        runs = {
            "aws-ray": _cli(
                ["attribute-dataset", "--batch-size", "4", "--input", aws, "--output", f"{out}/aws"], _env(s3, ray_tmp)
            ),  # progress on
            "gcs-local": _cli([*common, "--local", "--input", gcs, "--output", f"{out}/gcs"], _env(s3)),
            "config-local": _cli([*common, "--local", "--config", str(config), "--output", f"{out}/az"], _env(s3)),
            "token-local": _cli(
                [*common, "--local", "--input", f"{http_files}/corpus.txt?token={TOKEN}", "--output", f"{out}/tok"],
                _env(s3),
            ),
        }
        for name, done in runs.items():
            assert done.returncode == 0, (name, done.stderr[-3000:])
            assert "6 ok" in done.stdout, (name, done.stdout[-2000:])
        refused = _cli(
            [*common, "--local", "--input", f"http://user:{USER_PASSWORD}@127.0.0.1:1/c.txt", "--output", out + "/u"],
            _env(s3),
        )
        assert refused.returncode == 2 and "carries credentials" in refused.stderr
        missing = _cli(
            [*common, "--local", "--input", gcs.replace("corpus.txt", "gone.txt"), "--output", out], _env(s3)
        )
        assert missing.returncode == 2 and "gone.txt" in missing.stderr
        report_dir = tmp_path / "report"
        report = _cli(["report", f"{out}/aws", "--output", str(report_dir), "--sample", "3"], _env(s3))
        assert report.returncode == 0, report.stderr[-2000:]

        blobs = _s3_bytes(out) | _folder_bytes(report_dir) | _folder_bytes(ray_tmp)
        for name, done in [*runs.items(), ("refused", refused), ("missing", missing), ("report", report)]:
            blobs[f"{name} stdout"], blobs[f"{name} stderr"] = done.stdout.encode(), done.stderr.encode()
        assert any(k.endswith("_run.json") for k in blobs) and any("/tables/sequences/" in k for k in blobs)
        assert any("/sequences/" in k and k.endswith(".json.gz") for k in blobs)
        assert any("session_" in k and "/logs/" in k for k in blobs), "Ray's session logs were not searched"
        assert _find([*_secrets(s3), signature], blobs) == []
        # gzip'd objects: search their decompressed bytes too
        import gzip

        unzipped = {k + " (unzipped)": gzip.decompress(v) for k, v in blobs.items() if k.endswith(".gz")}
        assert unzipped and _find([*_secrets(s3), signature], unzipped) == []
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_presigned_input_reissued_with_a_new_signature_is_the_same_run(tmp_path, s3):
    import boto3
    import polars as pl

    from inseq_ray.pipeline.config import PipelineConfig
    from inseq_ray.pipeline.runner import run

    corpus = "".join(s + "\n" for s in SENTENCES[6:10]).encode()
    boto3.client("s3", endpoint_url=s3["endpoint"], region_name="us-east-1").put_object(
        Bucket=s3["bucket"], Key="secrets/corpus.txt", Body=corpus
    )
    first, second = _presigned(s3, 3600), _presigned(s3, 1800)  # another expiry: another signature
    assert first != second and redact_url(first) == redact_url(second)

    def cfg(url: str, out: str) -> PipelineConfig:
        return PipelineConfig(input=url, output=str(tmp_path / out), use_ray=False)

    assert cfg(first, "a").fingerprint() == cfg(second, "a").fingerprint()
    manifest = run(cfg(first, "a"), progress=False)
    assert manifest["ok"] == 4
    again = run(cfg(second, "a"), progress=False)  # same output: the same run, complete, not "input changed"
    assert again.get("already_complete") and again["fingerprint"] == manifest["fingerprint"]
    run(cfg(second, "b"), progress=False)  # a fresh prefix: the same file key and the same seq_ids

    def ids(out: str) -> pl.DataFrame:
        return pl.read_parquet(tmp_path / out / "tables" / "sequences" / "*.parquet").select("seq_id", "source_file")

    a, b = ids("a").sort("seq_id"), ids("b").sort("seq_id")
    assert a.equals(b) and set(a["source_file"]) == {"corpus.txt"}
    record = json.loads((tmp_path / "a" / "_run.json").read_text())
    assert list(record["inputs"]) == ["corpus.txt"] and "?" not in record["config"]["input"]
