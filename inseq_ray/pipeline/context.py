"""Context mode of the pipeline (``--context-column``): PECoRe for every record, on the same blocks, commit
protocol, resume and error rows as any run.

:class:`AttributeContext` replaces ``Attribute`` (the records of a shard go through
:func:`inseq_ray.context.attribute_context` as one batch, a bad record isolated by the same bisection);
:func:`context_tables` replaces the attribution tables at commit: ``sequences`` (a summary per record),
``context_tokens`` (per generated token its CTI score and whether it was selected), ``context_cues`` (per selected
token, every context token's score, with its document for list contexts) and ``errors``. See docs/tables.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from inseq_ray.context.args import ContextArgs
from inseq_ray.context.output import AttributeContextOutput
from inseq_ray.pipeline import tables
from inseq_ray.pipeline.blocks import Attribute
from inseq_ray.pipeline.data import Attributed
from inseq_ray.pipeline.shards import Record


class AttributeContext(Attribute):
    """records -> a stream of (record, AttributeContextOutput) batches; loads the model once."""

    def _attribute(self, records: list[Record]) -> Iterator[Attributed]:
        from inseq_ray.context.procedure import attribute_context

        start = time.perf_counter()
        outs = attribute_context(self.model, [self._example(r) for r in records], batch_size=self.cfg.batch_size)
        assert isinstance(outs, list)
        for record, out in zip(records, outs, strict=True):
            record.generated = record.target is None
            record.generated_text = out.output_current
            if isinstance(record.context, list):  # documents: which one each input-context token comes from
                out.info = {**(out.info or {}), "input_context_documents": self._documents(record.context)}
        yield Attributed(results=list(zip(records, outs, strict=True)), seconds=time.perf_counter() - start)

    def _example(self, r: Record) -> ContextArgs:
        cfg = self.cfg
        return ContextArgs(
            input_current_text=r.source,
            input_context_text=joined_context(r, cfg.document_separator),
            input_template=cfg.input_template,
            output_current_text=r.target,
            attribution_method=cfg.method,
            attributed_fn=cfg.attributed_fn,
            attribution_kwargs=dict(cfg.method_args),
            generation_kwargs=dict(cfg.generation_args),
            context_sensitivity_metric=cfg.context_sensitivity_metric,
            context_sensitivity_std_threshold=cfg.context_sensitivity_std_threshold,
            context_sensitivity_topk=cfg.context_sensitivity_topk,
            add_output_info=False,
        )

    def _documents(self, documents: list[str]) -> list[int | None]:
        """Per token of the joined context, the index of its document, None for separator tokens (token counts of
        growing prefixes)."""
        from inseq_ray.context.procedure import tokens_of

        sep, out = self.cfg.document_separator, list[int | None]()
        for k in range(len(documents)):
            if k:
                out += [None] * (len(tokens_of(self.model, sep.join(documents[:k]) + sep, ())) - len(out))
            out += [k] * (len(tokens_of(self.model, sep.join(documents[: k + 1]), ())) - len(out))
        return out


def joined_context(record: Record, separator: str) -> str:
    """A record's context as one text (documents joined by ``separator``)."""
    context = record.context
    return context if isinstance(context, str) else separator.join(context or [])


def _out(r: tables.RowOf) -> AttributeContextOutput:
    assert isinstance(r.seq, AttributeContextOutput), "context columns are computed for attributed records only"
    return r.seq


def _share(r: tables.RowOf) -> float | None:
    shares = [s for s in (c.context_share for c in _out(r).cci_scores) if s is not None]
    return sum(shares) / len(shares) if shares else None


CONTEXT_SEQUENCE_COLUMNS = (
    *tables.SEQUENCE_COLUMNS[:6],  # seq_id, shard, source_file, position, source_text, target_text
    tables.Column("context_text", pa.string(), lambda r: _out(r).input_context),
    tables.Column(
        "n_documents", pa.int32(), lambda r: len(r.record.context) if isinstance(r.record.context, list) else 1
    ),
    tables.Column("output_tokens", pa.list_(pa.string()), lambda r: _out(r).output_current_tokens),
    tables.Column("n_tokens", pa.int32(), lambda r: len(_out(r).output_current_tokens or [])),
    tables.Column("n_context_sensitive", pa.int32(), lambda r: len(_out(r).cci_scores)),
    tables.Column("context_share", pa.float32(), _share),
    *(c for c in tables.SEQUENCE_COLUMNS if c.name in ("model", "method", "attributed_fn", "generated")),
    *(c for c in tables.SEQUENCE_COLUMNS if c.name in ("object_uri", "object_bytes", "attribute_seconds")),
    *tables.SEQUENCE_COLUMNS[-2:],  # record_id, record_columns
)
CONTEXT_TOKENS = pa.schema(
    [("seq_id", pa.string()), ("step", pa.int32()), ("token", pa.string()), ("cti_score", pa.float32()),
     ("selected", pa.bool_())]
)  # fmt: skip
CONTEXT_CUES = pa.schema(
    [("seq_id", pa.string()), ("step", pa.int32()), ("token", pa.string()), ("cti_score", pa.float32()),
     ("contrast_token", pa.string()), ("side", pa.string()), ("context_pos", pa.int32()),
     ("context_token", pa.string()), ("document", pa.int32()), ("score", pa.float32())]
)  # fmt: skip


def context_tables(results: list, errors: list[Record], run: tables.RunFacts) -> tuple[dict[str, pa.Table], int]:
    """The tables of a context-mode shard, and its generated tokens."""
    rows = [tables.RowOf(r, out, run) for r, out in results]
    built = {
        "sequences": tables.declared_table(CONTEXT_SEQUENCE_COLUMNS, rows),
        "context_tokens": _table(CONTEXT_TOKENS, [row for r, out in results for row in _token_rows(r, out)]),
        "context_cues": _table(CONTEXT_CUES, [row for r, out in results for row in _cue_rows(r, out)]),
        "errors": tables.declared_table(tables.ERROR_COLUMNS, [tables.RowOf(r, None, run) for r in errors]),
    }
    return built, sum(len(out.output_current_tokens or []) for _, out in results)


def _token_rows(record: Record, out: AttributeContextOutput) -> Iterator[tuple]:
    picked = {c.cti_idx for c in out.cci_scores}
    for step, (token, score) in enumerate(zip(out.output_current_tokens or [], out.cti_scores or [], strict=False)):
        yield record.seq_id, step, token, score, step in picked


def _cue_rows(record: Record, out: AttributeContextOutput) -> Iterator[tuple]:
    documents = (out.info or {}).get("input_context_documents")
    for c in out.cci_scores:
        head = (record.seq_id, c.cti_idx, c.cti_token, c.cti_score, c.contrast_token)
        for pos, (token, score) in enumerate(zip(out.input_context_tokens or [], c.input_context_scores or [])):
            document = documents[pos] if documents and pos < len(documents) else (0 if documents is None else None)
            yield (*head, "input", pos, token, document, score)
        for pos, (token, score) in enumerate(zip(out.output_context_tokens or [], c.output_context_scores or [])):
            yield (*head, "output", pos, token, None, score)


def _table(schema: pa.Schema, rows: list[tuple[Any, ...]]) -> pa.Table:
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [() for _ in schema.names]
    return pa.Table.from_arrays(
        [pa.array(list(v), f.type) for v, f in zip(columns, schema, strict=True)], schema=schema
    )
