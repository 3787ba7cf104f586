"""Runs the blocks over a corpus: in a Ray Data actor pool (the default) or in a plain local loop.

Protocol (resumable, effectively-once):
1. ``_run.json`` (config, fingerprint, the input files' sizes and versions, the shard plan) is created
   exclusively (local ``O_EXCL``, S3 ``If-None-Match``): of two runs started on one prefix, one owns
   it; the other joins only with the same configuration and input, else it is refused naming what
   differs. A resume against changed input, or a complete run whose input changed, is refused too.
2. Shards are planned deterministically; shards with a ``_shards/<id>.json`` marker are skipped.
3. Each shard's objects and table files have deterministic names (a retry overwrites), and its marker
   is written after them: the marker is the shard's commit point.
4. ``manifest.json`` (config, versions, counts, per-table rows and bytes) is written last: its
   presence means the run is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from inseq_ray.errors import PipelineError, RunConflictError, RunFailed, RunInterrupted, ShardError
from inseq_ray.pipeline.blocks import blocks_for, worker_identity
from inseq_ray.pipeline.claims import claim_shard, orphaned, release_shard
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.data import ShardBatch, check_blocks
from inseq_ray.pipeline.lease import TTL_S, DriverLease, describe
from inseq_ray.pipeline.nodes import NodeWatch
from inseq_ray.pipeline.preflight import estimate_records, preflight
from inseq_ray.pipeline.progress import ProgressCounter, RecordProgress, poll_counter
from inseq_ray.pipeline.quiet import mute_ray_error_stream
from inseq_ray.pipeline.shards import Shard
from inseq_ray.pipeline.storage import Storage
from inseq_ray.pipeline.verdict import early_stop
from inseq_ray.redact import redact_text, redact_url
from inseq_ray.settings import actor_resources


class ShardWorker:
    """The whole block list for one shard at a time; one instance per actor (model loaded once).

    ``blocks``: block classes (or factories) called with the config; default :func:`blocks_for` the config. Tests
    inject their own (e.g. one that kills the process between writing and committing).
    """

    def __init__(
        self,
        cfg: dict,
        blocks: Sequence[Callable] | None = None,
        on_records: Callable | None = None,
        driver: str = "",
    ) -> None:
        config = PipelineConfig.from_dict(cfg)
        self.driver = driver  # the lease id of the driver this worker serves ("": no claims, e.g. a direct call)
        self.blocks = [block(config) for block in (blocks or blocks_for(config))]
        check_blocks(self.blocks)
        self.on_records = on_records or (lambda n: None)
        self.storage = Storage(config.output, config.storage_attempts)
        self.worker = worker_identity()[0]
        self.failed_before = set(_names(self.storage, "_failed"))  # shards whose failure marker a success removes

    def process(self, shard: dict) -> dict:
        """The shard's summary, or ``{"shard_id", "skipped": True}`` when it is committed or claimed by another
        live driver (:mod:`inseq_ray.pipeline.claims`)."""
        shard_id = shard["shard_id"]
        if self.driver and not claim_shard(self.storage, shard_id, self.driver):
            return {"shard_id": shard_id, "skipped": True}
        try:
            return self._process_claimed(shard)
        finally:
            if self.driver:
                release_shard(self.storage, shard_id)

    def _process_claimed(self, shard: dict) -> dict:
        try:
            summary = self._process(shard)
        except Exception as e:
            self._record_failure(shard["shard_id"], e)
            if redact_text(str(e)) == str(e):
                raise
            # the shard's URL may be presigned: no signature leaves this actor in a message
            raise ShardError(f"{type(e).__name__}: {redact_text(str(e))}") from None
        self._clear_failure(shard["shard_id"])
        return summary

    def _record_failure(self, shard_id: str, e: Exception) -> None:
        """``_failed/<shard>.json``: its last error in one line, for ``inseq-ray status`` (best effort)."""
        record = {"shard_id": shard_id, "error": redact_text(one_line(e)), "at": time.time(), "worker": self.worker}
        with contextlib.suppress(Exception):
            self.storage.write_json(record, "_failed", f"{shard_id}.json")

    def _clear_failure(self, shard_id: str) -> None:
        if shard_id in self.failed_before:
            with contextlib.suppress(Exception):
                self.storage.delete("_failed", f"{shard_id}.json")

    def _process(self, shard: dict) -> dict:
        batch = ShardBatch(Shard(**shard), on_records=self.on_records, started_at=time.time())
        for block in self.blocks:
            batch = block(batch)
        assert batch.summary is not None, "the last block makes the shard's summary"
        return batch.summary.to_dict()

    def __call__(self, batch: dict) -> dict:
        """Ray Data entry point: a batch of shard rows (numpy columns) -> JSON summaries."""
        import numpy as np

        n = len(batch["shard_id"])
        rows = [{k: _py(v[i]) for k, v in batch.items()} for i in range(n)]
        return {"summary": np.array([json.dumps(self.process(r)) for r in rows], dtype=object)}


def _names(storage: Storage, folder: str) -> list[str]:
    with contextlib.suppress(Exception):
        return [n.removesuffix(".json") for n in storage.list_names(folder) if n.endswith(".json")]
    return []


def _py(value):
    return value.item() if hasattr(value, "item") else value


def run_local(
    cfg: PipelineConfig,
    shards: list[Shard],
    blocks: Sequence[Callable] | None = None,
    on_records: Callable | None = None,
    driver: str = "",
) -> Iterator[dict]:
    worker = ShardWorker(cfg.to_dict(), blocks, on_records, driver)
    for shard in shards:
        yield worker.process(shard.to_dict())


def run_ray(
    cfg: PipelineConfig,
    shards: list[Shard],
    blocks: Sequence[Callable] | None = None,
    on_records: Callable | None = None,
    driver: str = "",
) -> Iterator[dict]:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    init_ray(cfg.verbose)
    counter = ray.remote(num_cpus=0)(ProgressCounter).remote() if on_records else None
    gpus = ray.cluster_resources().get("GPU", 0)
    actors, num_gpus = actor_resources(cfg.num_actors, cfg.num_gpus_per_actor, gpus, len(shards))
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    ds: Any = ray.data.from_items([s.to_dict() for s in shards], override_num_blocks=len(shards))
    ds = ds.map_batches(
        bound_worker(
            cfg.to_dict(), tuple(blocks or blocks_for(cfg)), counter, driver
        ),  # no constructor arguments for Ray Data to park
        batch_size=1,
        compute=ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=num_gpus,
        num_cpus=cfg.num_cpus_per_actor,
        # restarts and retries: Ray Data's defaults, which are what we want (nodes.py says why; a test pins them)
    )
    stop = threading.Event()
    if counter is not None:
        threading.Thread(target=poll_counter, args=(counter, on_records, stop), daemon=True).start()
    restore = (lambda: None) if cfg.verbose else mute_ray_error_stream()
    try:
        with NodeWatch(ray.nodes, cfg.num_cpus_per_actor, num_gpus):
            for row in ds.iter_rows():
                yield json.loads(row["summary"])
    except Exception as e:
        raise PipelineError(f"{redact_text(one_line(e))} (full logs: {_ray_log_dir()})") from None
    finally:
        stop.set()
        restore()


def bound_worker(cfg: dict, blocks: tuple, counter=None, driver: str = "") -> type:
    """A ShardWorker class with its config, blocks, progress counter and driver bound (Ray Data builds it without
    arguments)."""

    class BoundShardWorker(ShardWorker):
        def __init__(self) -> None:
            super().__init__(cfg, blocks, None if counter is None else counter.add.remote, driver)

    return BoundShardWorker


RAY_WRAPPERS = (
    "UserCodeException",
    "RayTaskError",
    "RayActorError",
    "ActorDiedError",
    "ObjectRefStreamEndOfStreamError",
)


def one_line(e: BaseException) -> str:
    """The original cause of a (Ray-wrapped) exception as ``Type: message``, first line only.

    Ray carries the remote traceback as text; its first ``SomeError: message`` line that is not one of
    Ray's wrappers is the user's error.
    """
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = getattr(cur, "cause", None) or cur.__cause__
    pattern = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt|Exit)): (.*)$")
    for exc in chain:
        for line in str(exc).splitlines():
            m = pattern.match(line)
            if m and m.group(1) not in RAY_WRAPPERS:
                return f"{m.group(1)}: {m.group(2).strip()}"
    last = chain[-1]
    lines = [line.strip() for line in str(last).splitlines() if line.strip()]
    return f"{type(last).__name__}: {lines[0] if lines else ''}"


def _ray_log_dir() -> str:
    try:
        import ray

        node: Any = ray._private.worker._global_node
        return os.path.join(node.get_session_dir_path(), "logs")
    except Exception:
        return "/tmp/ray/session_latest/logs"


def init_ray(verbose: bool = False) -> None:
    """Attach to ``RAY_ADDRESS`` when set, else start a local Ray with enough logical CPUs.

    Ray's own INFO/WARNING lines and the actors' output are shown only with ``verbose``.
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    level = logging.INFO if verbose else logging.ERROR
    if not verbose:  # Ray's C++ side logs a known-harmless ERROR line per Ray Data actor (ray#53727)
        from inseq_ray.pipeline.quiet import filter_stderr

        filter_stderr()
    for name in ("ray", "ray.data", "ray.air"):
        logging.getLogger(name).setLevel(level)
    kwargs: dict[str, Any] = {"logging_level": level, "log_to_driver": verbose}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, **kwargs)


