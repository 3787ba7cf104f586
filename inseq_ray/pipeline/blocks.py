"""The pipeline's blocks: ``Block(config)`` sets up once, ``__call__(batch) -> batch`` transforms a batch.

They know nothing of Ray: :mod:`inseq_ray.pipeline.runner` runs the same list in a Ray actor or in
a plain loop. A batch is one shard (:class:`~inseq_ray.pipeline.data.ShardBatch`); each block declares
the fields it ``needs`` and ``provides`` (checked when the list is built). A record goes one way:
``ReadShard`` (shard -> records) -> ``Attribute`` (records -> a lazy stream of attributed batches) ->
``WriteObjects`` (pulls the stream, so each batch is written while the next is attributed; -> results and
errors) -> ``CommitShard`` (tables, then the marker). No block calls back into an earlier one.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from inseq_ray.context.output import AttributeContextOutput
from inseq_ray.errors import InputError, NonFiniteAttributionError, Reason
from inseq_ray.memory import batch_token_budget, device_bytes
from inseq_ray.output import FeatureAttributionOutput, FeatureAttributionSequenceOutput
from inseq_ray.pipeline import tables
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.data import Attributed, Output, ShardBatch, ShardSummary
from inseq_ray.pipeline.shards import Record, Shard, check_unchanged, read_shard
from inseq_ray.pipeline.storage import Storage
from inseq_ray.serialization import to_bytes

WRITE_BACKLOG_SLOTS = 8  # attributed batches queued for the writer before attribution waits for storage


class ReadShard:
    """shard -> records (bad lines become records with ``error_reason`` set)."""

    needs, provides = ("shard",), ("records",)

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.prompts = prompt_builder(cfg)

    def __call__(self, batch: ShardBatch) -> ShardBatch:
        batch.records = read_records(self.cfg, batch.shard, self.prompts)
        check_unchanged(batch.shard)  # after the read: a file changed before or during it is refused, naming it
        return batch


def read_records(cfg: PipelineConfig, shard: Shard, prompts: Any = None) -> list[Record]:
    """The records of ``shard`` with every column the configuration asks for (source, target, contrast, id, kept);
    in prompt mode, the source is the prompt built from its fields (``prompts``: a
    :class:`~inseq_ray.pipeline.prompting.PromptBuilder`, made here when not given)."""
    contrast = (cfg.contrast_column, cfg.contrast_source_column)
    source = cfg.source_column
    fields: tuple[str, ...] = ()
    if cfg.prompt_mode:
        from inseq_ray.pipeline.prompting import prompt_columns

        source, fields = prompt_columns(cfg)
    columns = (source, cfg.target_column, contrast, cfg.id_column, cfg.keep_columns, cfg.context_column, fields)
    records = list(read_shard(shard, *columns))
    if not cfg.prompt_mode:
        return records
    return (prompts or prompt_builder(cfg))(records)


def prompt_builder(cfg: PipelineConfig) -> Any:
    """Prompt mode's builder (it loads the tokenizer), or None."""
    if not cfg.prompt_mode:
        return None
    from inseq_ray.pipeline.prompting import PromptBuilder

    return PromptBuilder(cfg)


def placement(cfg: PipelineConfig) -> dict:
    """load_model's device arguments in this process: a ``device_map`` over the GPUs Ray gave the actor when there
    are several (or one was asked for), else one device."""
    import torch

    device_map = cfg.device_map
    if device_map is None and cfg.device is None and torch.cuda.device_count() > 1:
        device_map = "auto"
    return {"device_map": device_map} if device_map is not None else {"device": cfg.device}


