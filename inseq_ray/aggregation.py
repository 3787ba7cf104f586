"""Aggregation functions (pure) and the default per-token aggregation of attributions.

An attribution tensor is ``(tokens, steps, *extra)``. ``extra`` is ``(hidden,)`` for gradient
methods, ``(layers, heads)`` for attention, ``()`` once aggregated. Aggregation reduces ``extra``
from the last dimension inwards, then optionally normalises each step so that its source and
target scores together sum to 1 (Inseq's "L2 + Normalize" default) or rescales by the max |score|.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from functools import reduce

import torch

from inseq_ray.registry import lookup, register

AggregationFunction = Callable[..., torch.Tensor]  # fn(x, dim, **kw) -> x reduced over dim


def vnorm(x: torch.Tensor, dim: int, ord: float = 2) -> torch.Tensor:
    """Vector norm over ``dim`` (L2 by default)."""
    return torch.linalg.vector_norm(x, ord=ord, dim=dim)


def absmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The value of largest magnitude over ``dim``, sign kept."""
    idx = x.abs().nan_to_num(nan=-1.0).argmax(dim=dim, keepdim=True)
    return x.gather(dim, idx).squeeze(dim)


AGGREGATION_FUNCTIONS: dict[str, AggregationFunction] = {
    "vnorm": vnorm,
    "sum": lambda x, dim: x.sum(dim),
    "mean": lambda x, dim: x.mean(dim),
    "max": lambda x, dim: x.amax(dim),
    "min": lambda x, dim: x.amin(dim),
    "prod": lambda x, dim: x.prod(dim),
    "absmax": absmax,
}

DEFAULT_AGGREGATION: dict[tuple[str, ...], tuple[str, ...]] = {
    ("hidden",): ("vnorm",),
    ("layers",): ("mean",),
    (): (),
}


def register_aggregation_function(fn: AggregationFunction, identifier: str, overwrite: bool = False) -> None:
    """Register ``fn(x, dim) -> Tensor`` under ``identifier``."""
    register(AGGREGATION_FUNCTIONS, identifier, fn, "aggregation function", overwrite)


def list_aggregation_functions() -> list[str]:
    return sorted(AGGREGATION_FUNCTIONS)


def resolve_functions(
    aggregate_fn: str | AggregationFunction | Sequence[str | AggregationFunction] | None,
    dims: tuple[str, ...],
) -> list[AggregationFunction]:
    """One function per extra dimension, applied last dimension first."""
    if aggregate_fn is None:
        names: Sequence = DEFAULT_AGGREGATION.get(tuple(dims), ("mean",) * len(dims))
    elif isinstance(aggregate_fn, str) or callable(aggregate_fn):
        names = [aggregate_fn] * len(dims)
    else:
        names = list(aggregate_fn)
    if len(names) != len(dims):
        raise ValueError(f"{len(names)} aggregation functions given for {len(dims)} dimensions {dims}.")
    return [fn if callable(fn) else lookup(AGGREGATION_FUNCTIONS, fn, "aggregation function") for fn in names]


def reduce_extra(x: torch.Tensor | None, fns: list[AggregationFunction], **kwargs) -> torch.Tensor | None:
    """(tokens, steps, *extra) -> (tokens, steps): apply fns over the last dimension, repeatedly."""
    if x is None:
        return None
    for fn in fns:
        x = fn(x, dim=-1, **kwargs) if kwargs else fn(x, dim=-1)
    return x


def normalize_steps(
    source: torch.Tensor | None, target: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Divide each step column by the sum of |scores| over source and target tokens (NaN kept)."""
    parts = [p for p in (source, target) if p is not None]
    total = reduce(operator.add, (p.abs().nansum(dim=0) for p in parts))  # (steps,)
    total = torch.where(total == 0, torch.ones_like(total), total)
    return tuple(None if p is None else p / total for p in (source, target))  # type: ignore[return-value]


def rescale(
    source: torch.Tensor | None, target: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Divide every score by the largest |score| of the sequence (NaN kept)."""
    parts = [p for p in (source, target) if p is not None]
    peak = max(float(p.abs().nan_to_num().max()) for p in parts) if parts else 1.0
    peak = peak or 1.0
    return tuple(None if p is None else p / peak for p in (source, target))  # type: ignore[return-value]


# ---- attention: the seed's layer/head selection, shared by the method and aggregate() ----------
Selection = int | tuple[int, int] | Sequence[int] | None


def select_indices(sel: Selection, size: int, what: str) -> list[int]:
    """Resolve an int / (start, end) / list selection into indices in ``range(size)``."""
    if sel is None:
        return list(range(size))
    if isinstance(sel, tuple) and len(sel) == 2 and all(isinstance(v, int) for v in sel):
        start, end = (v + size if v < 0 else v for v in sel)
        idx = list(range(start, end))
        if not idx or start < 0 or end > size:
            raise ValueError(f"{what} range {sel} is invalid for a model with {size} {what} (valid: 0..{size}).")
        return idx
    items = [sel] if isinstance(sel, int) else list(sel)
    if not items:
        raise ValueError(f"Empty {what} selection; the model has {size} {what}.")
    out = []
    for v in items:
        if not isinstance(v, int) or not -size <= v < size:
            raise ValueError(
                f"{what} index {v!r} is out of range for a model with {size} {what} (valid: {-size}..{size - 1})."
            )
        out.append(v % size)
    return out


def _reducer(fn: str | Callable, n: int, what: str) -> Callable[[torch.Tensor, int], torch.Tensor]:
    if callable(fn):
        return fn
    table: dict[str, Callable] = {
        "average": lambda x, dim: x.mean(dim),
        "mean": lambda x, dim: x.mean(dim),
        "max": lambda x, dim: x.amax(dim),
        "min": lambda x, dim: x.amin(dim),
        "single": lambda x, dim: x.squeeze(dim),
    }
    if fn not in table:
        raise ValueError(f"Unknown aggregate_{what}_fn {fn!r}. Valid: {', '.join(table)} or a callable.")
    if fn == "single" and n != 1:
        raise ValueError(f"aggregate_{what}_fn='single' needs exactly one {what[:-1]} selected, got {n}.")
    return table[fn]


def select_and_reduce(
    x: torch.Tensor,
    layers: Selection = -1,
    heads: Selection = None,
    aggregate_layers_fn: str | Callable = "average",
    aggregate_heads_fn: str | Callable = "average",
) -> torch.Tensor:
    """x (..., n_layers, n_heads) -> (...): select, reduce layers first, then heads."""
    n_layers, n_heads = x.shape[-2], x.shape[-1]
    li = select_indices(layers, n_layers, "layers")
    hi = select_indices(heads, n_heads, "heads")
    x = x[..., li, :][..., hi]  # (..., l, h)
    x = _reducer(aggregate_layers_fn, len(li), "layers")(x, -2)  # (..., h)
    return _reducer(aggregate_heads_fn, len(hi), "heads")(x, -1)