RUN_LAYOUT = ("manifest.json", "_run.json", "_shards", "_failed", "_claims", "tables", "sequences", "_tmp")


def overwrite_run(storage: Storage) -> str:
    """Remove what a run owns under the prefix (never anything else there); refused while a driver works on it.
    Returns the one line that says what was removed."""
    live = DriverLease(storage, "").others()
    if live:
        raise RunConflictError(
            f"--overwrite: {redact_url(storage.prefix)} is being written by a live run ({describe(live[0])}); "
            "stop it first."
        )
    old = _read_run_record(storage, attempts=1) if storage.exists("_run.json") else None
    shards = len(storage.list_names("_shards"))
    removed = []
    for name in RUN_LAYOUT:
        path = storage.path(name)
        if storage.fs.exists(path):
            storage.fs.rm(path, recursive=True)
            removed.append(name)
    what = f"a run of {old['config'].get('model')} / {old['config'].get('method')}" if old else "run files"
    return f"--overwrite: removed {what} ({shards} committed shards; {', '.join(removed) or 'nothing'}) at " + (
        redact_url(storage.prefix)
    )


def run(
    cfg: PipelineConfig, progress: bool = True, blocks: Sequence[Callable] | None = None, overwrite: bool = False
) -> dict:
    """Run (or resume) the pipeline with ``blocks`` (default :func:`blocks_for` the config); returns the manifest.

    A complete run with the same configuration and input returns its manifest with
    ``already_complete=True`` and does nothing.
    """
    cfg.validate()
    shards, sample, identity = preflight(cfg)  # input, model and output checked before any cluster starts
    storage = Storage(cfg.output, cfg.storage_attempts)
    if overwrite:
        print(overwrite_run(storage), file=sys.stderr)
    record = {
        "fingerprint": cfg.fingerprint(),
        "config": safe_config(cfg),
        "inputs": identity,
        "shards": [s.shard_id for s in shards],
    }
    with DriverLease(storage, str(record["fingerprint"])) as lease:  # registered before claiming: see lease.py
        claim_run(storage, record, lease)
        lease.mark_claimed()
        if storage.exists("manifest.json"):
            return {**storage.read_json("manifest.json"), "already_complete": True}
        return _run_claimed(cfg, storage, record, lease, (shards, sample), progress, blocks or blocks_for(cfg))