class Attribute:
    """records -> a stream of attributed batches (:class:`Attributed`: (record, aggregated output) pairs and error
    rows), produced lazily as the next block pulls it. Loads the model once."""

    needs, provides = ("records",), ("attributed",)

    def __init__(self, cfg: PipelineConfig) -> None:
        from transformers.utils import logging as hf_logging

        import inseq_ray

        hf_logging.disable_progress_bar()  # this process is ours (an actor or the CLI): keep logs readable
        self.cfg = cfg
        self.model = inseq_ray.load_model(cfg.model, cfg.method, dtype=cfg.dtype, **placement(cfg))
        self.max_batch_tokens = batch_token_budget(
            cfg.max_batch_tokens, cfg.method, self.model, device_bytes(self.model)
        )

    def __call__(self, batch: ShardBatch) -> ShardBatch:
        batch.attributed = self._stream(batch.records)
        return batch

    def _stream(self, records: list[Record]) -> Iterator[Attributed]:
        """The records read as errors first, then forced targets, then generated ones, batch by batch."""
        yield Attributed(errors=[r for r in records if r.error_reason])
        todo = [r for r in records if not r.error_reason]
        for group in ([r for r in todo if r.target is not None], [r for r in todo if r.target is None]):
            if group:
                yield from self._isolating_errors(group)

    def _isolating_errors(self, records: list[Record]) -> Iterator[Attributed]:
        """All at once; if that fails, bisect: one bad record costs O(log n) retries, and only it errors. Batches
        yielded before a failure come again from the retries (the last word on a record counts)."""
        try:
            yield from self._attribute(records)
            return
        except Exception as e:
            if len(records) == 1:
                reason, message = str(reason_code(e)), str(e)[:500]
                yield Attributed(errors=[dataclasses.replace(records[0], error_reason=reason, error_message=message)])
                return
        half = len(records) // 2
        yield from self._isolating_errors(records[:half])
        yield from self._isolating_errors(records[half:])

    def _attribute(self, records: list[Record]) -> Iterator[Attributed]:
        cfg = self.cfg
        targets = None if records[0].target is None else [r.target for r in records]
        contrast: dict[str, Any] = {}
        if cfg.contrast_column:
            contrast["contrast_targets"] = [r.contrast_target for r in records]
        if cfg.contrast_source_column:
            contrast["contrast_sources"] = [r.contrast_source for r in records]
        start = time.perf_counter()
        stream = self.model.attribute_stream(
            [r.source for r in records],
            targets,
            attribute_target=cfg.attribute_target,
            step_scores=cfg.step_scores,
            attributed_fn=cfg.attributed_fn,
            batch_size=cfg.batch_size,
            max_batch_tokens=self.max_batch_tokens,
            generation_args=cfg.generation_args,
            show_progress=False,
            record_keys=[r.seq_id for r in records],  # a record's random draws depend on it alone
            aggregate_hidden_fn=None if cfg.save_granular else cfg.aggregate_fn,
            normalize=cfg.normalize and not cfg.save_granular,  # batched on the device, not per sequence
            **contrast,
            **cfg.method_args,
        )
        for size, idx, seqs in stream:
            done = self._done([records[i] for i in idx], [self._finish(seq) for seq in seqs], size)
            yield Attributed(results=done, seconds=time.perf_counter() - start)
            start = time.perf_counter()  # the time the consumer spent is not attribution

    def _done(self, records: list[Record], seqs: list[FeatureAttributionSequenceOutput], size: int) -> list:
        """One attributed batch's records filled in (generated text, batch size) and paired with their outputs."""
        decoded = iter(
            self.model.tokenizer.batch_decode(
                [[t.id for t in seq.target] for r, seq in zip(records, seqs, strict=True) if r.target is None],
                skip_special_tokens=True,
            )
        )  # the generated texts as ``generate`` returns them (decoder-only: prompt included)
        for r in records:
            r.generated = r.target is None
            r.generated_text = next(decoded) if r.generated else r.target
            r.batch_size = size
        return list(zip(records, seqs, strict=True))

    def _finish(self, seq: FeatureAttributionSequenceOutput) -> FeatureAttributionSequenceOutput:
        """Objects hold exactly the scores of the tables: gradient outputs arrive reduced and normalised on the
        device; attention outputs (layers, heads) are reduced here."""
        if self.cfg.save_granular or not seq.attribution_dims:
            return seq
        return seq.aggregate(normalize=self.cfg.normalize)


def reason_code(e: Exception) -> Reason:
    if isinstance(e, NonFiniteAttributionError):
        return Reason.NON_FINITE
    if isinstance(e, InputError):
        return e.code
    return Reason.BAD_INPUT if isinstance(e, ValueError) else Reason.INTERNAL_ERROR


