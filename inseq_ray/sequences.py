"""From the engine's batched device tensors to per-sequence outputs (beside the engine; pure but for one copy)."""

from __future__ import annotations

import torch

from inseq_ray.engine import MethodResult
from inseq_ray.errors import NonFiniteAttributionError
from inseq_ray.models.encoding import EncodedBatch
from inseq_ray.output import FeatureAttributionSequenceOutput


def reduce_hidden_on_device(result: MethodResult, fn_id: str) -> MethodResult:
    """(T, B, L, H) -> (T, B, L) with an aggregation function, before anything is copied to the host."""
    from inseq_ray.aggregation import AGGREGATION_FUNCTIONS
    from inseq_ray.registry import lookup

    fn = lookup(AGGREGATION_FUNCTIONS, fn_id, "aggregation function")
    reduced = {k: fn(v, dim=-1) for k, v in result.attributions.items()}
    return MethodResult(reduced, result.step_scores, dims=())


def normalize_on_device(result: MethodResult, batch: EncodedBatch) -> MethodResult:
    """(T, B, L) reduced scores -> each (step, row) divided by its total |score| over real, visible tokens.

    The batched form of :func:`inseq_ray.aggregation.normalize_steps` on each split sequence: source tokens
    count where ``source_mask`` is set, target tokens where ``l < attr_start + t`` (already generated) and
    ``l < target length``; a zero total divides by 1. Padding and future cells are left as they are (the
    split drops or NaN-masks them).
    """
    total = None
    for part, scores in result.attributions.items():  # (T, B, L)
        steps, _, length = scores.shape
        positions = torch.arange(length, device=scores.device)
        if part == "source":
            mask = batch.side("source")[1].bool()[None, :, :]  # (1, B, S)
        else:
            seen = batch.attr_start[None, :, None] + torch.arange(steps, device=scores.device)[:, None, None]
            mask = (positions[None, None, :] < seen) & batch.target_mask.bool()[None, :, :]  # (T, B, L)
        part_total = torch.where(mask, scores.abs(), 0).sum(-1)  # (T, B)
        total = part_total if total is None else total + part_total
    if total is None:
        return result
    total = torch.where(total == 0, torch.ones_like(total), total)[..., None]  # (T, B, 1)
    return MethodResult({k: v / total for k, v in result.attributions.items()}, result.step_scores, dims=result.dims)


def build_sequences(
    batch: EncodedBatch, result: MethodResult, scores: dict[str, torch.Tensor], idx: list[int], valid: torch.Tensor
) -> list[FeatureAttributionSequenceOutput]:
    """Split (T, B, L, *extra) device tensors into per-sequence outputs, one host copy per tensor.

    ``valid`` (B, T) marks real steps: only those count in the non-finite check. ``idx`` are the
    inputs' positions in the user's list (named in errors).
    """
    attrs = {k: v.transpose(0, 1) for k, v in result.attributions.items()}  # (B, T, L, *extra)
    checks = [(v.isfinite().flatten(2).all(2) | ~valid).all(1) for v in attrs.values()]  # (B,) each
    finite = torch.stack(checks).all(0).cpu() if checks else torch.ones(batch.size, dtype=torch.bool)
    attrs = {k: v.cpu() for k, v in attrs.items()}
    scores = {k: v.cpu() for k, v in scores.items()}
    starts, ends = batch.attr_start.tolist(), batch.attr_end.tolist()
    tgt_lens = batch.target_mask.sum(1).tolist()
    src_lens = batch.side("source")[1].sum(1).tolist() if batch.source_mask is not None else []
    out = []
    for b in range(batch.size):
        if not finite[b]:
            raise NonFiniteAttributionError(f"Attributions of input {idx[b]} contain inf/NaN; try float32.")
        s0, n = starts[b], ends[b] - starts[b]
        src = tgt = None
        if "source" in attrs:
            src = attrs["source"][b, :n, : src_lens[b]].transpose(0, 1).contiguous()  # (S, n, *extra)
        if "target" in attrs:
            tgt = attrs["target"][b, :n, : tgt_lens[b]].transpose(0, 1).contiguous()  # (L, n, *extra)
            future = torch.arange(tgt_lens[b])[:, None] >= s0 + torch.arange(n)[None, :]  # (L, n)
            tgt[future] = float("nan")
        target_tokens = batch.target_tokens[b]
        source_tokens = batch.source_tokens[b] if batch.source_tokens is not None else target_tokens[:s0]
        out.append(
            FeatureAttributionSequenceOutput(
                source=source_tokens,
                target=target_tokens,
                source_attributions=src,
                target_attributions=tgt,
                step_scores={k: v[b, :n].clone() for k, v in scores.items()},
                attr_pos_start=s0,
                attr_pos_end=s0 + n,
                attribution_dims=result.dims,
            )
        )
    return out
