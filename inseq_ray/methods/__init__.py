"""Registry of attribution methods: public id -> ``fn(ctx: MethodContext, **kwargs) -> MethodResult``."""

from __future__ import annotations

from collections.abc import Callable

from inseq_ray.methods.attention import attention
from inseq_ray.methods.gradient import deeplift, gradient_shap, input_x_gradient, integrated_gradients, saliency
from inseq_ray.registry import lookup, register

AttributionMethod = Callable[..., object]

METHODS: dict[str, AttributionMethod] = {
    "saliency": saliency,
    "input_x_gradient": input_x_gradient,
    "integrated_gradients": integrated_gradients,
    "deeplift": deeplift,
    "gradient_shap": gradient_shap,
    "attention": attention,
}


def get_method(method_id: str) -> AttributionMethod:
    """The method registered under ``method_id`` (error lists the valid ids)."""
    return lookup(METHODS, method_id, "attribution method")


def register_attribution_method(fn: AttributionMethod, identifier: str, overwrite: bool = False) -> None:
    """Add ``fn(ctx: MethodContext, **kwargs) -> MethodResult`` under ``identifier``.

    ``ctx.run(embeds, r, combine)`` gives one forward over R stacked copies and the per-step VJPs;
    see :mod:`inseq_ray.methods.gradient` for five examples.
    """
    register(METHODS, identifier, fn, "attribution method", overwrite)


def list_feature_attribution_methods() -> list[str]:
    """Ids accepted by ``load_model(..., method)`` and ``attribute(method=...)``."""
    return sorted(METHODS)
