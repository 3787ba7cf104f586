"""Pure text and score helpers of the context-reliance procedure (Inseq's semantics)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

Selected = tuple[int, float, str]  # (position among the output current tokens, score, token)


def format_template(template: str, current: str, context: str | None = None) -> str:
    """``template`` with ``{current}`` (and ``{context}`` when given) filled in."""
    return template.format(current=current) if context is None else template.format(current=current, context=context)


def concat_with_sep(first: str, second: str, sep: str) -> str:
    """``first + sep + second``, the separator added only when neither side has it already."""
    return first + second if first.endswith(sep) or second.startswith(sep) else first + sep + second


def threshold(scores: Sequence[float], std_weight: float | None) -> float:
    """mean + ``std_weight`` x std (unbiased) of ``scores``; the mean for weight 0 or one score; 0 without a weight."""
    if std_weight is None or not scores:
        return 0.0
    values = torch.tensor(list(scores), dtype=torch.float64)
    if std_weight == 0 or len(scores) == 1:
        return float(values.mean())
    return float(values.mean() + std_weight * values.std())


def select(
    tokens: Sequence[str], scores: Sequence[float], std_weight: float | None, topk: int | None
) -> tuple[list[Selected], float]:
    """The tokens whose |score| reaches the threshold, by decreasing |score| (at most ``topk``), and the threshold."""
    limit = threshold(scores, std_weight)
    ranked = sorted(zip(range(len(scores)), scores, tokens, strict=False), key=lambda x: abs(x[1]), reverse=True)
    kept = [(i, s, t) for i, s, t in ranked if abs(s) >= limit]
    return (kept[:topk] if topk else kept), limit


def split_generated(generated: str, template: str) -> tuple[str, str]:
    """A generation holding output context and current text -> (context, current), at the template's separator
    between ``{context}`` and ``{current}`` (exactly one occurrence), else at punctuation (exactly two parts)."""
    separator = template.split("{context}")[1].split("{current}")[0]
    parts = generated.split(separator) if separator else []
    if len(parts) == 2 and parts[0]:
        context = parts[0]
    else:
        pieces = [p for p in re.split(r"[\s{}]+".format(re.escape(".?!,;:)]}")), generated) if p]
        if len(pieces) != 2:
            raise ValueError(
                f"cannot split the generation {generated!r} into output context and current text at {separator!r}: "
                "give output_context_text."
            )
        context = pieces[0]
    prefix = template.split("{current}")[0].format(context=context)
    current = generated[min(len(prefix if context else prefix.strip()), len(generated)) :]
    if not current.strip():
        raise ValueError(f"the generation {generated!r} leaves no current text after its context {context!r}.")
    return context, current.strip()
