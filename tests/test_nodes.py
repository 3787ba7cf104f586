"""Node loss on a real multi-node Ray cluster (a head and worker nodes with their own raylets, started and stopped
here): a killed worker costs no record and duplicates none; losing every worker is said in one line, and the run
goes on when a node joins. Recovery is said in our words, one line each, never Ray's."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from inseq_ray.pipeline.nodes import NO_HOST, hosts, node_changes
from inseq_ray.toy.tasks import translation_corpus

ROOT = Path(__file__).resolve().parents[1]


def _node(node_id: str, alive: bool = True, cpus: float = 2, gpus: float = 0) -> dict:
    return {"NodeID": node_id, "Alive": alive, "NodeManagerAddress": f"10.0.0.{node_id}",
            "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}  # fmt: skip


def test_node_changes_are_one_line_each():
    before = hosts([_node("1"), _node("2"), _node("3", cpus=0), _node("4", alive=False)], cpus=1, gpus=0)
    assert before == {"1": "10.0.0.1", "2": "10.0.0.2"}  # the CPU-less head and the dead node cannot host
    assert hosts([_node("1"), _node("2", gpus=1)], cpus=1, gpus=1) == {"2": "10.0.0.2"}
    one_left = node_changes(before, {"2": "10.0.0.2"})
    assert one_left == ["node lost: 10.0.0.1 (1 left that can run actors); its shards in flight are retried"]
    assert node_changes({"2": "10.0.0.2"}, {})[-1] == NO_HOST
    assert node_changes({}, {"5": "10.0.0.5"}) == ["node joined: 10.0.0.5 (1 can run actors)"]
    assert node_changes(before, before) == []


def test_ray_datas_actor_pool_restarts_and_retries_without_limit():
    """The runner relies on these defaults (nodes.py says why); an upgrade that changes them fails here."""
    from ray.data import DataContext
    from ray.data._internal.execution.operators.actor_pool_map_operator import ActorPoolMapOperator

    args = ActorPoolMapOperator._apply_default_remote_args({}, DataContext.get_current())
    assert args["max_restarts"] == -1 and args["max_task_retries"] == -1


def test_rays_recovery_messages_are_dropped_and_others_cut_to_one_line(monkeypatch):
    import ray._private.worker as ray_worker

    from inseq_ray.pipeline.quiet import mute_ray_error_stream

    seen = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, ignore_prefix: seen.append(data["lines"]))
    original = ray_worker.print_to_stdstream
    restore = mute_ray_error_stream()
    ray_worker.print_to_stdstream({"lines": ["The node with node id: x has been marked dead because\n(1) ..."]}, False)
    ray_worker.print_to_stdstream({"lines": ["Task ... failed. The actor is temporarily unavailable: RpcError"]}, False)
    ray_worker.print_to_stdstream({"lines": ["Something else happened\nwith details\nand more"]}, False)
    restore()
    assert seen == [["Something else happened"]] and ray_worker.print_to_stdstream is original


class _Lines:
    """A process's stderr, read line by line on a thread, so a test can wait for a line (an event)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, deadline_s: float) -> str:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                line = self._queue.get(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the driver ended before saying {text!r}: {self.lines[-20:]}")
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {deadline_s:.0f}s: {self.lines[-20:]}")

    def rest(self) -> list[str]:
        while (line := self._queue.get()) is not None:
            self.lines.append(line)
        return self.lines