def _run_claimed(
    cfg: PipelineConfig,
    storage: Storage,
    record: dict,
    lease: DriverLease,
    planned: tuple[list[Shard], list],
    progress: bool,
    blocks: Sequence[Callable],
) -> dict:
    """The shards not yet committed, then the manifest (only over markers all made under this configuration)."""
    shards, sample = planned
    storage.clean_stale_tmp()
    done = {n.removesuffix(".json") for n in storage.list_names("_shards") if n.endswith(".json")}
    pending = [s for s in shards if s.shard_id not in done]
    if done and progress:
        print(f"resuming: {len(done)}/{len(shards)} shards already committed", file=sys.stderr)
    start = time.perf_counter()
    bar = RecordProgress(estimate_records(pending, sample), progress) if pending else None
    try:
        new = _attribute_pending(cfg, storage, lease, pending, blocks, bar.add if bar else None, progress)
    except BaseException as e:
        if bar is not None:
            bar.bar.close()
        committed = _release_failed_start(storage, lease)
        if isinstance(e, KeyboardInterrupt):
            done_part = f"{committed}/{len(shards)}" if committed is not None else "some"
            raise RunInterrupted(f"interrupted after {done_part} shards; rerun the same command to resume") from None
        raise
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.finish(sum(s["records"] for s in new))
    ours = {s["shard_id"] for s in new}
    summaries = [storage.read_json("_shards", f"{s.shard_id}.json") for s in shards if s.shard_id not in ours] + new
    claim_run(storage, record, lease)  # still ours (re-created if a failing driver removed it meanwhile)
    check_markers(storage, summaries, record["fingerprint"])
    manifest = build_manifest(cfg, shards, summaries, len(new), elapsed)
    storage.write_json(manifest, "manifest.json")
    return manifest


