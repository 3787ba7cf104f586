"""Prompt mode (``--prompt-template``, ``--chat-template``, ``--messages-column``): each record's prompt built from
its fields, with the token span of each field, and the ``field_shares`` table (per generated token, the share of
the attribution on each field).

Prompts are built right after reading, so every later block (the dry-run's estimate too) sees the prompt as the
record's source; a record whose fields cannot make a prompt (a missing column, malformed messages) is an error row.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from inseq_ray.errors import InputError, Reason
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.shards import Record
from inseq_ray.prompts import Prompt, chat_prompt, fill_template, sequence_field_shares, template_fields, token_spans

FIELD_SHARES_SCHEMA = pa.schema(
    [
        ("seq_id", pa.string()),
        ("step", pa.int32()),
        ("token", pa.string()),
        ("field", pa.string()),
        ("share", pa.float32()),
    ]
)


def prompt_columns(cfg: PipelineConfig) -> tuple[str, tuple[str, ...]]:
    """(the column the reader treats as the source, every column a prompt is built from)."""
    if cfg.messages_column:
        return cfg.messages_column, (cfg.messages_column,)
    if cfg.prompt_template:
        fields = tuple(dict.fromkeys(template_fields(cfg.prompt_template)))
        return fields[0], fields
    return cfg.source_column, (cfg.source_column,)


class PromptBuilder:
    """records -> the same records with ``source`` = the prompt and ``prompt_spans`` = its fields' token spans."""

    def __init__(self, cfg: PipelineConfig) -> None:
        from inseq_ray.models.loading import load_tokenizer, resolve_model_ref

        self.cfg = cfg
        self.tokenizer = load_tokenizer(resolve_model_ref(cfg.model), None)

    def __call__(self, records: list[Record]) -> list[Record]:
        for r in records:
            if r.error_reason:
                continue
            try:
                prompt = self.prompt(r.fields or {})
            except InputError as e:
                r.error_reason, r.error_message = str(e.code or Reason.BAD_INPUT), str(e)
                continue
            r.source, r.prompt_spans = prompt.text, token_spans(self.tokenizer, prompt)
        return records

    def prompt(self, fields: dict[str, Any]) -> Prompt:
        cfg = self.cfg
        if cfg.messages_column:
            return chat_prompt(self.tokenizer, _messages(fields.get(cfg.messages_column), cfg.messages_column))
        inner = fill_template(cfg.prompt_template, fields) if cfg.prompt_template else _plain(fields, cfg.source_column)
        if cfg.chat_template:
            return chat_prompt(self.tokenizer, prompt=inner, system=cfg.system_prompt)
        return inner


def _plain(fields: dict[str, Any], column: str) -> Prompt:
    text = fields.get(column)
    if not isinstance(text, str):
        raise InputError(f"no string column {column!r}", Reason.MISSING_COLUMN)
    return Prompt(text, {column: (0, len(text))})


def _messages(value: Any, column: str) -> list:
    """A chat's messages: a list of {role, content} (JSON text is parsed)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, list):
        raise InputError(f"column {column!r} holds no list of chat messages", Reason.MISSING_COLUMN)
    return value


def field_shares_table(results: list) -> pa.Table:
    """One row per (record, generated token, field): the share of the step's |attribution| on that field."""
    rows: dict[str, list] = {name: [] for name in FIELD_SHARES_SCHEMA.names}
    for record, seq in results:
        shares = sequence_field_shares(seq, record.prompt_spans or {})
        tokens = [t.token for t in seq.target[seq.attr_pos_start : seq.attr_pos_end]]
        for name, values in shares.items():
            for step, value in enumerate(values.tolist()):
                rows["seq_id"].append(record.seq_id)
                rows["step"].append(step)
                rows["token"].append(tokens[step])
                rows["field"].append(name)
                rows["share"].append(value)
    return pa.Table.from_pydict(rows, schema=FIELD_SHARES_SCHEMA)
