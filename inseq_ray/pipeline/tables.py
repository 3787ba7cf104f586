"""Arrow schemas of the run's Parquet tables, and sequence outputs -> long-format record batches.

Tables (one Parquet file per shard under ``tables/<name>/``):
- ``sequences``: one row per attributed sequence.
- ``source_attributions`` / ``target_attributions``: one row per (sequence, step, attributed token).
- ``step_scores``: one row per generated token, one column per step score.
- ``errors``: one row per record that could not be attributed.
Column meanings are documented in docs/tables.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from inseq_ray.context.output import AttributeContextOutput
from inseq_ray.output import FeatureAttributionSequenceOutput
from inseq_ray.pipeline.shards import Record, escape_unencodable

MAX_INPUT_CHARS = 1000  # error rows keep at most this much of the offending input


class RowOf(NamedTuple):
    """What one row of ``sequences`` or ``errors`` is computed from."""

    record: Record
    seq: FeatureAttributionSequenceOutput | AttributeContextOutput | None  # None for an error row
    run: RunFacts


class RunFacts(NamedTuple):
    """Per-shard facts shared by the rows: the run's settings and the shard's seconds per sequence."""

    model: str
    method: str
    attributed_fn: str
    seconds_per_sequence: float = 0.0


@dataclass(frozen=True)
class Column:
    """One table column, declared once: its name, its Arrow type and how a row's value is computed (the schema
    and the extraction both come from these declarations; docs/tables.md documents each name, a test checks)."""

    name: str
    type: pa.DataType
    value: Callable[[RowOf], Any]


def _seq(r: RowOf) -> FeatureAttributionSequenceOutput:
    assert isinstance(r.seq, FeatureAttributionSequenceOutput), "sequence columns are computed for attributed records"
    return r.seq


def _tokens(side: str, part: str) -> Callable[[RowOf], list]:
    return lambda r: [getattr(t, part) for t in getattr(_seq(r), side)]


SEQUENCE_COLUMNS = (
    Column("seq_id", pa.string(), lambda r: r.record.seq_id),
    Column("shard", pa.string(), lambda r: r.record.shard),
    Column("source_file", pa.string(), lambda r: r.record.source_file),
    Column("position", pa.int64(), lambda r: r.record.position),
    Column("source_text", pa.string(), lambda r: r.record.source),
    Column("target_text", pa.string(), lambda r: r.record.generated_text),
    Column("source_tokens", pa.list_(pa.string()), _tokens("source", "token")),
    Column("target_tokens", pa.list_(pa.string()), _tokens("target", "token")),
    Column("source_token_ids", pa.list_(pa.int32()), _tokens("source", "id")),
    Column("target_token_ids", pa.list_(pa.int32()), _tokens("target", "id")),
    Column("attr_pos_start", pa.int32(), lambda r: _seq(r).attr_pos_start),
    Column("attr_pos_end", pa.int32(), lambda r: _seq(r).attr_pos_end),
    Column("n_steps", pa.int32(), lambda r: _seq(r).n_steps),
    Column("model", pa.string(), lambda r: r.run.model),
    Column("method", pa.string(), lambda r: r.run.method),
    Column("attributed_fn", pa.string(), lambda r: r.run.attributed_fn),
    Column("generated", pa.bool_(), lambda r: r.record.generated),
    Column("object_uri", pa.string(), lambda r: r.record.object_uri),
    Column("object_bytes", pa.int64(), lambda r: r.record.object_bytes),
    Column("attribute_seconds", pa.float32(), lambda r: r.run.seconds_per_sequence),
    Column("batch_size", pa.int32(), lambda r: r.record.batch_size),
    Column("contrast_text", pa.string(), lambda r: r.record.contrast_target),
    Column("contrast_source_text", pa.string(), lambda r: r.record.contrast_source),
    Column("record_id", pa.string(), lambda r: r.record.record_id),
    Column("record_columns", pa.string(), lambda r: r.record.record_columns),
)
ERROR_COLUMNS = (
    *SEQUENCE_COLUMNS[:4],  # seq_id, shard, source_file, position
    Column("input", pa.string(), lambda r: r.record.source[:MAX_INPUT_CHARS]),
    Column("reason", pa.string(), lambda r: r.record.error_reason),
    Column("message", pa.string(), lambda r: r.record.error_message),
    *SEQUENCE_COLUMNS[-2:],  # record_id, record_columns
)


def schema_of(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([(c.name, c.type) for c in columns])


SEQUENCES = schema_of(SEQUENCE_COLUMNS)
ERRORS = schema_of(ERROR_COLUMNS)
ATTRIBUTIONS = pa.schema(
    [
        ("seq_id", pa.string()),
        ("step", pa.int32()),
        ("target_pos", pa.int32()),
        ("target_token", pa.string()),
        ("attributed_pos", pa.int32()),
        ("attributed_token", pa.string()),
        ("score", pa.float32()),
    ]
)


def declared_table(columns: tuple[Column, ...], rows: list[RowOf]) -> pa.Table:
    """Rows -> the table of ``columns`` (values computed by each column's declaration)."""
    return columns_table({c.name: [c.value(r) for r in rows] for c in columns}, schema_of(columns))


STEP_SCORES_BASE = [
    ("seq_id", pa.string()),
    ("step", pa.int32()),
    ("target_pos", pa.int32()),
    ("target_token", pa.string()),
]


def step_scores_schema(names: list[str]) -> pa.Schema:
    return pa.schema(STEP_SCORES_BASE + [(n, pa.float32()) for n in names])


def attribution_table(seqs: list[tuple[str, FeatureAttributionSequenceOutput]], which: str) -> pa.Table:
    """Long format of aggregated (tokens, steps) matrices; NaN cells (future tokens) are skipped.

    Built column-wise: per sequence only numpy index arrays; token strings are gathered once per table with
    ``take`` over each sequence's token list (no Python loop over cells).
    """
    seq_ids, steps, rows, scores = [], [], [], []
    starts, tok_offsets, gen_offsets = [], [], []
    tokens_all: list[str] = []
    generated_all: list[str] = []
    for seq_id, seq in seqs:
        m = getattr(seq, f"{which}_attributions")
        if m is None:
            continue
        matrix = m.numpy()  # (tokens, steps)
        r, s = np.nonzero(~np.isnan(matrix))
        seq_ids.append(seq_id)
        rows.append(r)
        steps.append(s)
        scores.append(matrix[r, s])
        starts.append(seq.attr_pos_start)
        tok_offsets.append(len(tokens_all))
        gen_offsets.append(len(generated_all))
        tokens_all += [t.token for t in (seq.source if which == "source" else seq.target)]
        generated_all += [t.token for t in seq.generated]
    if not seq_ids:
        return ATTRIBUTIONS.empty_table()
    counts = np.array([len(r) for r in rows])
    owner = np.repeat(np.arange(len(seq_ids)), counts)  # (cells,) index of each cell's sequence
    step = np.concatenate(steps)
    row = np.concatenate(rows)
    cols = {
        "seq_id": pa.array(seq_ids, pa.string()).take(owner),
        "step": step.astype(np.int32),
        "target_pos": (step + np.array(starts)[owner]).astype(np.int32),
        "target_token": pa.array(generated_all, pa.string()).take(step + np.array(gen_offsets)[owner]),
        "attributed_pos": row.astype(np.int32),
        "attributed_token": pa.array(tokens_all, pa.string()).take(row + np.array(tok_offsets)[owner]),
        "score": np.concatenate(scores).astype(np.float32),
    }
    return pa.Table.from_pydict(cols, schema=ATTRIBUTIONS)


def step_scores_table(seqs: list[tuple[str, FeatureAttributionSequenceOutput]], names: list[str]) -> pa.Table:
    """One row per generated token, one float column per step score (built column-wise, as above)."""
    schema = step_scores_schema(names)
    if not seqs:
        return schema.empty_table()
    counts = np.array([seq.n_steps for _, seq in seqs])
    owner = np.repeat(np.arange(len(seqs)), counts)  # (steps,) index of each row's sequence
    step = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = {
        "seq_id": pa.array([seq_id for seq_id, _ in seqs], pa.string()).take(owner),
        "step": step.astype(np.int32),
        "target_pos": (step + np.array([seq.attr_pos_start for _, seq in seqs])[owner]).astype(np.int32),
        "target_token": pa.array([t.token for _, seq in seqs for t in seq.generated], pa.string()),
    }
    for name in names:
        cols[name] = np.concatenate([seq.step_scores[name].numpy() for _, seq in seqs]).astype(np.float32)
    return pa.Table.from_pydict(cols, schema=schema)


def columns_table(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    """Columns -> table; text UTF-8 cannot encode (lone surrogates) is backslash-escaped, so no value can stop
    a shard."""
    try:
        return pa.Table.from_pydict(columns, schema=schema)
    except (UnicodeEncodeError, pa.ArrowInvalid):  # rare: escape, then build (the fast path skips this scan)
        return pa.Table.from_pydict({k: [_encodable(v) for v in col] for k, col in columns.items()}, schema=schema)


def _encodable(value):
    if isinstance(value, str):
        return escape_unencodable(value)
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [escape_unencodable(v) for v in value]
    return value


def to_parquet_bytes(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
