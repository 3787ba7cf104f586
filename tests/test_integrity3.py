"""Integrity, round 3: one bad record or file is one error row; a prefix is never shared by two configurations;
input that changes under a run is refused; the report trusts nothing in a run's tables; crafted files."""

from __future__ import annotations

import json
import os
import time

import polars as pl
import pytest

from inseq_ray.errors import Reason
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from inseq_ray.pipeline.shards import plan_shards, read_shard
from inseq_ray.toy.tasks import translation_corpus
from tests.test_pipeline import check_complete

SENTENCES = [s for s, _, _ in translation_corpus(40, seed=13)]


def local(tmp_path, inp, out="run", **kw) -> PipelineConfig:
    return PipelineConfig(input=str(inp), output=str(tmp_path / out), use_ray=False, **kw)


def records_of(path) -> list:
    return [r for s in plan_shards(str(path), shard_bytes=1024) for r in read_shard(s)]


# 4. a pathological record or an unreadable file is one error row, never an abort
def test_pathological_json_lines_are_one_bad_json_row_each(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"source": s}) for s in SENTENCES[:4]]
    lines.insert(1, '{"source": ' + "[" * 100_000 + "]" * 100_000 + "}")  # RecursionError in json
    lines.insert(3, '{"source": 1' + "0" * 5000 + "}")  # int digits limit: ValueError in json
    path.write_text("\n".join(lines) + "\n")
    recs = records_of(path)
    assert [r.error_reason for r in recs] == ["", Reason.BAD_JSON, "", Reason.BAD_JSON, "", ""]
    assert "recursion" in recs[1].error_message and "digits" in recs[3].error_message
    run(local(tmp_path, path), progress=False)
    _, seqs, errs = check_complete(tmp_path / "run", 6)
    assert seqs.height == 4 and errs["reason"].to_list() == [Reason.BAD_JSON] * 2


