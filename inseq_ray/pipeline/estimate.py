"""``--dry-run``: estimate a run's size before anything runs, from a sample of the corpus.

Reads whole shards spread evenly over the corpus until ``sample_records`` records are seen (bytes per
record -> estimated records; Parquet row counts are exact), attributes up to ``attribute_records`` of
them locally through the real blocks (target tokens per record, bytes per record of every output),
and turns ``expected_records_per_gpu_s`` into GPU-hours.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

from inseq_ray.pipeline.blocks import blocks_for, read_records
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.data import ShardBatch, check_blocks
from inseq_ray.pipeline.shards import Record, Shard


def _spread(items: list, k: int) -> list:
    """Up to ``k`` items evenly spaced over ``items`` (first and last included)."""
    if len(items) <= k:
        return items
    step = (len(items) - 1) / (k - 1)
    return [items[round(i * step)] for i in range(k)]


def spread_order(n: int) -> list[int]:
    """0..n-1 ordered so that every prefix is spread over the range (van der Corput: 0, 1/2, 1/4, 3/4, ...)."""
    seen: dict[int, None] = {}
    k = 0
    while len(seen) < n and k < 4 * n:
        x, i, f = 0.0, k, 0.5
        while i:
            x, i, f = x + f * (i & 1), i >> 1, f / 2
        seen.setdefault(round(x * (n - 1)), None)
        k += 1
    return list(seen) + [i for i in range(n) if i not in seen]


def estimate(cfg: PipelineConfig, sample_records: int = 2000, attribute_records: int = 64) -> dict:
    """Every start-up check of a real run first (one-line errors), then the estimate for the method chosen."""
    from inseq_ray.methods import method_copies
    from inseq_ray.pipeline.preflight import preflight

    cfg.validate()
    shards, _, _ = preflight(cfg)
    total_bytes = sum(s.size for s in shards)
    sampled: list[Shard] = []
    records: list[Record] = []
    sampled_bytes = 0
    for shard in (shards[i] for i in spread_order(len(shards))):
        if len(records) >= sample_records:
            break
        part = read_records(cfg, shard)  # every column a real run reads (contrast, id, kept columns)
        records += part
        sampled_bytes += shard.size
        sampled.append(shard)
    est_records = round(len(records) * total_bytes / max(sampled_bytes, 1))
    good = [r for r in records if not r.error_reason]
    measured: dict[str, Any] = _measure(cfg, _spread(good, attribute_records)) if good else {"tokens": 0.0, "bytes": {}}
    ok_share = len(good) / max(len(records), 1)
    copies = method_copies(cfg.method, cfg.method_args)
    per_gpu = cfg.expected_records_per_gpu_s / copies  # the bench's rate is saliency's: one copy per row
    return {
        "method": cfg.method,
        "method_copies": copies,
        "shards": len(shards),
        "input_bytes": total_bytes,
        "sampled_records": len(records),
        "estimated_records": est_records,
        "estimated_ok_records": round(est_records * ok_share),
        "target_tokens_per_record": measured["tokens"],
        "estimated_target_tokens": round(est_records * ok_share * measured["tokens"]),
        "bytes_per_record": measured["bytes"],
        "estimated_output_bytes": round(est_records * sum(measured["bytes"].values())),
        "expected_records_per_gpu_s": per_gpu,
        "estimated_gpu_hours": est_records / per_gpu / 3600,
        **request_estimate(round(est_records * ok_share), len(shards)),
        "memory": measured.get("memory"),
    }


# S3 Standard list prices (us-east-1) used for the request-cost line; other stores and regions differ.
PUT_USD_PER_1000 = 0.005
GET_USD_PER_1000 = 0.0004
TABLES_PER_SHARD = 5


def request_estimate(ok_records: int, shards: int) -> dict:
    """Object-store requests of a run: one PUT per sequence object, per shard its table files, its marker and
    its input read, plus the run's own few (claim, preflight probe, manifest)."""
    puts = ok_records + shards * (TABLES_PER_SHARD + 1) + 3
    gets = shards * 2 + 3  # the shard's byte range (+ a header or listing page), _run.json, markers listing
    cost = puts / 1000 * PUT_USD_PER_1000 + gets / 1000 * GET_USD_PER_1000
    return {"estimated_put_requests": puts, "estimated_get_requests": gets, "estimated_request_usd": cost}