class WriteObjects:
    """Pulls the shard's attributed batches and writes one ``sequences/<xx>/<seq_id>.json.gz`` per result
    (deterministic key: retries overwrite); then the shard's results and errors are final.

    Each batch goes to a writer thread (concurrent PUTs on object stores) while the next one is pulled, that is
    attributed: writing overlaps attribution. At most :data:`WRITE_BACKLOG_SLOTS` batches wait, so attribution
    only waits when storage falls that far behind. Every write ends before this returns (the commit comes
    after them), and objects of records that ended up as errors are removed.
    """

    needs, provides = ("records", "attributed"), ("results", "errors", "attribute_seconds")

    def __init__(self, cfg: PipelineConfig) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.cfg, self.storage = cfg, Storage(cfg.output, cfg.storage_attempts)
        self.info = {
            "model_name": cfg.model,
            "attribution_method": cfg.method,
            "attributed_fn": cfg.attributed_fn,
            "step_scores": cfg.step_scores,
        }
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="object-writer")
        self.backlog = threading.BoundedSemaphore(WRITE_BACKLOG_SLOTS)

    def __call__(self, batch: ShardBatch) -> ShardBatch:
        last: dict[str, tuple[Record, Output | None]] = {}  # seq_id -> last word
        written: dict[str, tuple[str, int]] = {}  # seq_id -> (uri, bytes)
        pending: list = []
        try:
            for chunk in batch.attributed:
                batch.attribute_seconds += chunk.seconds
                batch.on_records(len(chunk.results) + len(chunk.errors))
                last.update({r.seq_id: (r, None) for r in chunk.errors})
                last.update({r.seq_id: (r, seq) for r, seq in chunk.results})
                if chunk.results:
                    pending.append(self._submit(chunk.results, written, batch))
            start = time.perf_counter()
            for future in pending:
                future.result()  # re-raises a write's StorageError here, before anything commits
            batch.write_seconds += time.perf_counter() - start
        finally:
            for future in pending:  # on error: nothing of this shard is written after it
                future.cancel()
        order = {r.seq_id: i for i, r in enumerate(batch.records)}
        outcomes = sorted(last.values(), key=lambda pair: order.get(pair[0].seq_id, len(order)))
        batch.results = [(r, seq) for r, seq in outcomes if seq is not None]
        batch.errors = [r for r, seq in outcomes if seq is None]
        for seq_id in set(written) - {r.seq_id for r, _ in batch.results}:  # written, then failed on a retry
            self.storage.delete("sequences", seq_id[:2], f"{seq_id}.json.gz")
        for record, _ in batch.results:
            record.object_uri, record.object_bytes = written[record.seq_id]
        return batch

    def _submit(self, pairs: list, written: dict[str, tuple[str, int]], batch: ShardBatch):
        """Queue one batch for the writer thread; waits only when WRITE_BACKLOG_SLOTS batches are still queued."""
        start = time.perf_counter()
        self.backlog.acquire()
        batch.write_seconds += time.perf_counter() - start
        future = self.pool.submit(self._write, pairs, written)
        future.add_done_callback(lambda _: self.backlog.release())
        return future

    def _write(self, pairs: list, written: dict[str, tuple[str, int]]) -> None:
        """Serialise and write one batch of objects (on the writer thread, off the attribution path)."""
        items = [(self._key(r), self._bytes(r, seq)) for r, seq in pairs]
        for (parts, data), uri in zip(items, self.storage.write_many(items), strict=True):
            written[parts[-1].removesuffix(".json.gz")] = (uri, len(data))

    @staticmethod
    def _key(record: Record) -> tuple[str, str, str]:
        return ("sequences", record.seq_id[:2], f"{record.seq_id}.json.gz")

    def _bytes(self, record: Record, seq: FeatureAttributionSequenceOutput | AttributeContextOutput) -> bytes:
        if isinstance(seq, AttributeContextOutput):  # context mode: Inseq's AttributeContextOutput JSON, gzipped
            return gzip.compress(json.dumps({"seq_id": record.seq_id, **seq.to_dict()}).encode())
        info = {
            **self.info,
            "seq_id": record.seq_id,
            "input_texts": [record.source],
            "generated_texts": [record.generated_text],
        }
        return to_bytes(FeatureAttributionOutput([seq], info), compress=True, precision=self.cfg.scores_precision)


