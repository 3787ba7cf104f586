"""Inseq's ``"pair"`` aggregator: two attributions of a minimal pair (same token counts) -> one holding, for
every score, ``aggregate_fn(this, other)`` (default: other - this), tokens that differ shown as ``a → b``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from inseq_ray.output import FeatureAttributionSequenceOutput, TokenWithId

PairFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pair(
    seq: FeatureAttributionSequenceOutput,
    other: FeatureAttributionSequenceOutput,
    aggregate_fn: PairFn | dict[str, PairFn] | None = None,
) -> FeatureAttributionSequenceOutput:
    """``seq`` and ``other`` (same tokens counts, score shapes and step scores) -> their pairwise aggregate.
    ``aggregate_fn`` may be one function of (this, other) or one per step score name (attributions use the
    default then)."""
    _check(seq, other)
    default: PairFn = lambda x, y: y - x  # noqa: E731  (Inseq's default)
    fn = aggregate_fn if callable(aggregate_fn) else default
    per_score = aggregate_fn if isinstance(aggregate_fn, dict) else {}

    def both(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        return None if a is None or b is None else fn(a, b)

    return replace(
        seq,
        source=_tokens(seq.source, other.source),
        target=_tokens(seq.target, other.target),
        source_attributions=both(seq.source_attributions, other.source_attributions),
        target_attributions=both(seq.target_attributions, other.target_attributions),
        step_scores={k: per_score.get(k, fn)(v, other.step_scores[k]) for k, v in seq.step_scores.items()},
        sequence_scores={k: fn(v, other.sequence_scores[k]) for k, v in seq.sequence_scores.items()},
    )


def _tokens(ours: list[TokenWithId], theirs: list[TokenWithId]) -> list[TokenWithId]:
    return [a if a.token == b.token else TokenWithId(f"{a.token} → {b.token}", -1) for a, b in zip(ours, theirs)]


def _check(seq: FeatureAttributionSequenceOutput, other: FeatureAttributionSequenceOutput) -> None:
    """The pair must line up: one error naming the first thing that differs."""
    shape = lambda t: None if t is None else tuple(t.shape)  # noqa: E731
    checks = {
        "source tokens": (len(seq.source), len(other.source)),
        "target tokens": (len(seq.target), len(other.target)),
        "source_attributions": (shape(seq.source_attributions), shape(other.source_attributions)),
        "target_attributions": (shape(seq.target_attributions), shape(other.target_attributions)),
        "step scores": (sorted(seq.step_scores), sorted(other.step_scores)),
        "sequence scores": (sorted(seq.sequence_scores), sorted(other.sequence_scores)),
    }
    for what, (a, b) in checks.items():
        if a != b:
            raise ValueError(f"aggregate('pair'): the pair's {what} differ ({a} vs {b}); pair outputs of equal length.")
