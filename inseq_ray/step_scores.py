"""Step functions: pure functions of one generation step's next-token logits.

Every step function has the signature ``fn(args: StepFunctionArgs, **kwargs) -> Tensor (N,)``.
``args.logits`` is ``(N, V)`` — one row per (sequence, step) pair — and ``args.target_ids`` is
``(N,)``. The same function serves as a *step score* (``step_scores=[...]``) and as the
*attributed function* (``attributed_fn=...``): the engine feeds both from the one teacher-forced
forward pass, so a step score never costs an extra forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from inseq_ray.registry import lookup, register


@dataclass
class StepFunctionArgs:
    """Inputs of a step function.

    logits: (N, V) next-token logits, one row per attributed (sequence, step).
    target_ids: (N,) the token each row predicts.
    """

    logits: torch.Tensor
    target_ids: torch.Tensor


StepFunction = Callable[..., torch.Tensor]


def _target_logprob(args: StepFunctionArgs) -> torch.Tensor:
    """(N,) log-probability of each row's target, log-softmax in float32."""
    logprobs = F.log_softmax(args.logits.float(), dim=-1)  # (N, V)
    return logprobs.gather(-1, args.target_ids[:, None]).squeeze(-1)


def logit_fn(args: StepFunctionArgs) -> torch.Tensor:
    """(N,) raw logit of the target token."""
    return args.logits.float().gather(-1, args.target_ids[:, None]).squeeze(-1)


def probability_fn(args: StepFunctionArgs, logprob: bool = False) -> torch.Tensor:
    """(N,) softmax probability of the target token (its log with ``logprob=True``)."""
    lp = _target_logprob(args)
    return lp if logprob else lp.exp()


def entropy_fn(args: StepFunctionArgs) -> torch.Tensor:
    """(N,) entropy in nats of the next-token distribution."""
    logprobs = F.log_softmax(args.logits.float(), dim=-1)  # (N, V)
    return -(logprobs.exp() * logprobs).sum(-1)


def crossentropy_fn(args: StepFunctionArgs) -> torch.Tensor:
    """(N,) cross-entropy in nats of the target token: ``-log p(target)``."""
    return -_target_logprob(args)


def perplexity_fn(args: StepFunctionArgs) -> torch.Tensor:
    """(N,) per-token perplexity, ``exp(crossentropy)`` with the cross-entropy in nats.

    Inseq computes ``2 ** crossentropy`` with a natural-log cross-entropy, mixing bases; we use the
    consistent definition, so ``perplexity == 1 / probability``.
    """
    return crossentropy_fn(args).exp()


STEP_FUNCTIONS: dict[str, StepFunction] = {
    "logit": logit_fn,
    "probability": probability_fn,
    "entropy": entropy_fn,
    "crossentropy": crossentropy_fn,
    "perplexity": perplexity_fn,
}


def register_step_function(fn: StepFunction, identifier: str, overwrite: bool = False) -> None:
    """Register ``fn(args: StepFunctionArgs, **kwargs) -> Tensor (N,)`` under ``identifier``."""
    if not callable(fn):
        raise TypeError(f"Step function {identifier!r} must be callable, got {type(fn).__name__}.")
    register(STEP_FUNCTIONS, identifier, fn, "step function", overwrite)


def list_step_functions() -> list[str]:
    """The ids usable as ``step_scores`` and ``attributed_fn``."""
    return sorted(STEP_FUNCTIONS)


def get_step_function(fn: str | StepFunction) -> StepFunction:
    """Resolve an id (or pass a callable through)."""
    if callable(fn):
        return fn
    return lookup(STEP_FUNCTIONS, fn, "step function")


def step_function_name(fn: str | StepFunction) -> str:
    """The public id of ``fn`` (its registry id, or the callable's name)."""
    if isinstance(fn, str):
        return fn
    for key, value in STEP_FUNCTIONS.items():
        if value is fn:
            return key
    return getattr(fn, "__name__", repr(fn))