def test_unreadable_and_zero_byte_files_are_one_row_each_naming_them(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("".join(s + "\n" for s in SENTENCES[:3]))
    for name in ("empty.csv", "empty.txt", "empty.jsonl", "empty.parquet"):
        (folder / name).write_bytes(b"")
    (folder / "junk.parquet").write_bytes(b"this is not parquet at all")
    run(local(tmp_path, folder), progress=False)
    _, seqs, errs = check_complete(tmp_path / "run", 3 + 5)
    assert seqs.height == 3
    by_file = dict(zip(errs["source_file"], errs["reason"], strict=True))
    assert by_file == {
        "empty.csv": Reason.EMPTY,
        "empty.txt": Reason.EMPTY,
        "empty.jsonl": Reason.EMPTY,
        "empty.parquet": Reason.EMPTY,
        "junk.parquet": Reason.BAD_INPUT,
    }
    assert all(f in m for f, m in zip(errs["source_file"], errs["message"], strict=True))


def test_a_csv_row_with_invalid_utf8_is_that_rows_error_and_positions_are_row_indices(tmp_path):
    path = tmp_path / "c.csv"
    rows = [f"{i},{s}" for i, s in enumerate(SENTENCES[:6])]
    data = ("id,text\n" + "\n".join(rows[:2]) + "\n").encode()
    data += b"2,the cat \xff\xfe sees\n"  # row 2: not UTF-8
    data += b"3,too,many,fields\n"  # row 3: malformed
    data += ("\n".join(rows[4:]) + "\n").encode()  # rows 4, 5
    path.write_bytes(data)
    for shard_bytes in (1 << 20, 1024):  # one whole-file shard, or byte ranges
        recs = [r for s in plan_shards(str(path), shard_bytes=shard_bytes) for r in read_shard(s, "text")]
        by_pos = {r.position: r for r in recs}
        assert sorted(by_pos) == [0, 1, 2, 3, 4, 5]
        assert by_pos[2].error_reason == Reason.INVALID_UTF8 and "'text'" in by_pos[2].error_message
        assert by_pos[3].error_reason == Reason.BAD_INPUT
        for i in (0, 1, 4, 5):  # a row's position is its index among the file's data rows
            assert by_pos[i].source == SENTENCES[i] and not by_pos[i].error_reason


# 7. crafted safetensors blobs inside Inseq-format files: one AttributionFileError naming the file
def _with_blob(doc, edit):
    """``doc`` (an Inseq-format file's JSON) with its first base64 safetensors blob passed through ``edit``."""
    import base64

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if isinstance(v, str) and len(v) > 40 and k in ("source_attributions", "target_attributions"):
                    x[k] = base64.b64encode(edit(base64.b64decode(v))).decode()
                    return True
                if walk(v):
                    return True
        if isinstance(x, list):
            return any(walk(v) for v in x)
        return False

    assert walk(doc)
    return doc


def test_crafted_safetensors_headers_are_refused_naming_the_file(gpt2, tmp_path):
    import struct

    import inseq_ray as inseq

    out = gpt2.attribute("the cat sat", "the cat sat on the mat")
    (path,) = out.save(str(tmp_path / "good.json"), format="inseq")
    doc = json.loads(open(path).read())

    def header(blob):
        n = struct.unpack("<Q", blob[:8])[0]
        return json.loads(blob[8 : 8 + n]), blob[8 + n :]

    def rebuild(h, data):
        raw = json.dumps(h).encode()
        return struct.pack("<Q", len(raw)) + raw + data

    def huge_shape(blob):
        h, data = header(blob)
        h["attribution"]["shape"] = [100_000, 100_000, 10]  # 100 GB of float32 claimed
        return rebuild(h, data)

    def past_end(blob):
        h, data = header(blob)
        h["attribution"]["data_offsets"] = [0, len(data) + 4096]
        return rebuild(h, data)

    def wrong_dtype(blob):
        h, data = header(blob)
        h["attribution"]["dtype"] = "F64"  # twice the bytes the offsets hold
        return rebuild(h, data)

    def header_length(blob):
        return struct.pack("<Q", 10**11) + blob[8:]

    for edit in (huge_shape, past_end, wrong_dtype, header_length):
        bad = tmp_path / f"{edit.__name__}.json"
        bad.write_text(json.dumps(_with_blob(json.loads(json.dumps(doc)), edit)))
        with pytest.raises(inseq.AttributionFileError, match=f"{edit.__name__}.json") as e:
            inseq.FeatureAttributionOutput.load(str(bad))
        assert "\n" not in str(e.value)
    assert inseq.FeatureAttributionOutput.load(path).sequence_attributions[0].target  # the untouched file loads


# 6. an outage that outlasts the run's own failure: one line, the run's error
def test_an_outage_during_cleanup_keeps_the_one_line_of_the_runs_error(tmp_path, monkeypatch):
    from inseq_ray.pipeline.blocks import BLOCKS
    from inseq_ray.pipeline.storage import Storage, StorageError

    class StoreDown:
        needs, provides = ("records",), ("records",)

        def __init__(self, cfg):
            pass

        def __call__(self, batch):
            def down(self, *parts):  # from now on every read of the store fails too
                raise StorageError("cannot read s3://b/run/_shards: Service Unavailable (check that --output ...)")

            monkeypatch.setattr(Storage, "list_names", down)
            monkeypatch.setattr(Storage, "delete", down)
            raise StorageError("cannot write s3://b/run/tables/x: Service Unavailable (check that --output ...)")

    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES[:3]))
    with pytest.raises(StorageError, match="cannot write") as e:
        run(local(tmp_path, path), progress=False, blocks=(BLOCKS[0], StoreDown, *BLOCKS[1:]))
    assert e.value.__context__ is None or "cannot read" not in str(e.value)  # the run's own error, alone
    assert len(str(e.value).splitlines()) == 1


# 8. a path that exists as given is read as given, glob characters and all
def test_a_literal_file_name_with_glob_characters_is_read_as_given(tmp_path):
    (tmp_path / "[1].txt").write_text(SENTENCES[0] + "\n")
    (tmp_path / "1.txt").write_text(SENTENCES[1] + "\n")
    (tmp_path / "d[x]").mkdir()
    (tmp_path / "d[x]" / "a.txt").write_text(SENTENCES[2] + "\n")
    assert [r.source for r in records_of(tmp_path / "[1].txt")] == [SENTENCES[0]]
    assert [r.source for r in records_of(tmp_path / "d[x]")] == [SENTENCES[2]]
    assert sorted(r.source for r in records_of(tmp_path / "[1]*.txt")) == [SENTENCES[1]]  # a real glob still globs


# 2. input that changes during a run, or between runs whatever its mtime says, is refused naming the file
class _InsertLineAfterFirstCommit:
    """A last block: after the first shard commits, a line is inserted at the top of the input file."""

    needs, provides = ("summary",), ()

    def __init__(self, cfg):
        self.path, self.done = cfg.input, False

    def __call__(self, batch):
        if not self.done:
            self.done = True
            with open(self.path, "r+") as f:
                rest = f.read()
                f.seek(0)
                f.write("an inserted line\n" + rest)
        return batch


