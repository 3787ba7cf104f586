"""The pipeline's blocks: ``Block(config)`` sets up once, ``__call__(batch) -> batch`` transforms a batch.

They know nothing of Ray: :mod:`inseq_ray.pipeline.runner` runs the same list in a Ray actor or in
a plain loop. A batch is one shard (:class:`~inseq_ray.pipeline.data.ShardBatch`); each block declares
the fields it ``needs`` and ``provides`` (checked when the list is built).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from inseq_ray.errors import InputError, NonFiniteAttributionError, Reason
from inseq_ray.output import FeatureAttributionOutput, FeatureAttributionSequenceOutput
from inseq_ray.pipeline import tables
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.data import ShardBatch, ShardSummary
from inseq_ray.pipeline.shards import Record, read_shard
from inseq_ray.pipeline.storage import Storage
from inseq_ray.serialization import to_bytes

GPU_BATCH_TOKENS = (
    1 << 20
)  # padded tokens x method copies per forward: ~1M fits a 7B-class model's activations on 80 GB
CPU_BATCH_TOKENS = 1 << 15  # on CPU, bigger forwards only add memory traffic (measured: step_blocks notes)
MAX_INPUT_CHARS = 1000  # error rows keep at most this much of the offending input


class ReadShard:
    """shard -> records (bad lines become records with ``error_reason`` set)."""

    needs, provides = ("shard",), ("records",)

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg

    def __call__(self, batch: ShardBatch) -> ShardBatch:
        batch.records = list(read_shard(batch.shard, self.cfg.source_column, self.cfg.target_column))
        return batch


class Attribute:
    """records -> (record, aggregated sequence output) results, plus error rows. Loads the model once."""

    needs, provides = ("records",), ("results", "errors", "attribute_seconds")

    def __init__(self, cfg: PipelineConfig) -> None:
        from transformers.utils import logging as hf_logging

        import inseq_ray

        hf_logging.disable_progress_bar()  # this process is ours (an actor or the CLI): keep logs readable
        self.cfg = cfg
        self.model = inseq_ray.load_model(cfg.model, cfg.method, device=cfg.device, dtype=cfg.dtype)
        self.on_batch: Callable[[int], None] = lambda n: None  # the current shard's progress callback
        on_gpu = self.model.device.type == "cuda"
        self.max_batch_tokens = cfg.max_batch_tokens or (GPU_BATCH_TOKENS if on_gpu else CPU_BATCH_TOKENS)

    def __call__(self, batch: ShardBatch) -> ShardBatch:
        errors = [r for r in batch.records if r.error_reason]
        todo = [r for r in batch.records if not r.error_reason]
        batch.on_records(len(errors))
        self.on_batch = batch.on_records
        start = time.perf_counter()
        results: list[tuple[Record, FeatureAttributionSequenceOutput]] = []
        for group in ([r for r in todo if r.target is not None], [r for r in todo if r.target is None]):
            if group:
                ok, bad = self._attribute_isolating_errors(group)
                results += ok
                errors += bad
        batch.results, batch.errors = results, errors
        batch.attribute_seconds = time.perf_counter() - start
        return batch

    def _attribute(self, records: list[Record]) -> list[FeatureAttributionSequenceOutput]:
        cfg = self.cfg
        targets = None if records[0].target is None else [r.target for r in records]
        out = self.model.attribute(
            [r.source for r in records],
            targets,
            attribute_target=cfg.attribute_target,
            step_scores=cfg.step_scores,
            attributed_fn=cfg.attributed_fn,
            batch_size=cfg.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            generation_args=cfg.generation_args,
            show_progress=False,
            progress_callback=self.on_batch,
            aggregate_hidden_fn=None if cfg.save_granular else cfg.aggregate_fn,
            **cfg.method_args,
        )
        for r, text, size in zip(records, out.info["generated_texts"], out.info["batch_sizes"], strict=True):
            r.generated_text, r.generated, r.batch_size = text, targets is None, size
        if cfg.save_granular:
            return out.sequence_attributions
        # objects then hold exactly the scores of the tables (hidden dim already reduced on the device)
        return [seq.aggregate(normalize=cfg.normalize) for seq in out.sequence_attributions]

    def _attribute_isolating_errors(self, records: list[Record]) -> tuple[list, list]:
        """All at once; if that fails, bisect: one bad record costs O(log n) retries, and only it errors."""
        try:
            return list(zip(records, self._attribute(records), strict=True)), []
        except Exception as e:
            if len(records) == 1:
                return [], [
                    dataclasses.replace(records[0], error_reason=str(reason_code(e)), error_message=str(e)[:500])
                ]
        half = len(records) // 2
        ok_a, bad_a = self._attribute_isolating_errors(records[:half])
        ok_b, bad_b = self._attribute_isolating_errors(records[half:])
        return ok_a + ok_b, bad_a + bad_b


def reason_code(e: Exception) -> Reason:
    if isinstance(e, NonFiniteAttributionError):
        return Reason.NON_FINITE
    if isinstance(e, InputError):
        return e.code
    return Reason.BAD_INPUT if isinstance(e, ValueError) else Reason.INTERNAL_ERROR


class WriteObjects:
    """Write one ``sequences/<xx>/<seq_id>.json.gz`` per result (deterministic key: retries overwrite)."""

    needs, provides = ("results",), ("results",)  # fills each record's object_uri / object_bytes

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg, self.storage = cfg, Storage(cfg.output)

    def __call__(self, batch: ShardBatch) -> ShardBatch:
        info = {
            "model_name": self.cfg.model,
            "attribution_method": self.cfg.method,
            "attributed_fn": self.cfg.attributed_fn,
            "step_scores": self.cfg.step_scores,
        }
        items = []
        for record, seq in batch.results:
            one = FeatureAttributionOutput(
                [seq],
                {
                    **info,
                    "seq_id": record.seq_id,
                    "input_texts": [record.source],
                    "generated_texts": [record.generated_text],
                },
            )
            data = to_bytes(one, compress=True, precision=self.cfg.scores_precision)
            items.append((("sequences", record.seq_id[:2], f"{record.seq_id}.json.gz"), data))
            record.object_bytes = len(data)
        uris = self.storage.write_many(items)  # concurrently on object stores
        for (record, _), uri in zip(batch.results, uris, strict=True):
            record.object_uri = uri
        return batch


class CommitShard:
    """Write the shard's table files, then its done marker (the shard's commit point)."""

    needs, provides = ("records", "results", "errors", "attribute_seconds"), ("summary",)

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg, self.storage = cfg, Storage(cfg.output)

    def __call__(self, batch: ShardBatch) -> ShardBatch:
        cfg, shard_id = self.cfg, batch.shard.shard_id
        aggregated = [(r.seq_id, self._aggregate(seq)) for r, seq in batch.results]
        per_seq_seconds = batch.attribute_seconds / max(1, len(batch.results))
        rows = [
            self._sequence_row(r, s, per_seq_seconds) for (r, _), (_, s) in zip(batch.results, aggregated, strict=True)
        ]
        built = {
            "sequences": tables.rows_table(rows, tables.SEQUENCES),
            "source_attributions": tables.attribution_table(aggregated, "source"),
            "target_attributions": tables.attribution_table(aggregated, "target"),
            "step_scores": tables.step_scores_table(aggregated, cfg.step_scores),
            "errors": tables.rows_table([self._error_row(r) for r in batch.errors], tables.ERRORS),
        }
        sizes = {}
        for name, table in built.items():
            data = tables.to_parquet_bytes(table)
            self.storage.write_bytes(data, "tables", name, f"{shard_id}.parquet")
            sizes[name] = len(data)
        summary = ShardSummary(
            shard_id=shard_id,
            records=len(batch.records),
            ok=len(batch.results),
            errors=len(batch.errors),
            target_tokens=sum(s.n_steps for _, s in aggregated),
            rows={name: t.num_rows for name, t in built.items()},
            bytes={**sizes, "objects": sum(r.object_bytes for r, _ in batch.results)},
            attribute_seconds=batch.attribute_seconds,
            input_bytes=batch.shard.size,
        )
        self.storage.write_json(summary.to_dict(), "_shards", f"{shard_id}.json")
        batch.summary = summary
        return batch

    def _aggregate(self, seq: FeatureAttributionSequenceOutput) -> FeatureAttributionSequenceOutput:
        """Granular objects (save_granular) still need reducing; others arrive aggregated by Attribute."""
        if not seq.attribution_dims:
            return seq
        fn = self.cfg.aggregate_fn if seq.attribution_dims == ("hidden",) else None
        return seq.aggregate(fn, normalize=self.cfg.normalize)

    def _sequence_row(self, r: Record, seq: FeatureAttributionSequenceOutput, seconds: float) -> dict:
        return {
            "seq_id": r.seq_id,
            "shard": r.shard,
            "source_file": r.source_file,
            "position": r.position,
            "source_text": r.source,
            "target_text": r.generated_text,
            "source_tokens": [t.token for t in seq.source],
            "target_tokens": [t.token for t in seq.target],
            "source_token_ids": [t.id for t in seq.source],
            "target_token_ids": [t.id for t in seq.target],
            "attr_pos_start": seq.attr_pos_start,
            "attr_pos_end": seq.attr_pos_end,
            "n_steps": seq.n_steps,
            "model": self.cfg.model,
            "method": self.cfg.method,
            "attributed_fn": self.cfg.attributed_fn,
            "generated": r.generated,
            "object_uri": r.object_uri,
            "object_bytes": r.object_bytes,
            "attribute_seconds": seconds,
            "batch_size": r.batch_size,
        }

    @staticmethod
    def _error_row(r: Record) -> dict:
        return {
            "seq_id": r.seq_id,
            "shard": r.shard,
            "source_file": r.source_file,
            "position": r.position,
            "input": r.source[:MAX_INPUT_CHARS],
            "reason": r.error_reason,
            "message": r.error_message,
        }


BLOCKS = (ReadShard, Attribute, WriteObjects, CommitShard)
