"""Registry of attribution methods: public id -> ``fn(ctx: MethodContext, **kwargs) -> MethodResult``."""

from __future__ import annotations

from collections.abc import Callable

from inseq_ray.methods.attention import attention
from inseq_ray.methods.gradient import deeplift, gradient_shap, input_x_gradient, integrated_gradients, saliency
from inseq_ray.methods.layer import layer_deeplift, layer_gradient_x_activation, layer_integrated_gradients
from inseq_ray.methods.perturbation import occlusion
from inseq_ray.methods.sequential import sequential_integrated_gradients
from inseq_ray.methods.surrogate import lime
from inseq_ray.methods.value_zeroing import value_zeroing
from inseq_ray.registry import lookup, register

AttributionMethod = Callable[..., object]

METHODS: dict[str, AttributionMethod] = {
    "saliency": saliency,
    "input_x_gradient": input_x_gradient,
    "integrated_gradients": integrated_gradients,
    "deeplift": deeplift,
    "gradient_shap": gradient_shap,
    "attention": attention,
    "occlusion": occlusion,
    "value_zeroing": value_zeroing,
    "lime": lime,
    "sequential_integrated_gradients": sequential_integrated_gradients,
    "layer_gradient_x_activation": layer_gradient_x_activation,
    "layer_integrated_gradients": layer_integrated_gradients,
    "layer_deeplift": layer_deeplift,
}


# Input copies per row that a method stacks into one forward (for token-budget batching): R in ctx.run(..., R).
METHOD_COPIES: dict[str, Callable[[dict], int]] = {
    "integrated_gradients": lambda kw: int(kw.get("n_steps", 50)),
    "deeplift": lambda kw: 2,
    "gradient_shap": lambda kw: int(kw.get("n_samples", 5)),
    "occlusion": lambda kw: int(kw.get("patterns_per_forward", 16)),
    "value_zeroing": lambda kw: int(kw.get("patterns_per_forward", 16)),
    "sequential_integrated_gradients": lambda kw: int(kw.get("n_steps", 50)),
    "lime": lambda kw: min(int(kw.get("patterns_per_forward", 16)), int(kw.get("n_samples", 50))),
    "layer_integrated_gradients": lambda kw: int(kw.get("n_steps", 50)),
    "layer_deeplift": lambda kw: 2,
}


def method_copies(method_id: str, method_kw: dict) -> int:
    """How many copies of each batch row the method puts through one forward (1 unless registered)."""
    return max(1, METHOD_COPIES.get(method_id, lambda kw: 1)(method_kw))


def get_method(method_id: str) -> AttributionMethod:
    """The method registered under ``method_id`` (error lists the valid ids)."""
    return lookup(METHODS, method_id, "attribution method")


def register_attribution_method(
    fn: AttributionMethod, identifier: str, overwrite: bool = False, copies: Callable[[dict], int] | None = None
) -> None:
    """Add ``fn(ctx: MethodContext, **kwargs) -> MethodResult`` under ``identifier``.

    ``ctx.run(embeds, r, combine)`` gives one forward over R stacked copies and the per-step VJPs;
    see :mod:`inseq_ray.methods.gradient` for five examples. ``copies(method_kwargs) -> R`` lets
    token-budget batching account for the copies (default 1).
    """
    register(METHODS, identifier, fn, "attribution method", overwrite)
    if copies is not None:
        METHOD_COPIES[identifier] = copies


def list_feature_attribution_methods() -> list[str]:
    """Ids accepted by ``load_model(..., method)`` and ``attribute(method=...)``."""
    return sorted(METHODS)
