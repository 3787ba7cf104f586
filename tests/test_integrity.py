"""Never lose, duplicate or mix a record: hostile text, concurrent runs, changing input, odd globs and files."""

from __future__ import annotations

import errno
import gzip
import json
import os
import subprocess
import sys
import threading
import time

import polars as pl
import pytest

import inseq_ray as inseq
from inseq_ray.errors import Reason
from inseq_ray.pipeline.blocks import Attribute
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import RunConflictError, claim_run, run
from inseq_ray.pipeline.shards import plan_shards, read_shard
from inseq_ray.pipeline.storage import Storage, StorageError, redact_url
from inseq_ray.toy.tasks import translation_corpus
from tests.test_pipeline import check_complete, read_table

SENTENCES = [s for s, _, _ in translation_corpus(40, seed=11)]


def local(tmp_path, inp, **kw) -> PipelineConfig:
    return PipelineConfig(input=str(inp), output=str(tmp_path / "run"), use_ray=False, **kw)


def write_lines(path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


# 1. one unencodable record cannot stop a corpus
def test_a_lone_surrogate_record_becomes_one_escaped_error_row(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"source": s}) for s in SENTENCES[:6]]
    lines.insert(3, '{"source": "the cat \\ud800 sees a dog"}')
    write_lines(path, lines)
    manifest = run(local(tmp_path, path), progress=False)
    _, seqs, errs = check_complete(tmp_path / "run", 7)
    assert seqs.height == 6 and errs["reason"].to_list() == [Reason.INVALID_UTF8]
    assert "\\ud800" in errs["input"][0] and "lone surrogate" in errs["message"][0]
    assert run(local(tmp_path, path), progress=False)["already_complete"] and manifest["complete"]


# 2. two runs on one prefix: one owns it, the other is refused
def test_two_runs_started_at_once_on_one_prefix_do_not_mix(tmp_path):
    path = tmp_path / "c.txt"
    write_lines(path, SENTENCES[:12])
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "inseq_ray.cli", "attribute-dataset", "--local", "--quiet", "--no-report",
             "--input", str(path), "--output", str(out), "--method", method, "--shard-bytes", "1024"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for method in ("saliency", "input_x_gradient")
    ]  # fmt: skip
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "another configuration" in refused and "Traceback" not in refused
    seqs = read_table(out, "sequences")
    assert seqs["method"].n_unique() == 1 and seqs.height == 12 and seqs["seq_id"].n_unique() == 12


