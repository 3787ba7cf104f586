"""inseq_ray: Inseq-compatible feature attribution for sequence generation, fast and at scale."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The facade resolves its names on first use (PEP 562), so ``import inseq_ray`` and the CLI's ``--help`` and
# argument errors do not import torch and transformers (seconds) before they are needed.
_EXPORTS = {
    "list_aggregation_functions": "inseq_ray.aggregation",
    "explain": "inseq_ray.identifiers",
    "list_aggregators": "inseq_ray.identifiers",
    "list_supported_frameworks": "inseq_ray.identifiers",
    "register_aggregation_function": "inseq_ray.aggregation",
    "AttributionModel": "inseq_ray.attribution_model",
    "attribute_context": "inseq_ray.context.procedure",
    "load_model": "inseq_ray.attribution_model",
    "AttributionFileError": "inseq_ray.errors",
    "InputError": "inseq_ray.errors",
    "ModelConformanceError": "inseq_ray.errors",
    "NonFiniteAttributionError": "inseq_ray.errors",
    "Reason": "inseq_ray.errors",
    "UnknownIdError": "inseq_ray.errors",
    "list_feature_attribution_methods": "inseq_ray.methods",
    "ModelConfig": "inseq_ray.models.families",
    "register_model_config": "inseq_ray.models.families",
    "register_attribution_method": "inseq_ray.methods",
    "FeatureAttributionOutput": "inseq_ray.output",
    "FeatureAttributionSequenceOutput": "inseq_ray.output",
    "TokenWithId": "inseq_ray.output",
    "merge_attributions": "inseq_ray.output",
    "show_attributions": "inseq_ray.viz_views",
    "show_granular_attributions": "inseq_ray.viz_views",
    "show_token_attributions": "inseq_ray.viz_views",
    "StepFunctionArgs": "inseq_ray.step_scores",
    "list_step_functions": "inseq_ray.step_scores",
    "register_step_function": "inseq_ray.step_scores",
}

if TYPE_CHECKING:  # the names as a type checker (and an IDE) sees them
    from inseq_ray.aggregation import list_aggregation_functions, register_aggregation_function
    from inseq_ray.attribution_model import AttributionModel, load_model
    from inseq_ray.context.procedure import attribute_context
    from inseq_ray.errors import (
        AttributionFileError,
        InputError,
        ModelConformanceError,
        NonFiniteAttributionError,
        Reason,
        UnknownIdError,
    )
    from inseq_ray.identifiers import explain, list_aggregators, list_supported_frameworks
    from inseq_ray.methods import list_feature_attribution_methods, register_attribution_method
    from inseq_ray.models.families import ModelConfig, register_model_config
    from inseq_ray.output import (
        FeatureAttributionOutput,
        FeatureAttributionSequenceOutput,
        TokenWithId,
        merge_attributions,
    )
    from inseq_ray.step_scores import StepFunctionArgs, list_step_functions, register_step_function
    from inseq_ray.viz_views import show_attributions, show_granular_attributions, show_token_attributions


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'inseq_ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"

__all__ = [
    "AttributionFileError",
    "AttributionModel",
    "FeatureAttributionOutput",
    "FeatureAttributionSequenceOutput",
    "InputError",
    "ModelConfig",
    "ModelConformanceError",
    "NonFiniteAttributionError",
    "Reason",
    "StepFunctionArgs",
    "TokenWithId",
    "UnknownIdError",
    "attribute_context",
    "explain",
    "list_aggregation_functions",
    "list_aggregators",
    "list_feature_attribution_methods",
    "list_step_functions",
    "list_supported_frameworks",
    "load_model",
    "merge_attributions",
    "register_aggregation_function",
    "register_attribution_method",
    "register_model_config",
    "register_step_function",
    "show_attributions",
    "show_granular_attributions",
    "show_token_attributions",
]