class _FailSecondShard:
    needs, provides = ("records",), ("records",)

    def __init__(self, cfg):
        self.seen = 0

    def __call__(self, batch):
        self.seen += 1
        if self.seen == 2:
            raise RuntimeError("stop after one shard")
        return batch


def test_a_file_changed_during_a_run_is_refused_naming_it(tmp_path):
    from inseq_ray.errors import InputChangedError
    from inseq_ray.pipeline.blocks import BLOCKS
    from inseq_ray.pipeline.runner import RunConflictError

    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES[:30]))
    cfg = local(tmp_path, path, shard_bytes=1024)
    with pytest.raises(InputChangedError, match="c.txt changed while the run was using it"):
        run(cfg, progress=False, blocks=(*BLOCKS, _InsertLineAfterFirstCommit))
    assert len(list((tmp_path / "run" / "_shards").glob("*.json"))) == 1  # the first shard only: nothing mixed
    with pytest.raises(RunConflictError, match="changed: c.txt"):
        run(cfg, progress=False)


def test_an_edit_of_the_same_size_with_its_mtime_restored_is_refused_on_resume(tmp_path):
    from inseq_ray.pipeline.blocks import BLOCKS
    from inseq_ray.pipeline.runner import RunConflictError

    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES[:30]))
    cfg = local(tmp_path, path, shard_bytes=1024)
    with pytest.raises(RuntimeError, match="stop after one shard"):
        run(cfg, progress=False, blocks=(BLOCKS[0], _FailSecondShard, *BLOCKS[1:]))
    before = os.stat(path)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"the", b"THE", 1))  # same size, other content
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_mtime_ns == before.st_mtime_ns
    with pytest.raises(RunConflictError, match="changed: c.txt"):
        run(cfg, progress=False)


# 1. a prefix claim cannot be stolen from a live run, and a manifest is never written over mixed markers
class _Gate:
    """A block that signals ``started`` on its first shard, waits for ``go``, then raises ``then`` (if any)."""

    def __init__(self, started, go, then=None):
        self.started, self.go, self.then = started, go, then

    def __call__(self, cfg):
        gate = self

        class Gate:
            needs, provides = ("records",), ("records",)

            def __init__(self, cfg):
                pass

            def __call__(self, batch):
                gate.started.set()
                assert gate.go.wait(300), "the test never opened the gate"
                if gate.then is not None:
                    raise gate.then
                return batch

        return Gate(cfg)


def test_a_failed_start_does_not_free_a_prefix_another_driver_has_joined(tmp_path):
    import threading

    from inseq_ray.pipeline.blocks import BLOCKS
    from inseq_ray.pipeline.runner import RunConflictError

    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES[:12]))
    a_started, a_go, b_started, b_go = (threading.Event() for _ in range(4))
    outcome: dict = {}

    def drive(name, gate):
        try:
            outcome[name] = run(local(tmp_path, path), progress=False, blocks=(BLOCKS[0], gate, *BLOCKS[1:]))
        except BaseException as e:  # A's Ctrl-C arrives here as RunInterrupted
            outcome[name] = e

    a = threading.Thread(target=drive, args=("A", _Gate(a_started, a_go, KeyboardInterrupt())))
    b = threading.Thread(target=drive, args=("B", _Gate(b_started, b_go)))
    a.start()
    assert a_started.wait(300)  # A created _run.json and is attributing its first shard
    b.start()
    drivers = tmp_path / "run" / "_drivers"
    while len(list(drivers.glob("*.json"))) < 2:  # B joined with the same configuration (its lease is there)
        assert b.is_alive(), outcome
        time.sleep(0.05)
    a_go.set()  # Ctrl-C in A before anything committed (B waits for A's claimed shard meanwhile)
    a.join()
    assert type(outcome["A"]).__name__ == "RunInterrupted"
    assert (tmp_path / "run" / "_run.json").exists()  # B still works: the claim stays
    with pytest.raises(RunConflictError, match="another configuration"):
        run(local(tmp_path, path, method="attention"), progress=False)  # C cannot take the prefix
    b_go.set()
    b.join()  # A's claim was released: B takes the shard over and finishes the run
    assert b_started.is_set() and outcome["B"]["complete"] and outcome["B"]["ok"] == 12
    markers = [json.loads(p.read_text()) for p in (tmp_path / "run" / "_shards").glob("*.json")]
    assert {m["fingerprint"] for m in markers} == {local(tmp_path, path).fingerprint()}
    assert run(local(tmp_path, path), progress=False)["already_complete"]
    with pytest.raises(RunConflictError, match="another configuration"):
        run(local(tmp_path, path, method="attention"), progress=False)
    assert list((tmp_path / "run" / "_drivers").glob("*.json")) == []  # every lease released


