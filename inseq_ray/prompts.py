"""Prompts built from fields (a template over several columns, chat messages), with where each field lies.

A :class:`Prompt` is the text given to the model and, per field, its character span in that text. Fields:
a template's ``{name}`` values (``fill_template``), a chat's system prompt and messages (``chat_prompt``:
``system``, then ``user[1]``, ``assistant[2]``, ... by message index; a template inside a chat keeps its own
field names). :func:`token_spans` turns the character spans into token spans with the tokenizer's offsets,
and :func:`field_shares` gives, per generated token, the share of the attribution on each field, so "how
much did the answer rely on the context versus the question" is one number per step.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from inseq_ray.errors import InputError, Reason

GENERATED = "generated"  # the field of the tokens after the prompt (decoder-only) or on the target side
OTHER = "other"  # template text, role markers and special tokens: in no field


@dataclass(frozen=True)
class Prompt:
    """text: what the model reads; fields: name -> (start, end) character span of the field's value in it."""

    text: str
    fields: dict[str, tuple[int, int]] = field(default_factory=dict)


def fill_template(template: str, values: Mapping[str, Any], what: str = "prompt_template") -> Prompt:
    """``"Question: {question}\\n\\nContext: {context}"`` and {name: value} -> the prompt and each field's span.

    Every field must be a non-empty string in ``values`` (else :class:`InputError` naming it); ``{{``/``}}`` are
    literal braces; format specs and conversions are refused.
    """
    text, fields = "", {}
    for literal, name, spec, conversion in string.Formatter().parse(template):
        text += literal
        if name is None:
            continue
        if spec or conversion or not name.isidentifier():
            raise InputError(f"{what} {template!r}: use plain {{name}} fields, not {{{name}!{conversion}:{spec}}}.")
        value = values.get(name)
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{what}: field {name!r} is missing or not a non-empty string", Reason.MISSING_COLUMN)
        fields[name] = (len(text), len(text) + len(value))
        text += value
    if not fields:
        raise InputError(f"{what} {template!r} names no {{field}}: give at least one column as {{name}}.")
    return Prompt(text, fields)


def template_fields(template: str) -> list[str]:
    """The field names of a template, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def chat_prompt(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]] | None = None,
    *,
    prompt: str | Prompt | None = None,
    system: str | None = None,
) -> Prompt:
    """The tokenizer's chat template over ``messages`` (role/content dicts), or over ``prompt`` as the user's
    message after an optional ``system`` prompt, with the generation prompt added (the model answers next).

    The text is what the template renders, less a leading BOS the tokenizer adds itself, so that encoding it
    gives exactly the template's own token ids (checked: a mismatch is an :class:`InputError`). Fields: each
    message by role and index (``system``, ``user[1]``, ...); a :class:`Prompt` given as ``prompt`` keeps its
    fields inside the user message.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise InputError(f"{name} has no chat template: drop --chat-template, or use a chat model's tokenizer.")
    inner = Prompt(prompt) if isinstance(prompt, str) else prompt
    if messages is None:
        if inner is None:
            raise InputError("chat_prompt needs messages or a prompt.")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": inner.text}
        ]
    messages = _checked_messages(messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = _without_added_bos(tokenizer, text)
    fields, pos = {}, 0
    for i, m in enumerate(messages):
        start = text.find(m["content"], pos)
        if start < 0:
            raise InputError(f"the chat template does not render message {i} ({m['role']}) as given: cannot place it.")
        pos = start + len(m["content"])
        if inner is not None and m["content"] == inner.text and m["role"] == "user":
            fields.update({k: (start + a, start + b) for k, (a, b) in inner.fields.items()} or {"user": (start, pos)})
        else:
            fields["system" if m["role"] == "system" else f"{m['role']}[{i}]"] = (start, pos)
    _check_template_ids(tokenizer, messages, text)
    return Prompt(text, fields)


def _checked_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputError(f"messages[{i}] is not a {{'role': str, 'content': str}} object", Reason.BAD_INPUT)
        out.append({"role": m["role"], "content": m["content"]})
    if not out:
        raise InputError("no messages: a chat needs at least one", Reason.EMPTY)
    return out


def _without_added_bos(tokenizer: Any, text: str) -> str:
    """``text`` less a leading BOS string when the tokenizer adds BOS itself (no doubled BOS)."""
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
    return text[len(bos) :] if adds_bos and text.startswith(bos) else text


def _check_template_ids(tokenizer: Any, messages: list[dict[str, str]], text: str) -> None:
    """Encoding ``text`` as the engine does must give the template's own ids."""
    ours = tokenizer(text, add_special_tokens=True)["input_ids"]
    theirs = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    theirs = theirs["input_ids"] if isinstance(theirs, Mapping) else theirs
    if list(ours) != list(theirs):
        raise InputError(
            "the chat template's tokens differ from its text encoded with the tokenizer's special tokens "
            f"({len(theirs)} vs {len(ours)} ids): this tokenizer adds tokens a template already has; please report it."
        )


def token_spans(tokenizer: Any, prompt: Prompt) -> dict[str, tuple[int, int]]:
    """name -> [first, last + 1) token positions of each field in ``prompt`` encoded as the engine encodes it
    (with the tokenizer's special tokens); a token belongs to a field when its characters overlap the field's."""
    enc = tokenizer(prompt.text, add_special_tokens=True, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    spans = {}
    for name, (a, b) in prompt.fields.items():
        hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
        if hits:
            spans[name] = (hits[0], hits[-1] + 1)
    return spans


def field_shares(
    scores: torch.Tensor, spans: Mapping[str, tuple[int, int]], prompt_length: int
) -> dict[str, torch.Tensor]:
    """(L, T) attribution scores of the prompt + generated tokens (NaN where a step does not see a token) ->
    name -> (T,) share of |score| on each field per step; ``generated`` (positions >= ``prompt_length``) and
    ``other`` (in no field) complete them: the shares of a step sum to 1 (NaN for a step with no score)."""
    mag = scores.abs().nan_to_num(0.0)  # (L, T)
    total = mag.sum(0)  # (T,)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    covered = torch.zeros(scores.shape[0], dtype=torch.bool)
    out = {}
    for name, (a, b) in spans.items():
        out[name] = mag[a:b].sum(0) / safe
        covered[a:b] = True
    out[GENERATED] = mag[prompt_length:].sum(0) / safe
    covered[prompt_length:] = True
    out[OTHER] = mag[~covered].sum(0) / safe
    empty = total <= 0
    return {k: torch.where(empty, torch.full_like(v, float("nan")), v) for k, v in out.items()}


def sequence_field_shares(seq: Any, spans: Mapping[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
    """One attributed sequence (``FeatureAttributionSequenceOutput``) and its prompt's token spans -> name -> (T,)
    shares per generated token (see :func:`field_shares`). Granular scores are reduced first (Inseq's default
    aggregation); decoder-only: the prompt is the target's first ``attr_pos_start`` tokens; encoder-decoder: the
    spans index the source and the target prefix counts as ``generated``."""
    if seq.attribution_dims:
        seq = seq.aggregate()
    if seq.source_attributions is None:
        return field_shares(seq.target_attributions, spans, seq.attr_pos_start)
    parts = [seq.source_attributions] + ([seq.target_attributions] if seq.target_attributions is not None else [])
    return field_shares(torch.cat(parts, 0), spans, seq.source_attributions.shape[0])
