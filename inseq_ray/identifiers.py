"""Inseq's ``explain(id)`` and ``list_aggregators()``: what an identifier of any registry means, from the
registered object's own docstring (methods, step functions, aggregation functions) or the aggregator's text."""

from __future__ import annotations

AGGREGATORS = {
    "scores": "The default aggregation of a sequence: each attribution's extra dimensions reduced by an aggregation "
    "function (L2 norm over the hidden size by default; the mean over layers and heads for attention), then each "
    "step's scores normalised to sum to 1 (out.aggregate()).",
    "subwords": "Tokens merged into words (a token not starting a word joins the one before), their scores summed "
    "per step; source and target alike (out.aggregate('subwords')).",
    "split": "Tokens merged into spans cut where a regular expression (split_pattern=) matches the tokens' text; "
    "split_mode single/start/end keeps each match alone or joins it to the tokens after/before it (Inseq's)",
    "slices": "Only the tokens inside the given (start, end) spans kept (source_spans=, target_spans=; the generated "
    "tokens always), with their scores (Inseq's)",
    "pair": "Two outputs of a minimal pair (paired_attr=) -> aggregate_fn(this, other) for every score (default: "
    "other - this); differing tokens shown as 'a → b' (Inseq's)",
    "spans": "Given (start, end) token spans (source_spans=, target_spans=), each span's tokens merged into one, "
    "their scores summed per step (out.aggregate('spans', source_spans=[(0, 2)])).",
}


def list_supported_frameworks() -> list[str]:
    """The model frameworks ``load_model`` supports (Inseq's name): Hugging Face transformers."""
    return ["hf_transformers"]


def list_aggregators() -> list[str]:
    """The aggregators ``out.aggregate(...)`` takes besides aggregation function ids (Inseq's name)."""
    return sorted(AGGREGATORS)


def explain(id: str) -> None:
    """Print what ``id`` means: an attribution method, a step function, an aggregation function or an aggregator
    (as Inseq's ``explain``); an unknown id is an error listing every valid one."""
    from inseq_ray.aggregation import AGGREGATION_FUNCTIONS
    from inseq_ray.errors import UnknownIdError
    from inseq_ray.methods import METHODS
    from inseq_ray.step_scores import STEP_FUNCTIONS

    docs: dict[str, str | None] = {
        **{k: v.__doc__ for k, v in AGGREGATION_FUNCTIONS.items()},
        **{k: v.__doc__ for k, v in STEP_FUNCTIONS.items()},
        **{k: spec.fn.__doc__ for k, spec in METHODS.items()},
        **AGGREGATORS,
    }
    if id not in docs:
        raise UnknownIdError(f"Unknown identifier {id!r}. Valid ids: {', '.join(sorted(docs))}.")
    print(docs[id] or f"{id}: no documentation; see the README's tables of methods and step functions.")