def _measure(cfg: PipelineConfig, records: list[Record]) -> dict[str, Any]:
    """Attribute ``records`` locally through the real blocks into a temp folder; per-record sizes."""
    with tempfile.TemporaryDirectory() as tmp:
        local = dataclasses.replace(cfg, output=tmp, use_ray=False)
        rest = [block(local) for block in blocks_for(local)[1:]]  # the records are already read
        check_blocks(rest, start=("shard", "records"))
        batch = ShardBatch(Shard("dryrun", "", "", "text", 0, 0), records=records)
        for block in rest:
            batch = block(batch)
        s = batch.summary
        if s is None:
            raise RuntimeError("the block list made no shard summary")
        model = next((b.model for b in rest if hasattr(b, "model")), None)
    n = max(1, len(records))
    ok = max(1, s.ok)
    out = {"tokens": s.target_tokens / ok, "bytes": {k: v / n for k, v in s.bytes.items()}}
    if model is not None and cfg.context_column is None:
        out["memory"] = memory_plan(cfg, model, records)
    return out


def memory_plan(cfg: PipelineConfig, model, records: list[Record]) -> dict[str, Any]:
    """The memory model over the sample's batches as a real run plans them: per batch its rows, padded tokens,
    steps and predicted peak bytes (:mod:`inseq_ray.memory`), and the token budget the device allows."""
    from inseq_ray.batching import plan_batches
    from inseq_ray.memory import MemoryProfile, batch_token_budget, device_bytes, predict_peak, tokens_that_fit
    from inseq_ray.methods import get_method_spec

    spec, tok = get_method_spec(cfg.method), model.tokenizer
    copies = spec.copies_for(cfg.method_args)
    profile = MemoryProfile.measure(model.adapter)
    new = int(cfg.generation_args.get("max_new_tokens", 40))
    sources = [len(ids) for ids in tok([r.source for r in records])["input_ids"]]
    steps = [len(tok(r.target)["input_ids"]) if r.target else new for r in records]
    lengths = [s + t for s, t in zip(sources, steps, strict=True)]
    budget = batch_token_budget(cfg.max_batch_tokens, cfg.method, model, device_bytes(model))
    batches = []
    for idx in plan_batches(lengths, cfg.batch_size, max(1, budget // copies)):
        shape = (len(idx), max(lengths[i] for i in idx), max(steps[i] for i in idx))
        padded = len({lengths[i] for i in idx}) > 1
        batches.append({"rows": shape[0], "padded_tokens": shape[1], "steps": shape[2],
                        "predicted_bytes": predict_peak(profile, spec.memory, copies, *shape, padded)["total"]})  # fmt: skip
    total = device_bytes(model)
    fits = tokens_that_fit(profile, spec.memory, 1, total) if total else None
    return {"profile": profile.to_dict(), "batches": batches, "device_bytes": total, "tokens_that_fit": fits}


def print_memory(m: dict, shown: int = 8) -> None:
    """The predicted peak memory per batch (the largest ``shown`` batches) and the device's token budget."""
    batches = sorted(m["batches"], key=lambda b: -b["predicted_bytes"])
    print(f"predicted peak memory per batch ({len(batches)} batches of the sample; largest first):")
    for b in batches[:shown]:
        print(
            f"  {b['rows']} rows x {b['padded_tokens']} tokens, {b['steps']} steps: {human_bytes(b['predicted_bytes'])}"
        )
    if m["tokens_that_fit"]:
        print(f"device memory {human_bytes(m['device_bytes'])}: a token budget of {m['tokens_that_fit']:,} fits")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def print_estimate(e: dict) -> None:
    print(f"input: {human_bytes(e['input_bytes'])} in {e['shards']} shards; sampled {e['sampled_records']} records")
    print(f"estimated records: {e['estimated_records']:,} ({e['estimated_ok_records']:,} attributable)")
    print(
        f"target tokens per record: {e['target_tokens_per_record']:.1f} -> {e['estimated_target_tokens']:,} target tokens"
    )
    print(
        f"estimated GPU-hours: {e['estimated_gpu_hours']:.2f} at {e['expected_records_per_gpu_s']:.0f} records/s per GPU "
        f"for {e['method']} (expected_records_per_gpu_s / {e['method_copies']} copies per forward; measure yours "
        "with benchmarks/engine_bench.py)"
    )
    if e.get("memory"):
        print_memory(e["memory"])
    sizes = ", ".join(f"{k} {v:.0f}" for k, v in sorted(e["bytes_per_record"].items()))
    print(f"bytes per record: {sizes}")
    print(f"estimated output size: {human_bytes(e['estimated_output_bytes'])}")
    print(
        f"object-store requests: {e['estimated_put_requests']:,} PUT + {e['estimated_get_requests']:,} GET "
        f"~ ${e['estimated_request_usd']:.2f} (S3 Standard list price: ${PUT_USD_PER_1000}/1k PUT, "
        f"${GET_USD_PER_1000}/1k GET); objects are written concurrently, so latency adds little (measured: "
        "1.11x at +25 ms per request, benchmarks/storage_latency_bench.py)"
    )
