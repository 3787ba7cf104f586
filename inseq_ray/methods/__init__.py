"""Registry of attribution methods: public id -> :class:`MethodSpec` (the function and what the rest of the
system needs to know about it, in one entry, as captum's capability flags and Inseq's method classes).

A method is ``fn(ctx: MethodContext, **kwargs) -> MethodResult``; its keyword arguments and their defaults
are its signature's (written there once). The spec adds how many input copies it stacks into one forward
(token-budget batching and the dry-run price read it), the granularity of its output, and whether it reads
baselines. Budget arguments (``n_steps``, ``n_samples``, ``patterns_per_forward``) are checked here, once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from inseq_ray.methods.alti import alti_plus
from inseq_ray.methods.attention import attention
from inseq_ray.methods.dummy import dummy
from inseq_ray.methods.gradient import deeplift, gradient_shap, input_x_gradient, integrated_gradients, saliency
from inseq_ray.methods.layer import layer_deeplift, layer_gradient_x_activation, layer_integrated_gradients
from inseq_ray.methods.lrp import attnlrp
from inseq_ray.methods.perturbation import occlusion
from inseq_ray.methods.sequential import sequential_integrated_gradients
from inseq_ray.methods.surrogate import lime
from inseq_ray.methods.value_zeroing import value_zeroing
from inseq_ray.registry import lookup, register

AttributionMethod = Callable[..., Any]
BUDGET_ARGS = ("n_steps", "n_samples", "patterns_per_forward")  # positive ints wherever a method takes them


def _one(kw: Mapping[str, Any]) -> int:
    return 1


@dataclass(frozen=True)
class MethodSpec:
    """One attribution method.

    fn: the schedule. copies: resolved arguments (defaults filled in) -> R, the input copies per row it stacks
    into one forward. granularity: its raw output's trailing dims ("hidden", "token", "layers", "layers x heads"
    with keep_all). baselines: whether its result depends on the baselines (``include_eos_baseline``).
    memory: the memory model's kind of its batches (``gradient``, ``attention``, ``forward``).
    """

    fn: AttributionMethod
    copies: Callable[[Mapping[str, Any]], int] = _one
    granularity: str = "hidden"
    baselines: bool = False
    memory: str = "gradient"  # what a batch holds at its peak (inseq_ray.memory): gradient, attention or forward

    def params(self) -> dict[str, Any]:
        """Keyword arguments -> defaults (``inspect.Parameter.empty`` for a required one)."""
        params = list(inspect.signature(self.fn).parameters.values())[1:]  # drop ctx
        return {p.name: p.default for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` with the defaults filled in, budget arguments checked."""
        out = {k: v for k, v in self.params().items() if v is not inspect.Parameter.empty}
        out.update(given)
        for name in BUDGET_ARGS:
            value = out.get(name)
            if name in out and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        return out

    def copies_for(self, given: Mapping[str, Any]) -> int:
        """R for these arguments (at least 1)."""
        return max(1, int(self.copies(self.resolve(given))))


def _arg(name: str) -> Callable[[Mapping[str, Any]], int]:
    def copies(kw: Mapping[str, Any]) -> int:
        return int(kw[name])

    return copies


MEMORY_KINDS = ("gradient", "attention", "forward")  # see inseq_ray.memory.predict_peak

METHODS: dict[str, MethodSpec] = {
    "saliency": MethodSpec(saliency),
    "input_x_gradient": MethodSpec(input_x_gradient),
    "integrated_gradients": MethodSpec(integrated_gradients, _arg("n_steps"), baselines=True),
    "deeplift": MethodSpec(deeplift, lambda kw: 2, baselines=True),
    "gradient_shap": MethodSpec(gradient_shap, _arg("n_samples"), baselines=True),
    "attention": MethodSpec(attention, granularity="token", memory="attention"),
    "occlusion": MethodSpec(occlusion, _arg("patterns_per_forward"), "token", baselines=True, memory="forward"),
    "value_zeroing": MethodSpec(value_zeroing, _arg("patterns_per_forward"), "layers", memory="forward"),
    "lime": MethodSpec(
        lime, lambda kw: min(int(kw["patterns_per_forward"]), int(kw["n_samples"])), baselines=True, memory="forward"
    ),
    "sequential_integrated_gradients": MethodSpec(sequential_integrated_gradients, _arg("n_steps"), baselines=True),
    "layer_gradient_x_activation": MethodSpec(layer_gradient_x_activation),
    "layer_integrated_gradients": MethodSpec(layer_integrated_gradients, _arg("n_steps"), baselines=True),
    "layer_deeplift": MethodSpec(layer_deeplift, lambda kw: 2, baselines=True),
    "dummy": MethodSpec(dummy, granularity="token", memory="forward"),
    "attnlrp": MethodSpec(attnlrp),
    "alti_plus": MethodSpec(alti_plus, granularity="token", memory="attention"),
}


def get_method_spec(method_id: str) -> MethodSpec:
    """The spec registered under ``method_id`` (error lists the valid ids)."""
    return lookup(METHODS, method_id, "attribution method")


def get_method(method_id: str) -> AttributionMethod:
    """The function registered under ``method_id`` (error lists the valid ids)."""
    return get_method_spec(method_id).fn


def method_copies(method_id: str, method_kw: Mapping[str, Any]) -> int:
    """How many copies of each batch row the method puts through one forward."""
    return get_method_spec(method_id).copies_for(method_kw)


def register_attribution_method(
    fn: AttributionMethod,
    identifier: str,
    overwrite: bool = False,
    copies: Callable[[Mapping[str, Any]], int] | None = None,
    granularity: str = "hidden",
    baselines: bool = False,
    memory: str = "gradient",
) -> None:
    """Add ``fn(ctx: MethodContext, **kwargs) -> MethodResult`` under ``identifier``.

    ``ctx.run(embeds, r, combine)`` gives one forward over R stacked copies and the per-step VJPs;
    see :mod:`inseq_ray.methods.gradient` for five examples. ``copies(method_kwargs) -> R`` (the arguments with
    the signature's defaults filled in) lets token-budget batching account for the copies (default 1); ``memory``
    is what its batches hold at their peak for the memory model (``gradient``, ``attention``, ``forward``).
    """
    if memory not in MEMORY_KINDS:
        raise ValueError(f"memory={memory!r}: valid are {', '.join(MEMORY_KINDS)}.")
    spec = MethodSpec(fn, copies or _one, granularity, baselines, memory)
    register(METHODS, identifier, spec, "attribution method", overwrite)


def list_feature_attribution_methods() -> list[str]:
    """Ids accepted by ``load_model(..., method)`` and ``attribute(method=...)``."""
    return sorted(METHODS)
