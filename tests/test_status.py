"""``inseq-ray status``: a run on S3 (moto) watched while it runs, after a shard failed, and once complete."""

from __future__ import annotations

import json
import threading
import time

import pytest

from inseq_ray.pipeline.blocks import BLOCKS
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from inseq_ray.pipeline.status import read_status, render, summarize
from inseq_ray.pipeline.storage import Storage
from inseq_ray.toy.tasks import translation_corpus


class _Script:
    """A block: shards pass while ``hold`` is clear; after ``fail_after`` shards, the next one raises."""

    def __init__(self, hold: threading.Event, release: threading.Event, fail_after: int | None = None) -> None:
        self.hold, self.release, self.fail_after, self.seen = hold, release, fail_after, 0

    def __call__(self, cfg):
        script = self

        class Script:
            needs, provides = ("records",), ("records",)

            def __init__(self, cfg):
                pass

            def __call__(self, batch):
                script.seen += 1
                if script.seen > 2:  # two shards commit, then the run waits for the test
                    script.hold.set()
                    assert script.release.wait(300)
                if script.fail_after is not None and script.seen > script.fail_after:
                    raise RuntimeError("injected failure in shard " + batch.shard.shard_id)
                return batch

        return Script(cfg)


def _wait_for_markers(storage: Storage, n: int, deadline_s: float = 300) -> None:
    end = time.monotonic() + deadline_s
    while len(storage.list_names("_shards")) < n:
        assert time.monotonic() < end, "shards were not committed"
        time.sleep(0.05)


def test_status_of_a_run_in_progress_failed_and_complete_on_s3(tmp_path, s3, capsys):
    from inseq_ray.cli import main

    path = tmp_path / "c.txt"
    lines = [s for s, _, _ in translation_corpus(150, seed=51)]
    path.write_text("".join(s + "\n" for s in lines[:149]) + "\n")  # one empty line: an error row by reason
    out = f"s3://{s3['bucket']}/status/run"
    cfg = PipelineConfig(input=str(path), output=out, use_ray=False, shard_bytes=1024)
    hold, release = threading.Event(), threading.Event()
    script = _Script(hold, release, fail_after=3)
    outcome: dict = {}

    def drive():
        try:
            outcome["manifest"] = run(cfg, progress=False, blocks=(BLOCKS[0], script, *BLOCKS[1:]))
        except Exception as e:
            outcome["error"] = e

    thread = threading.Thread(target=drive)
    thread.start()
    assert hold.wait(300)
    _wait_for_markers(Storage(out), 2)
    status = read_status(out)  # while it runs
    assert status["state"] == "running" and status["shards"]["committed"] == 2
    assert status["shards"]["planned"] > 3 and len(status["drivers_alive"]) == 1
    assert status["records_per_s"] > 0 and status["eta"] is not None and status["failed_shards"] == []
    assert status["records"]["total"] == status["records"]["ok"] + status["records"]["errors"] > 0
    assert "running" in render(status) and "eta:" in render(status)
    release.set()
    thread.join()
    assert "injected failure" in str(outcome["error"])
    status = read_status(out)  # the driver died with the failure: stopped, the shard named with its error
    assert status["state"] == "stopped" and status["drivers_alive"] == []
    (failed,) = status["failed_shards"]
    assert "RuntimeError: injected failure in shard" in failed["error"] and failed["shard_id"] in failed["error"]
    assert "rerun the same command to resume" in render(status)

    manifest = run(cfg, progress=False)  # the rerun resumes and completes
    assert main(["status", out, "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["state"] == "complete" and done["failed_shards"] == []  # a success clears the failure marker
    assert done["shards"]["committed"] == done["shards"]["planned"] == manifest["shards"]
    assert done["records"]["total"] == manifest["records"] == 150
    assert done["records"]["errors_by_reason"] == {"empty": 1}
    assert sum(n["records"] for n in done["per_node"]) == 150


def test_rates_and_eta_are_computed_from_marker_times():
    run_record = {"shards": ["a", "b", "c", "d"], "inputs": {"c.txt": {"size": 400}}, "config": {}}
    markers = [
        {"shard_id": "a", "records": 10, "ok": 10, "errors": 0, "input_bytes": 100, "started_at": 0.0,
         "finished_at": 10.0, "node": "n1"},
        {"shard_id": "b", "records": 10, "ok": 9, "errors": 1, "errors_by_reason": {"empty": 1},
         "input_bytes": 100, "started_at": 10.0, "finished_at": 20.0, "node": "n2"},
    ]  # fmt: skip
    s = summarize("p", run_record, markers, [], [{"heartbeat": 25.0, "host": "h", "pid": 1}], None, now=25.0)
    assert s["state"] == "running" and s["shards"] == {"committed": 2, "planned": 4}
    assert s["records_per_s"] == pytest.approx(1.0) and s["bytes_per_s"] == pytest.approx(10.0)
    assert s["eta"] == pytest.approx(25.0 + 200 / 10.0)  # 200 bytes left at 10 bytes/s
    assert [n["node"] for n in s["per_node"]] == ["n1", "n2"] and s["records"]["errors_by_reason"] == {"empty": 1}
    stale = summarize("p", run_record, markers, [], [{"heartbeat": 0.0}], None, now=1000.0)
    assert stale["state"] == "stopped" and stale["drivers_alive"] == []