def test_concurrent_claims_on_s3_one_wins(s3):
    storage = Storage(f"s3://{s3['bucket']}/claims/r1")
    outcomes: list = []

    def claim(method: str) -> None:
        cfg = PipelineConfig(method=method)
        record = {"fingerprint": cfg.fingerprint(), "config": cfg.to_dict(), "inputs": {}, "shards": []}
        try:
            outcomes.append(claim_run(storage, record))
        except RunConflictError as e:
            outcomes.append(str(e))

    threads = [threading.Thread(target=claim, args=(m,)) for m in ("saliency", "input_x_gradient")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 1 and sum("another configuration" in str(o) for o in outcomes) == 1


# 3. input that changes is noticed
def test_a_new_file_in_an_input_folder_is_refused_on_resume(tmp_path):
    folder = tmp_path / "corpus"
    for i in range(3):
        write_lines(folder / f"b{i}.txt", SENTENCES[i * 5 : i * 5 + 5])
    cfg = local(tmp_path, folder)
    run(cfg, progress=False)
    storage = Storage(cfg.output)
    storage.delete("manifest.json")  # as if the run had been killed after its shards
    storage.delete("_shards", "00002-00000.json")
    write_lines(folder / "a0.txt", SENTENCES[20:25])  # sorts first: every shard id would move
    with pytest.raises(RunConflictError, match="unfinished run whose input changed.*added: a0.txt"):
        run(cfg, progress=False)


def test_lines_appended_after_a_complete_run_are_reported(tmp_path):
    path = tmp_path / "c.txt"
    write_lines(path, SENTENCES[:5])
    cfg = local(tmp_path, path)
    run(cfg, progress=False)
    with open(path, "a") as f:
        f.write("the old farmer reads a book\n")
    with pytest.raises(RunConflictError, match="complete run, but its input changed.*changed: c.txt.*new --output"):
        run(cfg, progress=False)


# 4. globs of any syntax give unique, stable ids
def test_globs_with_brackets_question_marks_spaces_and_unicode(tmp_path):
    root = tmp_path / "d"
    for sub in ("a", "b", "sp ace", "ü"):
        write_lines(root / sub / "x1.txt", [f"{sub} one", f"{sub} two"])
    for pattern, n_files in ((f"{root}/[ab]/x*.txt", 2), (f"{root}/?/x?.txt", 3), (f"{root}/*/x1.txt", 4)):
        shards = plan_shards(pattern)
        rels = [s.rel for s in shards]
        assert len(set(rels)) == len(rels) == n_files, rels
        ids = [r.seq_id for s in shards for r in read_shard(s)]
        assert len(set(ids)) == 2 * n_files
        assert ids == [r.seq_id for s in plan_shards(pattern) for r in read_shard(s)]
    assert {s.rel for s in plan_shards(f"{root}/*/x1.txt")} == {"a/x1.txt", "b/x1.txt", "sp ace/x1.txt", "ü/x1.txt"}


# 5. compressed and table inputs
def test_compressed_inputs_given_directly_by_glob_or_in_a_folder(tmp_path):
    import zstandard

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt.gz").write_bytes(gzip.compress("\n".join(SENTENCES[:4]).encode() + b"\n"))
    jsonl = "".join(json.dumps({"source": s}) + "\n" for s in SENTENCES[4:7]).encode()
    (folder / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    (folder / "c.csv.gz").write_bytes(gzip.compress(("source\n" + "\n".join(SENTENCES[7:9]) + "\n").encode()))
    for given in (folder, f"{folder}/*", folder / "c.csv.gz"):
        records = [r for s in plan_shards(str(given)) for r in read_shard(s)]
        assert all(not r.error_reason for r in records)
        assert {r.source for r in records} <= set(SENTENCES[:9]) and len(records) == (2 if "csv" in str(given) else 9)


def test_csv_schema_problems_become_error_rows_not_a_dead_run(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "ok.csv").write_text(
        "source,note\n" + f"{SENTENCES[0]},x\n" + "too,many,fields\n" + f"{SENTENCES[1]},y\n"
    )
    (folder / "wrong.csv").write_text("text\nthe cat\n")
    run(local(tmp_path, folder), progress=False)
    _, seqs, errs = check_complete(tmp_path / "run", 4)
    assert seqs.height == 2
    assert sorted(errs["reason"].to_list()) == [Reason.BAD_INPUT, Reason.MISSING_COLUMN]
    assert "--source-column" in errs.filter(pl.col("reason") == Reason.MISSING_COLUMN)["message"][0]


def test_a_byte_order_mark_is_stripped(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbf" + SENTENCES[0].encode() + b"\n")
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"source": SENTENCES[1]}).encode() + b"\n")
    for name, want in (("a.txt", SENTENCES[0]), ("b.jsonl", SENTENCES[1])):
        (rec,) = [r for s in plan_shards(str(tmp_path / name)) for r in read_shard(s)]
        assert rec.source == want and not rec.error_reason


# 6. a failing batch bisects
class CountingAttribute(Attribute):
    """The real block, counting calls and failing any batch that holds the marked record."""

    calls = 0

    def _attribute(self, records):
        type(self).calls += 1
        if any("POISON" in r.source for r in records):
            raise ValueError("poisoned record")
        return super()._attribute(records)


def test_one_bad_record_costs_log_retries_not_a_batch_of_singles(tmp_path):
    from inseq_ray.pipeline.data import ShardBatch
    from inseq_ray.pipeline.shards import Shard

    path = tmp_path / "c.txt"
    write_lines(path, [*SENTENCES[:31], "POISON the cat sees"])
    from inseq_ray.pipeline.blocks import WriteObjects

    cfg = local(tmp_path, path, batch_size=64)
    block = CountingAttribute(cfg)
    (shard,) = plan_shards(str(path))
    batch = WriteObjects(cfg)(block(ShardBatch(shard, records=list(read_shard(shard)))))  # pulls the stream
    assert isinstance(shard, Shard) and len(batch.results) == 31 and len(batch.errors) == 1
    assert CountingAttribute.calls <= 2 * 5 + 1  # log2(32) = 5 levels, two halves each, plus the first try


