"""Inseq's ``output_step_attributions=True``: the attributions of each generation step across the call's
sequences, as ``FeatureAttributionStepOutput`` objects (``out.step_attributions``), built from the sequences.

Step t holds, per sequence that has a step t: the source scores of that step ``(B, S, *dims)`` and the target
prefix's ``(B, P_t, *dims)`` (P_t: the longest prefix at step t; NaN where a sequence has fewer tokens or no step
t), each step score ``(B,)``, and the tokens: ``source``, ``prefix`` (the target tokens before step t) and
``target`` (the step's token, one per sequence, as Inseq's ``[[token], ...]``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from inseq_ray.output import FeatureAttributionSequenceOutput
from inseq_ray.tokens import TokenWithId


@dataclass(eq=False)
class FeatureAttributionStepOutput:
    """One generation step across sequences (see the module docstring for the shapes)."""

    source_attributions: torch.Tensor | None
    target_attributions: torch.Tensor | None
    step_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    source: list[list[TokenWithId]] | None = None
    prefix: list[list[TokenWithId]] = field(default_factory=list)
    target: list[list[TokenWithId]] = field(default_factory=list)


def step_outputs(seqs: list[FeatureAttributionSequenceOutput]) -> list[FeatureAttributionStepOutput]:
    """One :class:`FeatureAttributionStepOutput` per step index present in any of ``seqs``."""
    n = max((s.n_steps for s in seqs), default=0)
    return [_step(seqs, t) for t in range(n)]


def _step(seqs: list[FeatureAttributionSequenceOutput], t: int) -> FeatureAttributionStepOutput:
    prefixes = [s.target[: s.attr_pos_start + t] for s in seqs]
    source = None
    if seqs[0].source_attributions is not None:
        source = _stacked([s.source_attributions[:, t] if t < s.n_steps else None for s in seqs])  # type: ignore[index]
    target = None
    if seqs[0].target_attributions is not None:
        target = _stacked([s.target_attributions[: len(p), t] if t < s.n_steps else None  # type: ignore[index]
                           for s, p in zip(seqs, prefixes, strict=True)])  # fmt: skip
    nan = torch.tensor(float("nan"))
    scores = {
        k: torch.stack([s.step_scores[k][t] if t < s.n_steps else nan for s in seqs]) for k in seqs[0].step_scores
    }
    return FeatureAttributionStepOutput(
        source_attributions=source,
        target_attributions=target,
        step_scores=scores,
        source=[list(s.source) for s in seqs] if source is not None or seqs[0].source else None,
        prefix=prefixes,
        target=[[s.target[s.attr_pos_start + t]] if t < s.n_steps else [] for s in seqs],
    )


def _stacked(rows: list[torch.Tensor | None]) -> torch.Tensor:
    """(L_b, *dims) per sequence (None: no such step) -> (B, max L_b, *dims), NaN where a sequence has no value."""
    shaped = next(r for r in rows if r is not None)
    length = max(r.shape[0] for r in rows if r is not None)
    out = torch.full((len(rows), length, *shaped.shape[1:]), float("nan"), dtype=shaped.dtype)
    for b, r in enumerate(rows):
        if r is not None:
            out[b, : r.shape[0]] = r
    return out