class CommitShard:
    """Write the shard's table files, then its done marker (the shard's commit point)."""

    needs, provides = ("records", "results", "errors", "attribute_seconds"), ("summary",)

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg, self.storage = cfg, Storage(cfg.output, cfg.storage_attempts)
        self.fingerprint = cfg.fingerprint()
        self.worker, self.node = worker_identity()
        self.build = self._attribution_tables
        if cfg.context_column is not None:
            from inseq_ray.pipeline.context import context_tables

            self.build = context_tables

    def __call__(self, batch: ShardBatch) -> ShardBatch:
        cfg, shard_id = self.cfg, batch.shard.shard_id
        per_seq_seconds = batch.attribute_seconds / max(1, len(batch.results))
        run = tables.RunFacts(cfg.model, cfg.method, cfg.attributed_fn, per_seq_seconds)
        built, target_tokens = self.build(batch.results, batch.errors, run)
        sizes = {}
        start = time.perf_counter()
        for name, table in built.items():
            data = tables.to_parquet_bytes(table)
            self.storage.write_bytes(data, "tables", name, f"{shard_id}.parquet")
            sizes[name] = len(data)
        reasons: dict[str, int] = {}
        examples: dict[str, str] = {}
        for r in batch.errors:
            reasons[r.error_reason] = reasons.get(r.error_reason, 0) + 1
            examples.setdefault(r.error_reason, r.error_message[:300])
        summary = ShardSummary(
            shard_id=shard_id,
            records=len(batch.records),
            ok=len(batch.results),
            errors=len(batch.errors),
            target_tokens=target_tokens,
            rows={name: t.num_rows for name, t in built.items()},
            bytes={**sizes, "objects": sum(r.object_bytes for r, _ in batch.results)},
            attribute_seconds=batch.attribute_seconds,
            input_bytes=batch.shard.size,
            fingerprint=self.fingerprint,
            errors_by_reason=reasons,
            error_examples=examples,
            started_at=batch.started_at,
            finished_at=time.time(),
            write_seconds=batch.write_seconds + time.perf_counter() - start,
            worker=self.worker,
            node=self.node,
        )
        self.storage.write_json(summary.to_dict(), "_shards", f"{shard_id}.json")
        batch.summary = summary
        return batch

    def _attribution_tables(self, results: list, errors: list[Record], run: tables.RunFacts) -> tuple[dict, int]:
        """The five tables of an attribution run, and the shard's attributed target tokens."""
        aggregated = [(r.seq_id, self._aggregate(seq)) for r, seq in results]
        rows = [tables.RowOf(r, seq, run) for (r, _), (_, seq) in zip(results, aggregated, strict=True)]
        built = {
            "sequences": tables.declared_table(tables.SEQUENCE_COLUMNS, rows),
            "source_attributions": tables.attribution_table(aggregated, "source"),
            "target_attributions": tables.attribution_table(aggregated, "target"),
            "step_scores": tables.step_scores_table(aggregated, self.cfg.step_scores),
            "errors": tables.declared_table(tables.ERROR_COLUMNS, [tables.RowOf(r, None, run) for r in errors]),
        }
        if self.cfg.prompt_mode:
            from inseq_ray.pipeline.prompting import field_shares_table

            built["field_shares"] = field_shares_table([(r, s) for (r, _), (_, s) in zip(results, aggregated)])
        return built, sum(s.n_steps for _, s in aggregated)

    def _aggregate(self, seq: FeatureAttributionSequenceOutput) -> FeatureAttributionSequenceOutput:
        """Granular objects (save_granular) still need reducing; others arrive aggregated by Attribute."""
        if not seq.attribution_dims:
            return seq
        fn = self.cfg.aggregate_fn if seq.attribution_dims == ("hidden",) else None
        return seq.aggregate(fn, normalize=self.cfg.normalize)


def worker_identity() -> tuple[str, str]:
    """("host:pid", Ray node id or "") of this process, for the markers (throughput per node, failures)."""
    import os
    import socket

    node = ""
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id() or ""
    except Exception:  # not under Ray, or Ray without a runtime context here
        node = ""
    return f"{socket.gethostname()}:{os.getpid()}", node


BLOCKS = (ReadShard, Attribute, WriteObjects, CommitShard)


def blocks_for(cfg: PipelineConfig) -> tuple:
    """The block list of a run: :data:`BLOCKS`, or in context mode (``context_column``) the same list with
    :class:`~inseq_ray.pipeline.context.AttributeContext` attributing."""
    if cfg.context_column is None:
        return BLOCKS
    from inseq_ray.pipeline.context import AttributeContext

    return (ReadShard, AttributeContext, WriteObjects, CommitShard)