# 7. hostile files and secrets
def test_load_refuses_a_gzip_bomb_and_broken_files_with_one_error_type(tmp_path):
    bomb = tmp_path / "bomb.json.gz"
    bomb.write_bytes(gzip.compress(b"[" * 0 + b" " * (64 << 20)))  # 64 MB of spaces, ~64 KB on disk
    with pytest.raises(inseq.AttributionFileError, match="bomb.json.gz.*limit"):
        inseq.FeatureAttributionOutput.load(str(bomb), max_bytes=8 << 20)
    crafted = {
        "deep.json": b"[" * 100_000 + b"]" * 100_000,
        "list.json": b"[1, 2]",
        "badtensor.json": json.dumps(
            {"format": "inseq_ray.feature_attribution", "version": 1, "info": {},
             "sequence_attributions": [{"source": [], "target": [], "source_attributions":
             {"dtype": "float32", "shape": [3, 3], "data": "AAAA"}, "target_attributions": None,
             "step_scores": {}, "attr_pos_start": 0, "attr_pos_end": 1}]}
        ).encode(),
        "nobase64.json": b'{"format": "inseq_ray.feature_attribution", "sequence_attributions": [{"source": 5}]}',
        "truncated.json.gz": gzip.compress(b'{"format": 1}')[:-6],
        "binary.json": os.urandom(256),
        "empty.json": b"",
    }  # fmt: skip
    for name, data in crafted.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(inseq.AttributionFileError, match=name.replace(".", r"\.")):
            inseq.FeatureAttributionOutput.load(str(tmp_path / name))
    with pytest.raises(inseq.AttributionFileError, match="no such file"):
        inseq.FeatureAttributionOutput.load(str(tmp_path / "missing.json"))


def test_credentials_and_signatures_never_reach_logs_or_files(tmp_path):
    with pytest.raises(ValueError, match="carries credentials") as e:
        plan_shards("s3://USER:PASS@bucket/corpus.jsonl")
    assert "PASS" not in str(e.value)
    presigned = "https://h.example/c.jsonl?X-Amz-Credential=AKIDX&X-Amz-Signature=abc123&X-Amz-Expires=60"
    assert "abc123" not in redact_url(presigned) and "AKIDX" not in redact_url(presigned)
    assert redact_url(presigned) == "https://h.example/c.jsonl"  # the whole signing scheme goes (stable key)
    path = tmp_path / "c.txt"
    write_lines(path, SENTENCES[:2])
    cfg = local(tmp_path, f"{path}?X-Amz-Signature=abc123")
    from inseq_ray.pipeline.runner import safe_config

    assert "abc123" not in json.dumps(safe_config(cfg))


# 8. temp files and storage errors
def test_temp_files_live_under_tmp_and_stale_ones_are_cleaned(tmp_path):
    path = tmp_path / "c.txt"
    write_lines(path, SENTENCES[:3])
    cfg = local(tmp_path, path)
    storage = Storage(cfg.output)
    stale = os.path.join(storage.path("_tmp"), "dead.tmp")
    os.makedirs(os.path.dirname(stale))
    open(stale, "w").close()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    run(cfg, progress=False)
    assert not os.path.exists(stale)
    leftovers = [p for p in (tmp_path / "run").rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    import pandas

    assert len(pandas.read_parquet(tmp_path / "run" / "tables" / "sequences")) == 3


def test_a_full_disk_is_one_line_with_the_path_and_the_fix(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path / "run"))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageError, match=r"cannot write .*run/x\.json: No space left on device \(the disk is full"):
        storage.write_json({}, "x.json")
    assert not list((tmp_path / "run").rglob("*.tmp"))  # the temp file is removed too


# 9. http(s) inputs
def test_http_inputs_are_read(tmp_path):
    import functools
    import http.server

    path = tmp_path / "web" / "c.jsonl"
    write_lines(path, [json.dumps({"source": s}) for s in SENTENCES[:5]])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/c.jsonl"
        run(local(tmp_path, url), progress=False)
    finally:
        server.shutdown()
    _, seqs, _ = check_complete(tmp_path / "run", 5)
    assert seqs["source_file"].unique().to_list() == ["c.jsonl"]


def test_a_large_csv_shards_at_record_boundaries_even_with_quoted_newlines(tmp_path):
    import csv

    rows = [(f'{s}, "quoted"\nsecond line' if i % 7 == 0 else s, f"t{i}") for i, s in enumerate(SENTENCES * 3)]
    path = tmp_path / "big.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "target"])
        w.writerows(rows)
    shards = plan_shards(str(path), shard_bytes=300)
    assert len(shards) > 5  # one big CSV spreads over shards (and resumes part-way)
    records = [r for s in shards for r in read_shard(s)]
    assert [(r.source, r.target) for r in records] == rows and not any(r.error_reason for r in records)
    assert [r.position for r in records] == list(range(len(rows)))
    whole = [r.seq_id for r in read_shard(plan_shards(str(path), shard_bytes=1 << 30)[0])]
    assert [r.seq_id for r in records] == whole  # same ids however the file is cut