def test_a_lone_failed_start_frees_the_prefix_and_a_live_foreign_lease_blocks_a_fresh_claim(tmp_path):
    from inseq_ray.pipeline.lease import DriverLease
    from inseq_ray.pipeline.runner import RunConflictError
    from inseq_ray.pipeline.storage import Storage

    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES[:4]))
    with pytest.raises(RuntimeError, match="stop"):
        run(local(tmp_path, path, shard_bytes=1024), progress=False, blocks=(_Boom,))
    assert not (tmp_path / "run" / "_run.json").exists()  # alone and nothing committed: reusable
    with DriverLease(Storage(str(tmp_path / "run")), "another-fingerprint") as other:  # a live driver...
        other.mark_claimed()  # ...that holds a run of another configuration there
        with pytest.raises(RunConflictError, match="being written by another run"):
            run(local(tmp_path, path), progress=False)
    assert not (tmp_path / "run" / "_run.json").exists()
    with DriverLease(Storage(str(tmp_path / "other")), "another-fingerprint"):  # registered, its claim not yet made:
        assert (
            run(PipelineConfig(input=str(path), output=str(tmp_path / "other"), use_ray=False), progress=False)["ok"]
            == 4
        )  # a driver that is only starting does not block the one that claims first (it will be refused)
    assert run(local(tmp_path, path), progress=False)["ok"] == 4  # its lease gone: the prefix is free


class _Boom:
    needs, provides = ("shard",), ("summary",)

    def __init__(self, cfg):
        pass

    def __call__(self, batch):
        raise RuntimeError("stop")


def test_no_manifest_over_markers_of_another_configuration(tmp_path):
    from inseq_ray.pipeline.runner import RunConflictError

    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES[:30]))
    cfg = local(tmp_path, path, shard_bytes=1024)
    run(cfg, progress=False)
    (tmp_path / "run" / "manifest.json").unlink()
    marker = sorted((tmp_path / "run" / "_shards").glob("*.json"))[0]
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "fingerprint": "0123456789abcdef"}))
    with pytest.raises(RunConflictError, match="another configuration"):
        run(cfg, progress=False)
    assert not (tmp_path / "run" / "manifest.json").exists()


# 3. the report trusts nothing in a run's tables
def test_the_report_builds_paths_from_valid_ids_only_and_survives_a_missing_object(tmp_path):
    from inseq_ray.report import build_report

    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES[:6]))
    run(local(tmp_path, path), progress=False)
    (table,) = (tmp_path / "run" / "tables" / "sequences").glob("*.parquet")
    seqs = pl.read_parquet(table).sort("seq_id")
    ids = seqs["seq_id"].to_list()
    evil = seqs.with_columns(
        seq_id=pl.Series([ids[0], "../../pwned", *ids[2:]]),
        object_uri=pl.Series(["http://127.0.0.1:9/elsewhere.json.gz", *seqs["object_uri"].to_list()[1:]]),
    )
    evil.write_parquet(table)
    missing = ids[2]
    (tmp_path / "run" / "sequences" / missing[:2] / f"{missing}.json.gz").unlink()
    out = tmp_path / "rep" / "inner"
    index = build_report(str(tmp_path / "run"), out, sample=10)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.html"))
    assert all(p.startswith("rep/inner/") for p in written), written
    pages = {p.name for p in (out / "seq").glob("*.html")}
    assert pages == {f"{i}.html" for i in ids if i != ids[1]}  # the bad id skipped, the missing one a placeholder
    assert "could not be read" in (out / "seq" / f"{missing}.html").read_text()
    assert "Step scores" in (out / "seq" / f"{ids[0]}.html").read_text()  # read from the run's own key, not the URI
    html = index.read_text()
    assert "rows skipped (seq_id not of this run&#x27;s form): 1" in html and "objects missing or unreadable: 1" in html


# issue 23, red team: a failed start leaves nothing a rerun trips on; an output inside its input is refused
def test_a_broken_claim_with_nothing_committed_does_not_poison_the_prefix(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES[:3]))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "_run.json").write_bytes(b"")  # what a full disk left behind before writes were whole
    assert run(local(tmp_path, path), progress=False)["ok"] == 3


