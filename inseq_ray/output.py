"""Result types: per-sequence attributions and the multi-sequence output (Inseq's data model).

Shapes (n = attributed steps = ``attr_pos_end - attr_pos_start``):
- ``source_attributions``: (len(source), n, *extra) or None (decoder-only models)
- ``target_attributions``: (len(target), n, *extra) or None; NaN where a position is not yet generated
- ``step_scores[name]``: (n,)
``attribution_dims`` names ``extra``: ("hidden",), ("layers", "heads") or () once aggregated. It is
saved with the output, so a reloaded output aggregates exactly like the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from inseq_ray import aggregation as agg
from inseq_ray.tokens import TokenWithId

__all__ = ["FeatureAttributionOutput", "FeatureAttributionSequenceOutput", "TokenWithId", "merge_attributions"]


@dataclass(eq=False)
class FeatureAttributionSequenceOutput:
    """Attributions of one sequence (see module docstring for shapes)."""

    source: list[TokenWithId]
    target: list[TokenWithId]
    source_attributions: torch.Tensor | None
    target_attributions: torch.Tensor | None
    step_scores: dict[str, torch.Tensor]
    attr_pos_start: int
    attr_pos_end: int
    attribution_dims: tuple[str, ...] = ("hidden",)
    sequence_scores: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attribution_dims = tuple(self.attribution_dims)
        self.source = [t if type(t) is TokenWithId else TokenWithId(*t) for t in self.source]
        self.target = [t if type(t) is TokenWithId else TokenWithId(*t) for t in self.target]
        n = self.attr_pos_end - self.attr_pos_start
        if not 0 <= self.attr_pos_start < self.attr_pos_end <= len(self.target):
            raise ValueError(
                f"attr_pos {self.attr_pos_start}..{self.attr_pos_end} outside a {len(self.target)}-token target"
            )
        for name, tokens in (("source_attributions", self.source), ("target_attributions", self.target)):
            t = getattr(self, name)
            if t is not None and (tuple(t.shape[:2]) != (len(tokens), n) or t.dim() != 2 + len(self.attribution_dims)):
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)}, expected ({len(tokens)}, {n}, *{self.attribution_dims})"
                )
        for name, s in self.step_scores.items():
            if tuple(s.shape) != (n,):
                raise ValueError(f"step score {name!r} has shape {tuple(s.shape)}, expected ({n},)")

    @property
    def n_steps(self) -> int:
        return self.attr_pos_end - self.attr_pos_start

    @property
    def generated(self) -> list[TokenWithId]:
        """The attributed (generated) target tokens, one per step."""
        return self.target[self.attr_pos_start : self.attr_pos_end]

    def aggregate(
        self,
        aggregator: str | Sequence | None = None,
        aggregate_fn: str | Sequence | None = None,
        normalize: bool | None = None,
        rescale: bool = False,
        **fn_kwargs: Any,
    ) -> FeatureAttributionSequenceOutput:
        """Reduce ``extra`` dims to one score per (token, step); see :mod:`inseq_ray.aggregation`.

        ``aggregator`` is an aggregation function id (or one per extra dim), or, as in Inseq, ``"subwords"``
        (merge each word's tokens; ``special_chars``, ``is_suffix_symbol``, ``aggregate_source``,
        ``aggregate_target``) or ``"spans"`` (``source_spans``, ``target_spans``: ``(start, end)`` pairs, end
        exclusive) or ``"split"`` (``split_pattern``, a regular expression over the tokens' text, and
        ``split_mode``: ``single``/``start``/``end``), which first apply the default reduction and then merge with
        ``aggregate_fn`` (default ``absmax``; step scores with Inseq's per-score functions, e.g. ``prod`` for
        probabilities); ``"slices"`` (``source_spans``, ``target_spans``: keep only those tokens, the generated ones
        always); ``"pair"`` (``paired_attr``: another output of the same shape; ``aggregate_fn(this, other)``,
        default other - this); ``"scores"`` (Inseq's name of the default aggregator) is the default reduction.

        ``normalize`` (default: on for gradient outputs, off for attention weights, which are
        distributions already) makes each step's source + target scores sum to 1. For attention
        outputs kept whole (``keep_all=True``), ``layers``, ``heads``, ``aggregate_layers_fn`` and
        ``aggregate_heads_fn`` select as the method does (default: mean of the last layer's heads).
        """
        if aggregator in ("subwords", "spans", "split"):
            return self._merge_tokens(aggregator, aggregate_fn, normalize, rescale, **fn_kwargs)
        if aggregator in ("pair", "slices"):
            return self._pair_or_slice(aggregator, aggregate_fn, **fn_kwargs)
        aggregator = None if aggregator == "scores" else aggregator
        if aggregator is not None and aggregate_fn is not None:
            raise ValueError(f"aggregator={aggregator!r} is a function id: give it or aggregate_fn, not both.")
        aggregate_fn = aggregator if aggregator is not None else aggregate_fn
        attention_dims = self.attribution_dims == ("layers", "heads")
        normalize = (not attention_dims and bool(self.attribution_dims)) if normalize is None else normalize
        if normalize and rescale:
            raise ValueError("Only one of normalize and rescale can be True.")
        if attention_dims and aggregate_fn is None:
            selection, fn_kwargs = dict(fn_kwargs), {}
            fns = [lambda x, dim: agg.select_and_reduce(x, **selection)]
        else:
            fns = agg.resolve_functions(aggregate_fn, self.attribution_dims)
        src = agg.reduce_extra(self.source_attributions, fns, **fn_kwargs)
        tgt = agg.reduce_extra(self.target_attributions, fns, **fn_kwargs)
        if normalize:
            src, tgt = agg.normalize_steps(src, tgt)
        elif rescale:
            src, tgt = agg.rescale(src, tgt)
        return replace(self, source_attributions=src, target_attributions=tgt, attribution_dims=())

    def _merge_tokens(
        self,
        aggregator: str,
        aggregate_fn,
        normalize: bool | None,
        rescale: bool,
        source_spans=None,
        target_spans=None,
        split_pattern: str | None = None,
        split_mode: str = "single",
        special_chars: str | tuple[str, ...] | None = None,
        is_suffix_symbol: bool = False,
        aggregate_source: bool = True,
        aggregate_target: bool = True,
        special_tokens: Sequence[str] = (),
        step_score_fns: dict | None = None,
    ) -> FeatureAttributionSequenceOutput:
        from inseq_ray import spans as sp

        base = self.aggregate(normalize=normalize, rescale=rescale) if self.attribution_dims else self
        if aggregator == "subwords":
            tokens = [*self.source, *self.target]
            keep = {t.token for t in tokens if _looks_special(t.token)} | set(special_tokens)
            special_chars = special_chars or sp.detect_marker([t.token for t in tokens])
            source_spans = sp.word_spans(self.source, special_chars, is_suffix_symbol, keep) if aggregate_source else []
            target_spans = sp.word_spans(self.target, special_chars, is_suffix_symbol, keep) if aggregate_target else []
        elif aggregator == "split":
            if split_pattern is None:
                raise ValueError("aggregate('split') needs split_pattern=<a regular expression>.")
            split = [sp.split_spans([t.token for t in tokens], split_pattern, split_mode) if on else []
                     for tokens, on in ((self.source, aggregate_source), (self.target, aggregate_target))]  # fmt: skip
            source_spans, target_spans = split
        else:
            if source_spans is None and target_spans is None:
                raise ValueError("aggregate('spans') needs source_spans and/or target_spans.")
            source_spans = sp.normalize_spans(source_spans, len(self.source), "source_spans")
            target_spans = sp.normalize_spans(target_spans, len(self.target), "target_spans")
        return sp.merge_spans(base, source_spans, target_spans, aggregate_fn or "absmax", step_score_fns)

    def _pair_or_slice(
        self, aggregator: str, aggregate_fn=None, paired_attr=None, source_spans=None, target_spans=None
    ) -> FeatureAttributionSequenceOutput:
        """Inseq's ``"pair"`` (with ``paired_attr``) and ``"slices"`` aggregators, on the scores as they are."""
        from inseq_ray import spans as sp
        from inseq_ray.pairing import pair

        if aggregator == "pair":
            if not isinstance(paired_attr, FeatureAttributionSequenceOutput):
                raise ValueError("aggregate('pair') needs paired_attr=<the other FeatureAttributionSequenceOutput>.")
            return pair(self, paired_attr, aggregate_fn)
        source = None if source_spans is None else sp.normalize_spans(source_spans, len(self.source), "source_spans", 1)
        target = None if target_spans is None else sp.normalize_spans(target_spans, len(self.target), "target_spans", 1)
        return sp.slice_spans(self, source, target)

    def weight_attributions(self, step_score: str) -> FeatureAttributionSequenceOutput:
        """Multiply each step's scores by that step's ``step_score`` (e.g. ``probability``), in place as Inseq
        does (after the default aggregation); returns the sequence."""
        if step_score not in self.step_scores:
            raise ValueError(
                f"weight_attributions({step_score!r}): no such step score here "
                f"(computed: {', '.join(self.step_scores) or 'none'}); add it to step_scores=[...]."
            )
        base = self.aggregate() if self.attribution_dims else self
        weights = self.step_scores[step_score].float()[None, :]  # (1, steps)
        self.source_attributions = None if base.source_attributions is None else base.source_attributions * weights
        self.target_attributions = None if base.target_attributions is None else base.target_attributions * weights
        self.attribution_dims = ()
        return self

    def show(self, **kwargs: Any):
        """Render this sequence (see :meth:`FeatureAttributionOutput.show`)."""
        return FeatureAttributionOutput([self]).show(**kwargs)

    def show_granular(self, **kwargs: Any):
        """Inseq's granular view of this sequence (see :func:`inseq_ray.viz_views.show_granular_attributions`)."""
        return FeatureAttributionOutput([self]).show_granular(**kwargs)

    def show_tokens(self, **kwargs: Any):
        """Inseq's token view of this sequence (see :func:`inseq_ray.viz_views.show_token_attributions`)."""
        return FeatureAttributionOutput([self]).show_tokens(**kwargs)

    def plot(self, path: str, **kwargs: Any) -> list[str]:
        """Write this sequence's PNG heatmap to ``path``; returns ``[path]``."""
        return FeatureAttributionOutput([self]).plot(path, **kwargs)

    def decode_tokens(self, tokenizer) -> FeatureAttributionSequenceOutput:
        """Each token's text replaced by ``tokenizer.decode([id])`` (readable byte-level tokens: Qwen, GPT-2's
        ``Ġ``), ids kept; in place, as Inseq does; returns the sequence."""
        self.source = [TokenWithId(tokenizer.decode([t.id]), t.id) if t.id >= 0 else t for t in self.source]
        self.target = [TokenWithId(tokenizer.decode([t.id]), t.id) if t.id >= 0 else t for t in self.target]
        return self

    def get_scores_dicts(self, aggregate_fn=None, do_aggregation: bool = True, **kwargs: Any) -> dict[str, dict]:
        """This sequence's ``source_attributions``, ``target_attributions``, ``step_scores`` dicts (Inseq's
        per-sequence method; aggregated first by default)."""
        return FeatureAttributionOutput([self]).get_scores_dicts(aggregate_fn, do_aggregation, **kwargs)[0]

    def get_scores_dict(self) -> dict[str, dict]:
        """Nested dicts keyed by (index, token) that ``pandas.DataFrame`` turns into matrices."""
        steps = [(self.attr_pos_start + i, tok.token) for i, tok in enumerate(self.generated)]
        out: dict[str, dict] = {}
        for name, tokens in (("source_attributions", self.source), ("target_attributions", self.target)):
            t = getattr(self, name)
            out[name] = {} if t is None else _matrix_dict(t, tokens, steps)
        out["step_scores"] = {
            key: {name: float(v[i]) for name, v in self.step_scores.items()} for i, key in enumerate(steps)
        }
        return out


def _looks_special(token: str) -> bool:
    """``<s>``, ``</s>``, ``<pad>``, ``[CLS]``-style tokens: kept alone by word merging."""
    return len(token) > 2 and ((token[0], token[-1]) in (("<", ">"), ("[", "]")))


def _matrix_dict(t: torch.Tensor, rows: list[TokenWithId], cols: list[tuple[int, str]]) -> dict:
    values = t.tolist()
    return {col: {(i, tok.token): values[i][j] for i, tok in enumerate(rows)} for j, col in enumerate(cols)}


@dataclass(eq=False)
class FeatureAttributionOutput:
    """Attributions of several sequences plus run ``info`` (method, model, arguments, timings)."""

    sequence_attributions: list[FeatureAttributionSequenceOutput]
    info: dict[str, Any] = field(default_factory=dict)
    step_attributions: list | None = None  # FeatureAttributionStepOutput per step (output_step_attributions=True)

    def __len__(self) -> int:
        return len(self.sequence_attributions)

    def __getitem__(self, i: int) -> FeatureAttributionSequenceOutput:
        return self.sequence_attributions[i]

    def __add__(self, other: FeatureAttributionOutput) -> FeatureAttributionOutput:
        return merge_attributions([self, other])

    def aggregate(self, aggregator: str | Sequence | None = None, **kwargs: Any) -> FeatureAttributionOutput:
        """Aggregate every sequence (default: L2 norm over hidden, then per-step normalisation; see
        :meth:`FeatureAttributionSequenceOutput.aggregate` for the token aggregators). ``"pair"`` with a
        ``paired_attr`` output pairs the sequences one to one."""
        paired = kwargs.get("paired_attr")
        if isinstance(paired, FeatureAttributionOutput):
            if len(paired) != len(self):
                raise ValueError(f"aggregate('pair'): {len(self)} sequences but paired_attr has {len(paired)}.")
            seqs = [
                s.aggregate(aggregator, **{**kwargs, "paired_attr": p})
                for s, p in zip(self.sequence_attributions, paired.sequence_attributions, strict=True)
            ]
            return FeatureAttributionOutput(seqs, dict(self.info))
        seqs = [s.aggregate(aggregator, **kwargs) for s in self.sequence_attributions]
        return FeatureAttributionOutput(seqs, dict(self.info))

    def weight_attributions(self, step_score: str) -> FeatureAttributionOutput:
        """Weight every sequence's scores by a step score, in place as Inseq does; returns the output."""
        for seq in self.sequence_attributions:
            seq.weight_attributions(step_score)
        return self

    def decode_tokens(self, tokenizer) -> FeatureAttributionOutput:
        """:meth:`FeatureAttributionSequenceOutput.decode_tokens` for every sequence; returns the output."""
        for seq in self.sequence_attributions:
            seq.decode_tokens(tokenizer)
        return self

    def get_scores_dicts(self, aggregate_fn=None, do_aggregation: bool = True, **kwargs: Any) -> list[dict]:
        """Per sequence: ``source_attributions``, ``target_attributions``, ``step_scores`` dicts."""
        out = self.aggregate(aggregate_fn, **kwargs) if do_aggregation else self
        for seq in out.sequence_attributions:
            if seq.attribution_dims:
                raise ValueError("get_scores_dicts needs aggregated scores; call with do_aggregation=True.")
        return [s.get_scores_dict() for s in out.sequence_attributions]

    def save(self, path: str, **kwargs: Any) -> list[str]:
        """Write JSON (see :func:`inseq_ray.serialization.save`); returns the paths written."""
        from inseq_ray.serialization import save

        return save(self, path, **kwargs)

    @classmethod
    def load(cls, path: str, **kwargs: Any) -> FeatureAttributionOutput:
        """Read a file written by :meth:`save` (plain or gzipped; never imports code)."""
        from inseq_ray.serialization import load

        return load(path, **kwargs)

    def show(self, **kwargs: Any):
        """Render aggregated attributions (terminal table, notebook HTML, or ``return_html=True``)."""
        from inseq_ray.viz import show

        return show(self, **kwargs)

    def show_granular(self, **kwargs: Any):
        """Each step's scores along one extra dimension (:func:`inseq_ray.viz_views.show_granular_attributions`)."""
        from inseq_ray.viz_views import show_granular_attributions

        return show_granular_attributions(self, **kwargs)

    def show_tokens(self, **kwargs: Any):
        """The generated text, each token opening its scores (:func:`inseq_ray.viz_views.show_token_attributions`)."""
        from inseq_ray.viz_views import show_token_attributions

        return show_token_attributions(self, **kwargs)

    def plot(self, path: str, index: int | None = None, **kwargs: Any) -> list[str]:
        """Write one PNG heatmap per sequence (``x_0.png``, ``x_1.png`` when several; only ``index`` if given);
        returns the paths written."""
        from inseq_ray.viz import plot

        return plot(self, path, index=index, **kwargs)


MERGE_MATCH_FIELDS = ("attribute_target", "attribution_method", "model_name", "step_scores", "attributed_fn")


def merge_attributions(outputs: Sequence[FeatureAttributionOutput]) -> FeatureAttributionOutput:
    """Concatenate outputs of the same model/method; list-valued info fields are concatenated."""
    first = outputs[0].info
    for out in outputs[1:]:
        for key in MERGE_MATCH_FIELDS:
            if out.info.get(key) != first.get(key):
                raise ValueError(
                    f"Cannot merge outputs with different {key!r}: {first.get(key)!r} vs {out.info.get(key)!r}"
                )
    info = dict(first)
    for key in ("input_texts", "generated_texts"):
        info[key] = [t for out in outputs for t in out.info.get(key, [])]
    seqs = [s for out in outputs for s in out.sequence_attributions]
    return FeatureAttributionOutput(seqs, info)