def _wait_for_file(folder: Path, proc: subprocess.Popen, deadline_s: float = 300) -> None:
    end = time.monotonic() + deadline_s
    while not (folder.is_dir() and any(folder.glob("*.json"))):
        assert proc.poll() is None and time.monotonic() < end, "no shard was committed"
        time.sleep(0.1)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_worker_nodes_lost_mid_run_cost_no_record_and_all_lost_is_one_line():
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="nodes", dir="/tmp"))  # short: Ray's socket paths must fit
    sentences = [s for s, _, _ in translation_corpus(240, seed=21)]
    (tmp / "c.txt").write_text("".join(s + "\n" for s in sentences))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no actor
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]  # one actor per worker node
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        driver = (
            f"from tests.faults import run_held; run_held({str(tmp / 'c.txt')!r}, {str(tmp / 'run')!r}, {str(tmp)!r})"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", driver], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        err = _Lines(proc.stderr)
        _wait_for_file(tmp / "run" / "_shards", proc)  # the first shard committed; both actors hold a shard now
        cluster.remove_node(workers[0], allow_graceful=False)  # SIGKILL: its actor and shard in flight are gone
        err.wait_for("node lost", 240)
        cluster.remove_node(workers[1], allow_graceful=False)  # no node can run an actor now
        err.wait_for(NO_HOST, 240)
        cluster.add_node(num_cpus=1)
        err.wait_for("node joined", 240)
        (tmp / "go").write_text("")  # let the held shards through
        out, _ = proc.communicate(timeout=900)
        lines = err.rest()
        assert proc.returncode == 0, lines[-30:]
    finally:
        cluster.shutdown()
    seqs = pl.read_parquet(tmp / "run" / "tables" / "sequences" / "*.parquet")
    errs = pl.read_parquet(tmp / "run" / "tables" / "errors" / "*.parquet")
    assert seqs.height + errs.height == len(sentences) and errs.height == 0  # ids in == ids out
    assert seqs["seq_id"].n_unique() == seqs.height and sorted(seqs["source_text"]) == sorted(sentences)
    steps = pl.read_parquet(tmp / "run" / "tables" / "step_scores" / "*.parquet")
    assert steps.group_by("seq_id", "step").len()["len"].max() == 1  # no step row twice
    import inseq_ray as inseq

    for uri in seqs["object_uri"]:
        assert inseq.FeatureAttributionOutput.load(uri)[0].n_steps > 0
    said = "\n".join([out, *lines])
    assert "(raylet)" not in said and "Traceback" not in said and "marked dead" not in said, said[-3000:]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_driver_killed_while_actors_run_on_worker_nodes_then_a_rerun_is_exact():
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="drv", dir="/tmp"))
    sentences = [s for s, _, _ in translation_corpus(160, seed=22)]
    (tmp / "c.txt").write_text("".join(s + "\n" for s in sentences))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        driver = (
            f"from tests.faults import run_held; run_held({str(tmp / 'c.txt')!r}, {str(tmp / 'run')!r}, {str(tmp)!r})"
        )
        held = subprocess.Popen(
            [sys.executable, "-c", driver], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        _wait_for_file(tmp / "run" / "_shards", held)  # a shard committed; the actors on the workers hold more
        held.kill()  # SIGKILL the driver: its actors go with its job, their shards uncommitted
        held.wait()
        rerun = subprocess.run(
            [sys.executable, "-m", "inseq_ray.cli", "attribute-dataset", "--input", str(tmp / "c.txt"), "--output",
             str(tmp / "run"), "--shard-bytes", "1024", "--num-actors", "2", "--no-report", "--quiet"],
            env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"done: {len(sentences)} records" in rerun.stdout
        redone = int(rerun.stdout.split("this run: ")[1].split(" records")[0])
        assert 0 < redone < len(sentences)  # the committed shards were kept, the rest attributed
    finally:
        cluster.shutdown()
    seqs = pl.read_parquet(tmp / "run" / "tables" / "sequences" / "*.parquet")
    assert seqs.height == len(sentences) and seqs["seq_id"].n_unique() == seqs.height
    assert sorted(seqs["source_text"]) == sorted(sentences)
    objects = list((tmp / "run" / "sequences").rglob("*.json.gz"))
    assert sorted(p.name.removesuffix(".json.gz") for p in objects) == sorted(seqs["seq_id"])  # no stray object