def test_a_claim_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import errno

    from inseq_ray.pipeline.storage import Storage, StorageError

    storage = Storage(str(tmp_path / "run"))
    real_open = open

    def full_disk(path, mode="r", *a, **k):
        if str(path).endswith(".tmp") and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(StorageError, match="disk is full"):
        storage.create_exclusive(b'{"a": 1}', "_run.json")
    monkeypatch.undo()
    assert not (tmp_path / "run" / "_run.json").exists()
    assert storage.create_exclusive(b'{"a": 1}', "_run.json") and not storage.create_exclusive(b"{}", "_run.json")


def test_an_output_inside_its_input_folder_is_refused_before_anything_starts(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text(SENTENCES[0] + "\n")
    for inp, out in ((folder, folder / "run"), (folder, folder), (f"{folder}/*.txt", folder / "out")):
        cfg = PipelineConfig(input=str(inp), output=str(out), use_ray=False)
        with pytest.raises(ValueError, match="is inside the input"):
            run(cfg, progress=False)
    assert not (folder / "run").exists() and not (folder / "out").exists()
    single = PipelineConfig(input=str(folder / "a.txt"), output=str(folder / "run"), use_ray=False)
    assert run(single, progress=False)["ok"] == 1  # one named file: its folder may hold the output


# issue 23, red team: drivers of one configuration on one prefix split the shards instead of repeating them
def test_concurrent_drivers_of_one_configuration_split_the_shards(tmp_path):
    import threading

    from inseq_ray.pipeline.blocks import BLOCKS

    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s, _, _ in translation_corpus(120, seed=14)))
    done: dict[str, list[str]] = {"A": [], "B": []}
    a_working, b_working = threading.Event(), threading.Event()

    def counting(name):
        class Count:
            needs, provides = ("records",), ("records",)

            def __init__(self, cfg):
                pass

            def __call__(self, batch):
                if name == "B":
                    b_working.set()
                else:
                    a_working.set()
                    if len(done["A"]) == 1:  # A's second shard waits until B works too: the runs overlap
                        assert b_working.wait(300)
                done[name].append(batch.shard.shard_id)
                return batch

        return Count

    cfg = local(tmp_path, path, shard_bytes=1024)
    outcome = {}

    def drive(name):
        outcome[name] = run(cfg, progress=False, blocks=(BLOCKS[0], counting(name), *BLOCKS[1:]))

    threads = [threading.Thread(target=drive, args=(n,)) for n in ("A", "B")]
    threads[0].start()
    assert a_working.wait(300)  # B starts once A has loaded its model (two loads at once in one process race)
    threads[1].start()
    for t in threads:
        t.join()
    planned = json.loads((tmp_path / "run" / "_run.json").read_text())["shards"]
    assert len(planned) >= 4 and done["A"] and done["B"]  # both worked
    assert sorted(done["A"] + done["B"]) == sorted(planned)  # each shard attributed once, by one of them
    assert outcome["A"]["records"] == outcome["B"]["records"] == 120
    _, seqs, _ = check_complete(tmp_path / "run", 120)
    assert seqs.height == 120 and list((tmp_path / "run" / "_claims").glob("*.json")) == []


# issue 23, red team: files whose JSON would amplify in memory are refused before they are parsed
def test_amplifying_json_is_refused_before_parsing_and_real_files_load(gpt2, tmp_path, monkeypatch):
    import inseq_ray as inseq
    from inseq_ray import serialization

    limit = 1 << 20
    dicts = tmp_path / "dicts.json"
    dicts.write_bytes(b'{"format": "inseq_ray", "version": 1, "info": {"x": [' + b"{}," * 300_000 + b"{}]}}")
    numbers = tmp_path / "numbers.json"  # a json_tricks array of a million one-digit numbers
    numbers.write_bytes(b'{"__ndarray__": [' + b"0," * 500_000 + b'0], "dtype": "uint8", "shape": [1]}')
    parsed, real_loads = [], json.loads
    monkeypatch.setattr(serialization.json, "loads", lambda raw: parsed.append(1) or real_loads(raw))
    for path in (dicts, numbers):
        with pytest.raises(inseq.AttributionFileError, match=f"{path.name}: its JSON structure"):
            inseq.FeatureAttributionOutput.load(str(path), max_bytes=limit)
    assert parsed == []  # refused on the counts alone: nothing was parsed
    out = gpt2.attribute(["the cat sat", "a dog"], ["the cat sat on the mat", "a dog runs"], show_progress=False)
    for fmt in ("inseq_ray", "inseq"):
        (path,) = out.save(str(tmp_path / f"real-{fmt}.json"), format=fmt)
        assert len(inseq.FeatureAttributionOutput.load(path, max_bytes=limit).sequence_attributions) == 2
