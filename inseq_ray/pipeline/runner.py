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

import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from inseq_ray.pipeline.blocks import BLOCKS
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.data import ShardBatch, check_blocks
from inseq_ray.pipeline.shards import Shard, input_identity, plan_shards
from inseq_ray.pipeline.storage import Storage, redact_url


class ShardWorker:
    """The whole block list for one shard at a time; one instance per actor (model loaded once).

    ``blocks``: block classes (or factories) called with the config; default :data:`BLOCKS`. Tests
    inject their own (e.g. one that kills the process between writing and committing).
    """

    def __init__(self, cfg: dict, blocks: Sequence[Callable] = BLOCKS) -> None:
        config = PipelineConfig.from_dict(cfg)
        self.blocks = [block(config) for block in blocks]
        check_blocks(self.blocks)

    def process(self, shard: dict) -> dict:
        batch = ShardBatch(Shard(**shard))
        for block in self.blocks:
            batch = block(batch)
        return batch.summary.to_dict()

    def __call__(self, batch: dict) -> dict:
        """Ray Data entry point: a batch of shard rows (numpy columns) -> JSON summaries."""
        import numpy as np

        n = len(batch["shard_id"])
        rows = [{k: _py(v[i]) for k, v in batch.items()} for i in range(n)]
        return {"summary": np.array([json.dumps(self.process(r)) for r in rows], dtype=object)}


def _py(value):
    return value.item() if hasattr(value, "item") else value


def run_local(cfg: PipelineConfig, shards: list[Shard], blocks: Sequence[Callable] = BLOCKS) -> Iterator[dict]:
    worker = ShardWorker(cfg.to_dict(), blocks)
    for shard in shards:
        yield worker.process(shard.to_dict())


def run_ray(cfg: PipelineConfig, shards: list[Shard], blocks: Sequence[Callable] = BLOCKS) -> Iterator[dict]:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    init_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    num_gpus = cfg.num_gpus_per_actor if cfg.num_gpus_per_actor is not None else (1.0 if gpus else 0.0)
    actors = cfg.num_actors or (max(1, int(gpus // max(num_gpus, 1e-9))) if num_gpus else 2)
    actors = max(1, min(actors, len(shards)))
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    ds = ray.data.from_items([s.to_dict() for s in shards], override_num_blocks=len(shards))
    ds = ds.map_batches(
        ShardWorker,
        fn_constructor_kwargs={"cfg": cfg.to_dict(), "blocks": tuple(blocks)},
        batch_size=1,
        compute=ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=num_gpus,
        num_cpus=cfg.num_cpus_per_actor,
    )
    for row in ds.iter_rows():
        yield json.loads(row["summary"])


def init_ray() -> None:
    """Attach to ``RAY_ADDRESS`` when set, else start a local Ray with enough logical CPUs."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=True)


class RunConflictError(ValueError):
    """The output prefix holds a run of another configuration or another input; the message says what differs."""


def run(cfg: PipelineConfig, progress: bool = True, blocks: Sequence[Callable] = BLOCKS) -> dict:
    """Run (or resume) the pipeline with ``blocks`` (default :data:`BLOCKS`); returns the manifest.

    A complete run with the same configuration and input returns its manifest with
    ``already_complete=True`` and does nothing.
    """
    cfg.validate()
    storage = Storage(cfg.output)
    shards = plan_shards(cfg.input, cfg.input_format, cfg.shard_bytes)
    record = {
        "fingerprint": cfg.fingerprint(),
        "config": safe_config(cfg),
        "inputs": input_identity(cfg.input),
        "shards": [s.shard_id for s in shards],
    }
    created = claim_run(storage, record)
    if storage.exists("manifest.json"):
        return {**storage.read_json("manifest.json"), "already_complete": True}
    storage.clean_stale_tmp()
    done = {n.removesuffix(".json") for n in storage.list_names("_shards") if n.endswith(".json")}
    pending = [s for s in shards if s.shard_id not in done]
    start = time.perf_counter()
    runner = run_ray if cfg.use_ray else run_local
    try:
        new = list(_track(runner(cfg, pending, blocks), sum(s.size for s in pending), progress)) if pending else []
    except BaseException:
        if created and not storage.list_names("_shards"):  # nothing committed: leave the prefix reusable
            storage.delete("_run.json")
        raise
    elapsed = time.perf_counter() - start
    summaries = [storage.read_json("_shards", f"{s.shard_id}.json") for s in shards if s.shard_id in done] + new
    manifest = build_manifest(cfg, shards, summaries, len(new), elapsed)
    storage.write_json(manifest, "manifest.json")
    return manifest


def claim_run(storage: Storage, record: dict) -> bool:
    """Create ``_run.json`` exclusively (True), or check that the run it holds is this one (False).

    Raises :class:`RunConflictError` naming the settings or input files that differ.
    """
    if storage.create_exclusive(json.dumps(record, indent=2, sort_keys=True).encode(), "_run.json"):
        return True
    old = _read_run_record(storage)
    where = redact_url(storage.prefix)
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


def _read_run_record(storage: Storage, attempts: int = 50) -> dict:
    """``_run.json``, waiting briefly while another process finishes creating it."""
    for _ in range(attempts):
        try:
            return storage.read_json("_run.json")
        except (json.JSONDecodeError, ValueError):
            time.sleep(0.1)
    return storage.read_json("_run.json")


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


def _track(summaries: Iterable[dict], total_bytes: int, show: bool) -> Iterator[dict]:
    """Live progress over input bytes, with records/s and target tokens/s."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="Attributing", disable=not show, smoothing=0.1)
    records = tokens = 0
    start = time.perf_counter()
    for s in summaries:
        records += s["records"]
        tokens += s["target_tokens"]
        rate = records / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(records=records, rec_s=f"{rate:.1f}")
        bar.update(s["input_bytes"])
        yield s
    bar.close()


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
