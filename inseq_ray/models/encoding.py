"""Tokenize texts into a right-padded attribution batch (pure bookkeeping, no model calls).

Right padding keeps every real token at the position it has when the sequence runs alone, so
with causal masking (decoder) and key masking (encoder) batched results equal unbatched ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from inseq_ray.errors import InputError, Reason
from inseq_ray.tokens import TokenWithId

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["EncodedBatch", "InputError", "encode_decoder_only", "encode_encoder_decoder"]


@dataclass
class EncodedBatch:
    """A right-padded batch of B sequences.

    target_ids: (B, L) decoder inputs (enc-dec: start token + target; decoder-only: full text).
    target_mask: (B, L). source_ids/source_mask: (B, S) or None for decoder-only models.
    attr_start/attr_end: (B,) first and one-past-last attributed target positions.
    """

    target_ids: torch.Tensor
    target_mask: torch.Tensor
    attr_start: torch.Tensor
    attr_end: torch.Tensor
    source_tokens: list[list[TokenWithId]] | None
    target_tokens: list[list[TokenWithId]]
    source_ids: torch.Tensor | None = None
    source_mask: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.target_ids.shape[0]

    @property
    def n_steps(self) -> torch.Tensor:
        """(B,) attributed steps per sequence."""
        return self.attr_end - self.attr_start

    def side(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of side ``name`` ("source"/"target"), each (B, S) or (B, L)."""
        if name == "target":
            return self.target_ids, self.target_mask
        if self.source_ids is None or self.source_mask is None:
            raise ValueError("a decoder-only batch has no source side")
        return self.source_ids, self.source_mask

    def to(self, device: torch.device) -> EncodedBatch:
        moved: dict[str, Any] = {k: v.to(device) for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}
        return dataclasses.replace(self, **moved)


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> (B, L) ids and (B, L) mask, right-padded."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


def to_tokens(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> list[TokenWithId]:
    return [TokenWithId(tok, i) for tok, i in zip(tokenizer.convert_ids_to_tokens(ids), ids, strict=True)]


def check_texts(texts: list[str], name: str) -> None:
    """Reject non-strings and empty strings, naming the offending index."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{name}[{i}] is a {type(text).__name__}, not a string: pass text.")
        if not text.strip():
            raise InputError(f"{name}[{i}] is empty: remove it or give it some text to attribute.", Reason.EMPTY)


def check_length(ids: list[int], limit: int | None, name: str, index: int) -> None:
    if limit is not None and len(ids) > limit:
        raise InputError(
            f"{name}[{index}] is {len(ids)} tokens long, over the model's limit of {limit}: shorten or split it.",
            Reason.TOO_LONG,
        )


def resolve_positions(start: int | None, end: int | None, default_start: int, length: int) -> tuple[int, int]:
    """Inseq's ``attr_pos_start``/``attr_pos_end`` (indices into the full target, negatives ok)."""
    s = default_start if start is None else (start + length if start < 0 else start)
    e = length if end is None else (end + length if end < 0 else min(end, length))
    s = max(s, default_start)
    if not default_start <= s < e <= length:
        raise InputError(
            f"attr_pos_start={start}, attr_pos_end={end} select no step of a {length}-token target "
            f"(attributable positions are {default_start}..{length - 1})."
        )
    return s, e


def encode_encoder_decoder(
    tokenizer: PreTrainedTokenizerBase,
    sources: list[str],
    targets: list[str],
    decoder_start_id: int,
    limit: int | None,
    attr_pos: tuple[int | None, int | None] = (None, None),
    target_ids: list[list[int]] | None = None,
    add_special_tokens: bool = True,
) -> EncodedBatch:
    """Sources -> encoder ids; targets -> ``[decoder_start] + target ids`` (EOS included unless
    ``add_special_tokens`` is off: Inseq's ``skip_special_tokens``).

    ``target_ids`` (decoder inputs, start token included) skips re-tokenising generated texts.
    """
    src = tokenizer(sources, add_special_tokens=add_special_tokens)["input_ids"]
    if target_ids is None:
        tgt = tokenizer(text_target=targets, add_special_tokens=add_special_tokens)["input_ids"]
        tgt = [[decoder_start_id, *t] for t in tgt]
    else:
        tgt = [list(t) for t in target_ids]
    for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
        check_length(s, limit, "input_texts", i)
        check_length(t, limit, "generated_texts", i)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    src_ids, src_mask = pad_right(src, pad)
    tgt_ids, tgt_mask = pad_right(tgt, pad)
    spans = [resolve_positions(*attr_pos, 1, len(t)) for t in tgt]
    return EncodedBatch(
        target_ids=tgt_ids,
        target_mask=tgt_mask,
        attr_start=torch.tensor([s for s, _ in spans]),
        attr_end=torch.tensor([e for _, e in spans]),
        source_tokens=[to_tokens(tokenizer, s) for s in src],
        target_tokens=[to_tokens(tokenizer, t) for t in tgt],
        source_ids=src_ids,
        source_mask=src_mask,
    )


def encode_decoder_only(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    targets: list[str],
    limit: int | None,
    attr_pos: tuple[int | None, int | None] = (None, None),
    target_ids: list[list[int]] | None = None,
    add_special_tokens: bool = True,
) -> EncodedBatch:
    """Full texts (prompt + continuation) -> ids; attribution starts after the prompt's tokens (the tokenizer's
    special tokens added unless ``add_special_tokens`` is off: Inseq's ``skip_special_tokens``).

    ``target_ids`` (prompt ids + generated ids) skips re-tokenising generated texts.
    """
    for i, (p, t) in enumerate(zip(prompts, targets, strict=True)):
        if not t.startswith(p):
            raise InputError(
                f"generated_texts[{i}] does not start with input_texts[{i}] ({p[:40]!r}...): for a "
                "decoder-only model the target is the full text, prompt included; prepend the prompt.",
                Reason.TARGET_MISMATCH,
            )
    full = tokenizer(targets, add_special_tokens=add_special_tokens)["input_ids"] if target_ids is None else target_ids
    prompt_lens = [len(p) for p in tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]]
    for i, t in enumerate(full):
        check_length(t, limit, "generated_texts", i)
        if len(t) <= prompt_lens[i] and attr_pos[0] is None:
            raise InputError(
                f"generated_texts[{i}] adds no token to its prompt: give a longer target or "
                "generation_args with max_new_tokens > 0."
            )
    pad = tokenizer.pad_token_id
    pad = pad if pad is not None else (tokenizer.eos_token_id or 0)
    ids, mask = pad_right(full, pad)
    spans = [resolve_positions(*attr_pos, max(n, 1), len(t)) for n, t in zip(prompt_lens, full, strict=True)]
    return EncodedBatch(
        target_ids=ids,
        target_mask=mask,
        attr_start=torch.tensor([s for s, _ in spans]),
        attr_end=torch.tensor([e for _, e in spans]),
        source_tokens=None,
        target_tokens=[to_tokens(tokenizer, t) for t in full],
    )
