"""Token-span aggregation (Inseq's ``"spans"``, ``"subwords"``, ``"split"`` and ``"slices"`` aggregators), pure
functions.

A span is ``(start, end)``, end exclusive, over a token list. Merging a source span merges rows of
``source_attributions``; merging a target span merges rows of ``target_attributions`` and, for the
generated part, the step columns of both matrices and every step score. A merged token is the
concatenation of its pieces with id -1 (as Inseq). Spans never cross the prompt/generation boundary
(``attr_pos_start``): a span that would is cut there, so every step column stays a generated token.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Sequence
from dataclasses import replace

import torch

from inseq_ray.aggregation import AGGREGATION_FUNCTIONS, AggregationFunction
from inseq_ray.output import FeatureAttributionSequenceOutput, TokenWithId
from inseq_ray.registry import lookup

Span = tuple[int, int]
WORD_MARKERS = ("▁", "Ġ")  # SentencePiece and byte-level BPE word starts
STEP_SCORE_SPAN_FNS = {  # Inseq's defaults; other scores use the attribution function
    "probability": "prod",
    "entropy": "sum",
    "crossentropy": "sum",
    "perplexity": "prod",
    "contrast_prob_diff": "prod",
    "contrast_prob": "prod",
    "pcxmi": "sum",
    "kl_divergence": "sum",
    "mc_dropout_prob_avg": "prod",
}


def normalize_spans(spans: Span | Sequence[Span] | None, length: int, name: str, shortest: int = 2) -> list[Span]:
    """One span or a list of spans -> sorted, validated non-overlapping spans of >= ``shortest`` tokens."""
    if not spans:
        return []
    given: list[tuple] = [tuple(spans)] if isinstance(spans[0], int) else [tuple(s) for s in spans]  # type: ignore[arg-type]
    previous_end = 0
    for s in given:
        if len(s) != 2 or not all(isinstance(i, int) for i in s) or not previous_end <= s[0] < s[1] <= length:
            raise ValueError(
                f"{name}={spans}: give (start, end) pairs, end exclusive, ascending and non-overlapping within "
                f"0..{length}."
            )
        previous_end = s[1]
    return [(s[0], s[1]) for s in given if s[1] - s[0] >= shortest]


def word_spans(
    tokens: Sequence[TokenWithId],
    special_chars: str | tuple[str, ...] | None = None,
    is_suffix_symbol: bool = False,
    special_tokens: set[str] | frozenset[str] = frozenset(),
) -> list[Span]:
    """Spans of tokens forming one word. A token starting with ``special_chars`` starts a word (or, with
    ``is_suffix_symbol``, continues one, as WordPiece's ``##``); ``special_tokens`` stay alone.
    ``special_chars=None`` detects ▁ (SentencePiece) or Ġ (byte-level BPE) from the tokens."""
    texts = [t.token for t in tokens]
    if not texts:
        return []
    if special_chars is None:
        special_chars = detect_marker(texts)
    starts = [
        i
        for i, text in enumerate(texts)
        if i == 0
        or text in special_tokens
        or texts[i - 1] in special_tokens
        or text.startswith(special_chars) != is_suffix_symbol
    ]
    return [(a, b) for a, b in itertools.pairwise([*starts, len(texts)]) if b - a > 1]


def detect_marker(texts: Sequence[str]) -> str:
    """The word-start marker these tokens use (▁ or Ġ); an error naming the fix when there is none."""
    marker = next((m for m in WORD_MARKERS if any(x.startswith(m) for x in texts)), None)
    if marker is None:
        raise ValueError(
            "aggregate('subwords'): no word-boundary marker (▁ or Ġ) in these tokens; pass special_chars= "
            "(and is_suffix_symbol=True for suffix markers such as WordPiece's '##')."
        )
    return marker


def merge_spans(
    seq: FeatureAttributionSequenceOutput,
    source_spans: list[Span],
    target_spans: list[Span],
    aggregate_fn: str | AggregationFunction = "absmax",
    step_score_fns: dict[str, str | AggregationFunction] | None = None,
) -> FeatureAttributionSequenceOutput:
    """Merge the given spans of an aggregated sequence (attributions ``(tokens, steps)``)."""
    if seq.attribution_dims:
        raise ValueError("span aggregation needs (tokens, steps) scores: aggregate the extra dimensions first.")
    fn = _fn(aggregate_fn)
    start = seq.attr_pos_start
    target_spans = _cut_at(target_spans, start)
    step_spans = [(max(a, start) - start, b - start) for a, b in target_spans if b > start]
    step_spans = [s for s in step_spans if s[1] - s[0] > 1]
    src = seq.source_attributions
    if src is not None:
        src = _merge(_merge(src, step_spans, fn, dim=1), source_spans, fn, dim=0)
    tgt = seq.target_attributions
    if tgt is not None:
        tgt = _merge(_merge(tgt, step_spans, fn, dim=1), target_spans, fn, dim=0)
    fns = {**STEP_SCORE_SPAN_FNS, **(step_score_fns or {})}
    scores = {k: _merge(v, step_spans, _fn(fns.get(k, aggregate_fn)), dim=0) for k, v in seq.step_scores.items()}
    merged_before = sum(b - a - 1 for a, b in target_spans if b <= start)
    new_start = start - merged_before
    return replace(
        seq,
        source=_merge_tokens(seq.source, source_spans),
        target=_merge_tokens(seq.target, target_spans),
        source_attributions=src,
        target_attributions=tgt,
        step_scores=scores,
        attr_pos_start=new_start,
        attr_pos_end=new_start + (seq.n_steps - sum(b - a - 1 for a, b in step_spans)),
    )


def _fn(fn: str | AggregationFunction) -> AggregationFunction:
    return fn if callable(fn) else lookup(AGGREGATION_FUNCTIONS, fn, "aggregation function")


def _cut_at(spans: list[Span], boundary: int) -> list[Span]:
    out = []
    for a, b in spans:
        pieces = [(a, boundary), (boundary, b)] if a < boundary < b else [(a, b)]
        out += [p for p in pieces if p[1] - p[0] > 1]
    return out


def _merge(x: torch.Tensor, spans: list[Span], fn: AggregationFunction, dim: int) -> torch.Tensor:
    """Reduce each span of ``dim`` with ``fn``; other positions are kept as they are."""
    if not spans:
        return x
    pieces, pos = [], 0
    for a, b in spans:
        if a > pos:
            pieces.append(x.narrow(dim, pos, a - pos))
        pieces.append(fn(x.narrow(dim, a, b - a), dim=dim).unsqueeze(dim))
        pos = b
    if pos < x.shape[dim]:
        pieces.append(x.narrow(dim, pos, x.shape[dim] - pos))
    return torch.cat(pieces, dim=dim)


def _merge_tokens(tokens: list[TokenWithId], spans: list[Span]) -> list[TokenWithId]:
    out, pos = [], 0
    for a, b in spans:
        out += tokens[pos:a]
        out.append(TokenWithId("".join(t.token for t in tokens[a:b]), -1))
        pos = b
    return out + tokens[pos:]


SPLIT_MODES = ("single", "start", "end")


def split_spans(tokens: Sequence[str], pattern: str, mode: str = "single") -> list[Span]:
    """Inseq's ``"split"`` aggregator: the tokens' text (joined) cut where ``pattern`` (a regular expression)
    matches. ``mode``: ``single`` keeps each match its own span, ``start`` joins it to the tokens after it,
    ``end`` to those before it. Spans of one token are left out (nothing to merge); no match: no spans."""
    if mode not in SPLIT_MODES:
        raise ValueError(f"split_mode={mode!r}: valid are {', '.join(SPLIT_MODES)}.")
    ends = list(itertools.accumulate(len(t) for t in tokens))  # char end of each token
    matched: list[Span] = []
    for m in re.finditer(pattern, "".join(tokens)):
        if m.end() > m.start():
            a, b = bisect.bisect_right(ends, m.start()), bisect.bisect_left(ends, m.end()) + 1
            a = max(a, matched[-1][1]) if matched else a  # a token two matches share goes to the first
            if b > a:
                matched.append((a, b))
    if not matched:
        return []
    cuts = sorted({0, len(tokens), *(i for span in matched for i in span)})
    pieces = list(itertools.pairwise(cuts))
    is_match = [p in matched for p in pieces]
    if mode != "single":
        pieces = _joined(pieces, is_match, after=mode == "start")
    return [p for p in pieces if p[1] - p[0] > 1]


def _joined(pieces: list[Span], is_match: list[bool], after: bool) -> list[Span]:
    """Each match joined to the non-matched run after it (``after``) or before it."""
    out: list[Span] = []
    out_match = False
    for (a, b), match in zip(pieces, is_match, strict=True):
        starts_new = match if after else (not out or out_match)
        if out and not starts_new:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
        out_match = match
    return out


def slice_spans(
    seq: FeatureAttributionSequenceOutput, source_spans: list[Span] | None, target_spans: list[Span] | None
) -> FeatureAttributionSequenceOutput:
    """Inseq's ``"slices"`` aggregator: only the tokens inside the spans are kept (the generated tokens always),
    with their scores; decoder-only outputs slice their prompt with ``target_spans``."""
    start, end = seq.attr_pos_start, seq.attr_pos_end
    prompt = [(a, min(b, start)) for a, b in (target_spans or []) if a < start]
    keep_t = [i for a, b in prompt for i in range(a, b)] + list(range(start, len(seq.target)))
    if seq.source_attributions is None and target_spans is not None:  # decoder-only: the source is the prompt
        source_spans = [(a, min(b, len(seq.source))) for a, b in prompt if a < len(seq.source)]
    keep_s = [i for a, b in (source_spans or [(0, len(seq.source))]) for i in range(a, b)]
    new_start = len(keep_t) - (len(seq.target) - start)
    tgt, src = seq.target_attributions, seq.source_attributions
    return replace(
        seq,
        source=[seq.source[i] for i in keep_s],
        target=[seq.target[i] for i in keep_t],
        source_attributions=None if src is None else src[keep_s],
        target_attributions=None if tgt is None else tgt[keep_t],
        attr_pos_start=new_start,
        attr_pos_end=new_start + (end - start),
    )
