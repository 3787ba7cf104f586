"""Transient object-store errors are a tested promise: 503 SlowDown on 10% of PUTs and 5% of GETs, exact output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import polars as pl

from inseq_ray.toy.tasks import translation_corpus

TABLES = ["sequences", "source_attributions", "target_attributions", "step_scores", "errors"]


def test_a_run_through_failing_storage_gives_exact_output(s3, s3_proxy, tmp_path):
    client = boto3.client("s3", endpoint_url=s3["endpoint"], region_name="us-east-1")
    lines = [s for s, _, _ in translation_corpus(120, seed=31)] + [""]  # one empty line: one error row
    corpus = "".join(json.dumps({"source": s}) + "\n" for s in lines)
    client.put_object(Bucket=s3["bucket"], Key="faults/in/c.jsonl", Body=corpus.encode())
    proxy = s3_proxy(fail_put=0.10, fail_get=0.05, seed=3)
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy, "RAY_USAGE_STATS_ENABLED": "0"}
    out = f"s3://{s3['bucket']}/faults/run"
    cmd = [sys.executable, "-m", "inseq_ray.cli", "attribute-dataset", "--local", "--quiet", "--no-report"]
    cmd += ["--input", f"s3://{s3['bucket']}/faults/in/c.jsonl", "--output", out, "--shard-bytes", "2048"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    faults = s3_proxy.counts(proxy)
    assert faults["failed_put"] >= 3 and faults["get"] > 0, faults  # PUT faults really happened (GETs: next test)

    # read back directly from moto (no faults): exact output
    read = {name: pl.read_parquet(f"{out}/tables/{name}/*.parquet") for name in TABLES}  # env: moto itself
    seqs, errs = read["sequences"], read["errors"]
    assert seqs.height == 120 and errs.height == 1 and errs["reason"][0] == "empty"
    assert seqs["seq_id"].n_unique() == 120 and set(seqs["seq_id"]).isdisjoint(errs["seq_id"])
    steps = read["step_scores"]
    assert steps.group_by("seq_id", "step").len()["len"].max() == 1 and set(steps["seq_id"]) == set(seqs["seq_id"])
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix="faults/run/sequences/"):
        keys += [o["Key"] for o in page.get("Contents", [])]
    assert sorted(keys) == sorted(f"faults/run/sequences/{i[:2]}/{i}.json.gz" for i in seqs["seq_id"])  # no strays
    from inseq_ray.serialization import from_bytes

    for uri in seqs["object_uri"].to_list()[:10]:
        key = uri.removeprefix(f"s3://{s3['bucket']}/")
        body = client.get_object(Bucket=s3["bucket"], Key=key)["Body"].read()
        assert from_bytes(body, key)[0].n_steps > 0


def test_reads_through_failing_gets_are_exact(s3, s3_proxy):
    client = boto3.client("s3", endpoint_url=s3["endpoint"], region_name="us-east-1")
    lines = [s for s, _, _ in translation_corpus(30, seed=5)]
    client.put_object(Bucket=s3["bucket"], Key="gets/c.txt", Body="".join(s + "\n" for s in lines).encode())
    proxy = s3_proxy(fail_get=0.2, seed=2)  # one sequential reader: the fault sequence is deterministic
    code = (
        "from inseq_ray.pipeline.shards import plan_shards, read_shard\n"
        f"shards = plan_shards('s3://{s3['bucket']}/gets/c.txt', shard_bytes=128)\n"
        "print('\\n'.join(r.source for s in shards for r in read_shard(s)))\n"
    )
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == lines
    faults = s3_proxy.counts(proxy)
    assert faults["failed_get"] >= 1, faults


def test_a_storage_outage_fails_cleanly_and_a_rerun_resumes(s3, s3_proxy, tmp_path):
    client = boto3.client("s3", endpoint_url=s3["endpoint"], region_name="us-east-1")
    lines = [s for s, _, _ in translation_corpus(40, seed=32)]
    client.put_object(Bucket=s3["bucket"], Key="outage/in/c.txt", Body="".join(s + "\n" for s in lines).encode())
    out = f"s3://{s3['bucket']}/outage/run"
    cmd = [sys.executable, "-m", "inseq_ray.cli", "attribute-dataset", "--local", "--quiet", "--no-report"]
    cmd += ["--input", f"s3://{s3['bucket']}/outage/in/c.txt", "--output", out, "--shard-bytes", "1024"]
    down = s3_proxy(fail_put=0.6, seed=4)  # most writes fail; 2 tries each: the outage outlasts the retries
    failed = subprocess.run(
        [*cmd, "--storage-attempts", "2"], env={**os.environ, "AWS_ENDPOINT_URL": down},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert failed.returncode == 2, failed.stderr[-2000:]
    message = failed.stderr.strip()
    assert len(message.splitlines()) == 1 and "cannot write" in message and "Traceback" not in message
    healed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)  # moto direct
    assert healed.returncode == 0, healed.stderr[-2000:]
    seqs = pl.read_parquet(f"{out}/tables/sequences/*.parquet")
    assert seqs.height == 40 and seqs["seq_id"].n_unique() == 40