def _attribute_pending(
    cfg: PipelineConfig,
    storage: Storage,
    lease: DriverLease,
    pending: list[Shard],
    blocks: Sequence[Callable],
    add: Callable | None,
    progress: bool,
    poll_s: float = 5.0,
) -> list[dict]:
    """Attribute ``pending`` (split with any other driver of this configuration through shard claims); then
    wait for the shards another driver took, attributing any whose driver died. Returns this driver's summaries."""
    runner = run_ray if cfg.use_ray else run_local
    new: list[dict] = []
    todo, said = pending, False
    while todo:
        waiting = set()
        for r in runner(cfg, todo, blocks, add, lease.id):
            if r.get("skipped"):
                waiting.add(r["shard_id"])
                continue
            new.append(r)
            stop = early_stop(new, cfg.max_error_rate)
            if stop:
                raise RunFailed(stop)
        todo = []
        while waiting and not todo:
            waiting -= {n.removesuffix(".json") for n in storage.list_names("_shards")}
            orphans = set(orphaned(storage, sorted(waiting)))
            todo = [s for s in pending if s.shard_id in orphans]
            if waiting and not todo:
                if progress and not said:
                    print(f"waiting for {len(waiting)} shards another driver is attributing", file=sys.stderr)
                    said = True
                time.sleep(poll_s)
    return new


def check_markers(storage: Storage, summaries: list[dict], fingerprint: str) -> None:
    """Refuse to write a manifest over shard markers made under another configuration (markers without a
    fingerprint come from versions before markers carried one and are taken as this run's)."""
    other = sorted(s["shard_id"] for s in summaries if s.get("fingerprint", fingerprint) != fingerprint)
    if other:
        raise RunConflictError(
            f"{redact_url(storage.prefix)} holds shards committed under another configuration ({len(other)}, e.g. "
            f"{other[0]}): its results would be mixed, so no manifest was written. Use a new --output."
        )


def _release_failed_start(storage: Storage, lease: DriverLease) -> int | None:
    """After a failure: how many shards are committed; with none, and no other driver working on the prefix, the
    claim is removed so the prefix stays reusable (a joined driver still working keeps it). The store may be down
    too (the failure may be that outage): then nothing is touched, None is returned, and the run's own error is
    the one reported."""
    try:
        lease.release()
        committed = len(storage.list_names("_shards"))
        if not committed and not lease.others():
            storage.delete("_run.json")
        return committed
    except Exception:
        return None


