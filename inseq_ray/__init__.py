"""inseq_ray: Inseq-compatible feature attribution for sequence generation, fast and at scale."""

from inseq_ray.aggregation import list_aggregation_functions, register_aggregation_function
from inseq_ray.attribution_model import AttributionModel, load_model
from inseq_ray.errors import (
    AttributionFileError,
    InputError,
    ModelConformanceError,
    NonFiniteAttributionError,
    Reason,
    UnknownIdError,
)
from inseq_ray.methods import list_feature_attribution_methods, register_attribution_method
from inseq_ray.output import (
    FeatureAttributionOutput,
    FeatureAttributionSequenceOutput,
    TokenWithId,
    merge_attributions,
)
from inseq_ray.step_scores import StepFunctionArgs, list_step_functions, register_step_function

__version__ = "0.1.0"

__all__ = [
    "AttributionFileError",
    "AttributionModel",
    "FeatureAttributionOutput",
    "FeatureAttributionSequenceOutput",
    "InputError",
    "ModelConformanceError",
    "NonFiniteAttributionError",
    "Reason",
    "StepFunctionArgs",
    "TokenWithId",
    "UnknownIdError",
    "list_aggregation_functions",
    "list_feature_attribution_methods",
    "list_step_functions",
    "load_model",
    "merge_attributions",
    "register_aggregation_function",
    "register_attribution_method",
    "register_step_function",
]
