"""The corpus pipeline: blocks in a local loop, Ray Data actors, S3 on moto, resume and fault recovery."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import inseq_ray as inseq
from inseq_ray.errors import UnsafeKeyError
from inseq_ray.pipeline.blocks import Attribute, CommitShard, ReadShard, WriteObjects
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from inseq_ray.pipeline.shards import plan_shards, read_shard
from inseq_ray.pipeline.storage import Storage, safe_part
from inseq_ray.step_scores import STEP_FUNCTIONS
from inseq_ray.toy.tasks import translation_corpus

TABLES = ["sequences", "source_attributions", "target_attributions", "step_scores", "errors"]


def make_corpus(folder, n=60, seed=5):
    """A txt file and a jsonl file (half with forced targets), plus csv and parquet copies."""
    pairs = translation_corpus(n, seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_text("\n".join(s for s, _, _ in pairs[: n // 3]) + "\n")
    with open(folder / "b.jsonl", "w") as f:
        for i, (s, t, _) in enumerate(pairs[n // 3 : 2 * n // 3]):
            f.write(json.dumps({"source": s, "target": t} if i % 2 else {"source": s}) + "\n")
    rest = pairs[2 * n // 3 :]
    pq.write_table(
        pa.table({"source": [s for s, _, _ in rest[:5]], "target": [t for _, t, _ in rest[:5]]}),
        folder / "c.parquet",
        row_group_size=2,
    )
    (folder / "d.csv").write_text("source\n" + "\n".join(s for s, _, _ in rest[5:]) + "\n")
    return n


def read_table(prefix, name):
    return pl.scan_parquet(f"{prefix}/tables/{name}/*.parquet").collect()


def check_complete(prefix, n_input):
    """ok + error == input; each table holds each seq_id once (per sequence) and nothing else."""
    manifest = Storage(str(prefix)).read_json("manifest.json")
    seqs, errs = read_table(prefix, "sequences"), read_table(prefix, "errors")
    assert seqs.height + errs.height == n_input == manifest["records"]
    assert seqs["seq_id"].n_unique() == seqs.height and errs["seq_id"].n_unique() == errs.height
    assert set(seqs["seq_id"]).isdisjoint(set(errs["seq_id"]))
    steps = read_table(prefix, "step_scores")
    assert steps.group_by("seq_id", "step").len()["len"].max() == 1
    assert set(steps["seq_id"]) == set(seqs["seq_id"])
    for name in TABLES:
        assert manifest["table_rows"][name] == read_table(prefix, name).height
    return manifest, seqs, errs


def test_shards_are_deterministic_and_cover_every_line(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"".join(f"line number {i}\n".encode() for i in range(500)))
    shards = plan_shards(str(tmp_path / "x.txt"), shard_bytes=1024)
    assert len(shards) > 5 and shards == plan_shards(str(tmp_path / "x.txt"), shard_bytes=1024)
    records = [r for s in shards for r in read_shard(s)]
    assert [r.source for r in records] == [f"line number {i}" for i in range(500)]
    assert len({r.seq_id for r in records}) == 500
    again = [r.seq_id for s in plan_shards(str(tmp_path / "x.txt"), shard_bytes=999) for r in read_shard(s)]
    assert again == [r.seq_id for r in records]  # ids depend on content and position, not on sharding


def test_local_run_on_every_format_with_bad_records(tmp_path):
    corpus = tmp_path / "corpus"
    n = make_corpus(corpus)
    with open(corpus / "a.txt", "ab") as f:  # bad records mixed into good ones
        f.write(b"\n")  # empty line
        f.write(b"the cat sees \xff\xfe a dog\n")  # invalid UTF-8
        f.write(("the big dog " * 40).encode() + b"\n")  # over the model's 64-position limit
    with open(corpus / "b.jsonl", "a") as f:
        f.write("{not json\n")
    out = tmp_path / "run"
    cfg = PipelineConfig(
        input=str(corpus), output=str(out), use_ray=False, shard_bytes=2048, step_scores=["probability", "entropy"]
    )
    manifest = run(cfg, progress=False)
    _, seqs, errs = check_complete(out, n + 4)
    assert sorted(errs["reason"]) == ["bad_json", "empty", "invalid_utf8", "too_long"]
    assert manifest["ok"] == n and manifest["errors"] == 4
    # generated vs forced targets, and object round trip
    assert seqs["generated"].sum() > 0 and (~seqs["generated"]).sum() > 0
    row = seqs.row(0, named=True)
    obj = inseq.FeatureAttributionOutput.load(row["object_uri"])
    assert obj.info["seq_id"] == row["seq_id"] and [t.token for t in obj[0].target] == row["target_tokens"]
    # the table's scores are the object's aggregated scores
    src = (
        read_table(out, "source_attributions").filter(pl.col("seq_id") == row["seq_id"]).sort("step", "attributed_pos")
    )
    agg = obj[0].aggregate(normalize=True)
    expected = agg.source_attributions.T.flatten()
    assert torch.allclose(torch.tensor(src["score"].to_list()), expected, atol=1e-6)
    # default aggregation: every step's source + target scores sum to 1
    tgt = read_table(out, "target_attributions")
    sums = (
        pl.concat([src.select("step", "score"), tgt.filter(pl.col("seq_id") == row["seq_id"]).select("step", "score")])
        .group_by("step")
        .agg(pl.col("score").sum())
    )
    assert sums["score"].to_list() == pytest.approx([1.0] * sums.height, abs=1e-5)
    # the documented ways to read the tables: polars with a recursive glob, pandas on the folder
    import pandas as pd

    assert pl.scan_parquet(f"{out}/tables/sequences/**/*.parquet").collect().height == seqs.height
    assert len(pd.read_parquet(out / "tables" / "step_scores")) == read_table(out, "step_scores").height
    # rerunning a complete run does nothing
    assert run(cfg, progress=False)["records"] == manifest["records"]


def test_non_finite_attributions_become_error_rows(tmp_path, s3):
    pairs = translation_corpus(6, seed=11)
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "w") as f:
        for s, t, _ in pairs:
            f.write(json.dumps({"source": s, "target": t}) + "\n")
        f.write(json.dumps({"source": "the cat sees the dog", "target": "lo gato vide lo kane"}) + "\n")
    am = inseq.load_model("toy:translator", device="cpu")
    poison = am.tokenizer.convert_tokens_to_ids("gato")

    def poisoned(args):  # probability, but inf (-> non-finite gradients) when the target is "gato"
        p = STEP_FUNCTIONS["probability"](args)
        scale = torch.where(args.target_ids == poison, float("inf"), 1.0)
        return p * scale

    inseq.register_step_function(poisoned, "poisoned_prob_test")
    try:
        expected_bad = sum("gato" in t.split() for _, t, _ in pairs) + 1
        cfg = PipelineConfig(
            input=str(corpus), output=str(tmp_path / "run"), use_ray=False, attributed_fn="poisoned_prob_test"
        )
        run(cfg, progress=False)
        _, seqs, errs = check_complete(tmp_path / "run", len(pairs) + 1)
        assert errs.height == expected_bad and set(errs["reason"]) == {"non_finite"}
        assert seqs.height == len(pairs) + 1 - expected_bad
    finally:
        STEP_FUNCTIONS.pop("poisoned_prob_test", None)


def test_resume_refuses_a_different_config(tmp_path):
    corpus = tmp_path / "c"
    make_corpus(corpus, n=12)
    cfg = PipelineConfig(input=str(corpus), output=str(tmp_path / "run"), use_ray=False)
    run(cfg, progress=False)
    Storage(str(tmp_path / "run")).fs.rm(str(tmp_path / "run" / "manifest.json"))
    cfg.method = "input_x_gradient"
    with pytest.raises(ValueError, match="another configuration .method: .saliency. there -> .input_x_gradient. here"):
        run(cfg, progress=False)


def test_keys_cannot_escape_the_prefix(tmp_path):
    for bad in ["..", "../x", "/abs", "a/b", "a\\b", "", ".hidden", "x" * 200, "a b"]:
        with pytest.raises(UnsafeKeyError):
            safe_part(bad)
    assert safe_part("00001-00002.parquet") == "00001-00002.parquet"
    with pytest.raises(ValueError, match="credentials"):
        Storage("s3://AKIAXXX:secretvalue@bucket/run")


@pytest.mark.ray
def test_ray_run_on_s3_read_back_with_polars(tmp_path, s3, ray_local):
    corpus = tmp_path / "corpus"
    n = make_corpus(corpus, n=30)
    import fsspec

    fs = fsspec.filesystem("s3")
    for p in corpus.iterdir():
        fs.put(str(p), f"{s3['bucket']}/corpus/{p.name}")
    prefix = f"s3://{s3['bucket']}/runs/r1"
    cfg = PipelineConfig(input=f"s3://{s3['bucket']}/corpus/", output=prefix, shard_bytes=1024, num_actors=2)
    manifest = run(cfg, progress=False)
    assert manifest["records"] == n and manifest["errors"] == 0
    seqs = pl.scan_parquet(f"{prefix}/tables/sequences/*.parquet").collect()
    assert seqs.height == n and seqs["seq_id"].n_unique() == n
    assert all(u.startswith(prefix + "/sequences/") for u in seqs["object_uri"])
    top = (
        pl.scan_parquet(f"{prefix}/tables/source_attributions/*.parquet")
        .group_by("seq_id", "step")
        .agg(pl.col("score").sum())
        .collect()
    )
    assert top["score"].max() <= 1.0 + 1e-5
    # no credential appears in the manifest or any table
    text = json.dumps(Storage(prefix).read_json("manifest.json"))
    for secret in (s3["env"]["AWS_SECRET_ACCESS_KEY"], s3["env"]["AWS_ACCESS_KEY_ID"]):
        assert secret not in text
        assert not any(secret in str(v) for v in seqs.row(0))


@pytest.mark.ray
def test_ray_actor_killed_mid_run(tmp_path, ray_local):
    from tests.faults import KillOnce

    corpus = tmp_path / "corpus"
    n = make_corpus(corpus, n=30)
    faults = tmp_path / "faults"
    faults.mkdir()
    blocks = (ReadShard, Attribute, WriteObjects, functools.partial(KillOnce, folder=str(faults)), CommitShard)
    cfg = PipelineConfig(input=str(corpus), output=str(tmp_path / "run"), shard_bytes=1024, num_actors=2)
    run(cfg, progress=False, blocks=blocks)
    assert (faults / "fired").exists()  # an actor really died after writing objects, before its commit
    _, seqs, errs = check_complete(tmp_path / "run", n)
    assert errs.height == 0 and seqs.height == n


@pytest.mark.ray
def test_resume_after_the_driver_is_killed(tmp_path, ray_local):
    corpus = tmp_path / "corpus"
    n = make_corpus(corpus, n=150)
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "inseq_ray.cli",
        "attribute-dataset",
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--shard-bytes",
        "1024",
        "--num-actors",
        "1",
        "--quiet",
        "--no-report",
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shards_dir = out / "_shards"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(shards_dir.glob("*.json"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in shards_dir.glob("*.json")}
    total = len(plan_shards(str(corpus), shard_bytes=1024))
    assert 2 <= len(done_before) < total and not (out / "manifest.json").exists()
    cfg = PipelineConfig(input=str(corpus), output=str(out), shard_bytes=1024, num_actors=2)
    manifest = run(cfg, progress=False)
    # every shard not committed before the kill is run now, except one a dying actor of the killed run may
    # still commit after the count above: a shard committed by then is not redone (shard claims check markers)
    assert total - len(done_before) - manifest["shards_run_this_time"] in (0, 1)
    for name, mtime in done_before.items():  # completed work was not redone
        assert (shards_dir / name).stat().st_mtime_ns == mtime
    check_complete(out, n)


def test_decoder_only_run_and_granular_objects(tmp_path):
    """A decoder-only model: prefix attributions land in target_attributions; granular objects keep hidden dims."""
    from inseq_ray.toy.tasks import copy_corpus

    data = copy_corpus(12, seed=4)
    corpus = tmp_path / "c.jsonl"
    with open(corpus, "w") as f:
        for i, (prompt, full, _) in enumerate(data):
            f.write(json.dumps({"source": prompt, "target": full} if i % 2 else {"source": prompt}) + "\n")
        f.write(json.dumps({"source": "copy: s1 s2 =", "target": "something else entirely"}) + "\n")
    out = tmp_path / "run"
    cfg = PipelineConfig(
        input=str(corpus),
        output=str(out),
        model="toy:copier",
        use_ray=False,
        save_granular=True,
        generation_args={"max_new_tokens": 8},
    )
    run(cfg, progress=False)
    _, seqs, errs = check_complete(out, len(data) + 1)
    assert errs["reason"].to_list() == ["target_mismatch"]
    assert read_table(out, "source_attributions").height == 0
    tgt = read_table(out, "target_attributions")
    assert (tgt["attributed_pos"] < tgt["target_pos"]).all()
    # the copier copies: each generated symbol's top-attributed prompt token is mostly the one it copies
    top = tgt.sort("score", descending=True).group_by("seq_id", "step").first()
    assert (top["attributed_token"] == top["target_token"]).mean() > 0.3
    obj = inseq.FeatureAttributionOutput.load(seqs["object_uri"][0])
    assert obj[0].attribution_dims == ("hidden",) and obj[0].target_attributions.shape[-1] == 64


def test_a_block_list_missing_a_step_fails_before_any_work(tmp_path):
    from inseq_ray.pipeline.runner import ShardWorker

    cfg = PipelineConfig(output=str(tmp_path / "run"), use_ray=False).to_dict()
    with pytest.raises(TypeError, match="WriteObjects needs attributed"):
        ShardWorker(cfg, blocks=(ReadShard, WriteObjects, CommitShard))
    with pytest.raises(TypeError, match="summary"):
        ShardWorker(cfg, blocks=(ReadShard,))


def test_no_fault_hook_is_left_in_production_code():
    import pathlib

    text = "".join(p.read_text() for p in pathlib.Path(inseq.__file__).parent.rglob("*.py"))
    assert "INSEQ_RAY_FAULT" not in text and "os._exit" not in text