def claim_run(storage: Storage, record: dict, lease: DriverLease | None = None) -> bool:
    """Create ``_run.json`` exclusively (True), or check that the run it holds is this one (False).

    Raises :class:`RunConflictError` naming the settings or input files that differ, or, for a prefix found
    free, the live driver of another configuration still working there (``lease``: this driver's).
    """
    if storage.create_exclusive(json.dumps(record, indent=2, sort_keys=True).encode(), "_run.json"):
        others = lease.others() if lease else []
        busy = [o for o in others if o.get("claimed", True) and o.get("fingerprint") != record["fingerprint"]]
        if busy:
            storage.delete("_run.json")
            raise RunConflictError(
                f"{redact_url(storage.prefix)} is being written by another run with another configuration "
                f"({describe(busy[0])}); nothing was changed there. Use a new --output, or wait for it to end "
                f"(a driver that died frees the prefix {TTL_S:.0f}s after its last heartbeat)."
            )
        return True
    old = _read_run_record(storage)
    where = redact_url(storage.prefix)
    if old is None:  # a broken claim: harmless (and removed) when nothing was committed under it
        if storage.list_names("_shards"):
            raise RunConflictError(f"{where}/_run.json is broken but shards are committed: use a new --output.")
        storage.delete("_run.json")
        return claim_run(storage, record, lease)
    complete = storage.exists("manifest.json")
    state = "a complete run" if complete else "an unfinished run"
    if old.get("fingerprint") != record["fingerprint"]:
        diffs = config_differences(old.get("config", {}), record["config"])
        raise RunConflictError(
            f"{where} holds {state} with another configuration ({diffs}); nothing was changed there. "
            "Use a new --output for this configuration, or rerun with the old settings to "
            + ("see it." if complete else "resume it.")
        )
    if "inputs" in old and old["inputs"] != record["inputs"]:
        changes = input_differences(old["inputs"], record["inputs"])
        if complete:
            raise RunConflictError(
                f"{where} holds a complete run, but its input changed since ({changes}); the results describe "
                "the input as it was. To attribute only new records, put them in new files and run those "
                "(e.g. --input 'corpus/new-*.jsonl') into a new --output."
            )
        raise RunConflictError(
            f"{where} holds an unfinished run whose input changed since it started ({changes}); resuming would "
            "lose or duplicate records. Restore the input, or start over with a new --output."
        )
    return False


def _read_run_record(storage: Storage, attempts: int = 50) -> dict | None:
    """``_run.json``, or None if it stays empty or broken (written whole now; versions before could leave it
    half-written when a start failed, e.g. on a full disk)."""
    for _ in range(attempts):
        try:
            return storage.read_json("_run.json")
        except (json.JSONDecodeError, ValueError):
            time.sleep(0.1)
    return None


def config_differences(old: dict, new: dict) -> str:
    """The results-changing settings that differ, as ``name: old -> new`` pairs."""
    keys = PipelineConfig().results_settings()
    pairs = [f"{k}: {old.get(k)!r} there -> {new.get(k)!r} here" for k in sorted(keys) if old.get(k) != new.get(k)]
    return "; ".join(pairs) or "fingerprints differ"


def input_differences(old: dict, new: dict, limit: int = 5) -> str:
    """Input files added, removed or changed (size or version), the first ``limit`` of each named."""

    def names(xs: list[str]) -> str:
        return ", ".join(xs[:limit]) + (f" and {len(xs) - limit} more" if len(xs) > limit else "")

    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    parts = [
        f"{what}: {names(xs)}" for what, xs in (("added", added), ("removed", removed), ("changed", changed)) if xs
    ]
    return "; ".join(parts)


def safe_config(cfg: PipelineConfig) -> dict:
    d = cfg.to_dict()
    d["input"], d["output"] = redact_url(cfg.input), redact_url(cfg.output)
    return d


def _sum_dicts(dicts) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def build_manifest(cfg: PipelineConfig, shards: list[Shard], summaries: list[dict], n_new: int, seconds: float) -> dict:
    import pyarrow
    import torch
    import transformers

    import inseq_ray

    def total(key: str) -> int:
        return sum(s[key] for s in summaries)

    rows: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for s in summaries:
        for k, v in s["rows"].items():
            rows[k] = rows.get(k, 0) + v
        for k, v in s["bytes"].items():
            sizes[k] = sizes.get(k, 0) + v
    new = summaries[len(summaries) - n_new :] if n_new else []
    new_records = sum(s["records"] for s in new)
    return {
        "complete": True,
        "config": safe_config(cfg),
        "fingerprint": cfg.fingerprint(),
        "versions": {
            "inseq_ray": inseq_ray.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "pyarrow": pyarrow.__version__,
            "python": platform.python_version(),
        },
        "shards": len(shards),
        "shards_run_this_time": n_new,
        "records": total("records"),
        "ok": total("ok"),
        "errors": total("errors"),
        "errors_by_reason": _sum_dicts(s.get("errors_by_reason") or {} for s in summaries),
        "target_tokens": total("target_tokens"),
        "table_rows": rows,
        "bytes": sizes,
        "this_run": {
            "seconds": seconds,
            "records": new_records,
            "records_per_s": new_records / seconds if seconds and new_records else None,
            "target_tokens_per_s": sum(s["target_tokens"] for s in new) / seconds if seconds and new else None,
        },
    }
