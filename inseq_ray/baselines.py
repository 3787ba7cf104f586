"""Baseline token ids of a batch (Inseq's default): UNK everywhere, EOS kept unless ``include_eos_baseline``,
the decoder start token kept in an encoder-decoder's target."""

from __future__ import annotations

import torch

from inseq_ray.models.encoding import EncodedBatch


def baseline_ids(tokenizer, ids: torch.Tensor, include_eos_baseline: bool) -> torch.Tensor:
    """(B, L) ids -> baseline ids: UNK (else PAD, else 0) everywhere, EOS kept unless ``include_eos_baseline``."""
    unk = next(i for i in (tokenizer.unk_token_id, tokenizer.pad_token_id, 0) if i is not None)
    base = torch.full_like(ids, unk)
    if not include_eos_baseline and tokenizer.eos_token_id is not None:
        base = torch.where(ids == tokenizer.eos_token_id, ids, base)
    return base


def batch_baselines(tokenizer, batch: EncodedBatch, include_eos_baseline: bool) -> dict[str, torch.Tensor]:
    """name ("source"/"target") -> (B, L) baseline ids of ``batch``."""
    out = {"target": baseline_ids(tokenizer, batch.target_ids, include_eos_baseline)}
    if batch.source_ids is not None:  # encoder-decoder: the decoder start token stays, as in Inseq
        out["target"][:, 0] = batch.target_ids[:, 0]
        out["source"] = baseline_ids(tokenizer, batch.source_ids, include_eos_baseline)
    return out
