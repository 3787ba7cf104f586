"""Arrow schemas of the run's Parquet tables, and sequence outputs -> long-format record batches.

Tables (one Parquet file per shard under ``tables/<name>/``):
- ``sequences``: one row per attributed sequence.
- ``source_attributions`` / ``target_attributions``: one row per (sequence, step, attributed token).
- ``step_scores``: one row per generated token, one column per step score.
- ``errors``: one row per record that could not be attributed.
Column meanings are documented in docs/tables.md.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from inseq_ray.output import FeatureAttributionSequenceOutput
from inseq_ray.pipeline.shards import escape_unencodable

SEQUENCES = pa.schema(
    [
        ("seq_id", pa.string()),
        ("shard", pa.string()),
        ("source_file", pa.string()),
        ("position", pa.int64()),
        ("source_text", pa.string()),
        ("target_text", pa.string()),
        ("source_tokens", pa.list_(pa.string())),
        ("target_tokens", pa.list_(pa.string())),
        ("source_token_ids", pa.list_(pa.int32())),
        ("target_token_ids", pa.list_(pa.int32())),
        ("attr_pos_start", pa.int32()),
        ("attr_pos_end", pa.int32()),
        ("n_steps", pa.int32()),
        ("model", pa.string()),
        ("method", pa.string()),
        ("attributed_fn", pa.string()),
        ("generated", pa.bool_()),
        ("object_uri", pa.string()),
        ("object_bytes", pa.int64()),
        ("attribute_seconds", pa.float32()),
        ("batch_size", pa.int32()),
    ]
)
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
ERRORS = pa.schema(
    [
        ("seq_id", pa.string()),
        ("shard", pa.string()),
        ("source_file", pa.string()),
        ("position", pa.int64()),
        ("input", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
    ]
)
STEP_SCORES_BASE = [
    ("seq_id", pa.string()),
    ("step", pa.int32()),
    ("target_pos", pa.int32()),
    ("target_token", pa.string()),
]


def step_scores_schema(names: list[str]) -> pa.Schema:
    return pa.schema(STEP_SCORES_BASE + [(n, pa.float32()) for n in names])


def attribution_table(seqs: list[tuple[str, FeatureAttributionSequenceOutput]], which: str) -> pa.Table:
    """Long format of aggregated (tokens, steps) matrices; NaN cells (future tokens) are skipped."""
    cols: dict[str, list] = {f.name: [] for f in ATTRIBUTIONS}
    for seq_id, seq in seqs:
        m = getattr(seq, f"{which}_attributions")
        if m is None:
            continue
        tokens = seq.source if which == "source" else seq.target
        scores = m.numpy()  # (tokens, steps)
        rows, steps = np.nonzero(~np.isnan(scores))
        gen = seq.generated
        cols["seq_id"] += [seq_id] * len(rows)
        cols["step"] += steps.tolist()
        cols["target_pos"] += (steps + seq.attr_pos_start).tolist()
        cols["target_token"] += [gen[s].token for s in steps]
        cols["attributed_pos"] += rows.tolist()
        cols["attributed_token"] += [tokens[r].token for r in rows]
        cols["score"] += scores[rows, steps].tolist()
    return pa.Table.from_pydict(cols, schema=ATTRIBUTIONS)


def step_scores_table(seqs: list[tuple[str, FeatureAttributionSequenceOutput]], names: list[str]) -> pa.Table:
    schema = step_scores_schema(names)
    cols: dict[str, list] = {f.name: [] for f in schema}
    for seq_id, seq in seqs:
        n = seq.n_steps
        cols["seq_id"] += [seq_id] * n
        cols["step"] += list(range(n))
        cols["target_pos"] += list(range(seq.attr_pos_start, seq.attr_pos_end))
        cols["target_token"] += [t.token for t in seq.generated]
        for name in names:
            cols[name] += seq.step_scores[name].tolist()
    return pa.Table.from_pydict(cols, schema=schema)


def rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows -> table; text UTF-8 cannot encode (lone surrogates) is backslash-escaped, so no value can stop a shard."""
    try:
        return pa.Table.from_pylist(rows, schema=schema)
    except (UnicodeEncodeError, pa.ArrowInvalid):  # rare: escape, then build (the fast path skips this scan)
        return pa.Table.from_pylist([{k: _encodable(v) for k, v in row.items()} for row in rows], schema=schema)


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
