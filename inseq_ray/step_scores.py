"""Step functions: pure functions of one generation step's next-token logits.

Every step function has the signature ``fn(args: StepFunctionArgs, **kwargs) -> Tensor (N,)``.
``args.logits`` is ``(N, V)`` — one row per (sequence, step) pair — and ``args.target_ids`` is
``(N,)``. The same function serves as a *step score* (``step_scores=[...]``) and as the
*attributed function* (``attributed_fn=...``): the engine feeds both from the one teacher-forced
forward pass, so a step score never costs an extra forward.

Contrastive functions (``fn.contrastive = True``) also read ``args.contrast``: the contrast forward's
logits at each row's aligned step and the contrast target ids, prepared once per batch by
:mod:`inseq_ray.contrast` (one extra forward per batch, none when only contrast ids are needed).
Functions that need other per-batch work declare ``fn.prepare(ctx, **kwargs) -> {name: (B, T, ...)}``;
its values reach each row as ``args.extras[name]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from inseq_ray.models.adapter import ForwardInputs
from inseq_ray.randomness import record_seed
from inseq_ray.registry import lookup, register
from inseq_ray.rows import gather_rows


@dataclass
class StepFunctionArgs:
    """Inputs of a step function.

    logits: (N, V) next-token logits, one row per attributed (sequence, step).
    target_ids: (N,) the token each row predicts.
    """

    logits: torch.Tensor
    target_ids: torch.Tensor
    contrast: ContrastRows | None = None
    is_attributed_fn: bool = False  # True when the engine differentiates this call
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N, ...) prepared per batch


@dataclass
class ContrastRows:
    """The contrast side of each row (Inseq's contrastive inputs, prepared per batch).

    target_ids: (N,) the contrast token aligned with each row's step.
    logits: (N, V) the contrast forward's next-token logits at that step, or None when not computed (only
        the contrast ids are needed when an attributed function uses the original forward).
    force_inputs: ``contrast_force_inputs``: an attributed function uses the contrast forward too.
    """

    target_ids: torch.Tensor
    logits: torch.Tensor | None
    force_inputs: bool = False


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


# ---- contrastive functions (Inseq's ids and formulas) -----------------------------------------------
def contrastive(fn: StepFunction) -> StepFunction:
    """Mark ``fn`` as reading ``args.contrast`` (so ``attribute()`` prepares the contrast inputs)."""
    fn.contrastive = True  # type: ignore[attr-defined]
    return fn


def _contrast_args(args: StepFunctionArgs) -> StepFunctionArgs:
    """The contrast side as Inseq computes it: logits of the contrast forward with the contrast target ids;
    as an attributed function (unless ``contrast_force_inputs``), the original forward's logits with the
    contrast target ids (Yin & Neubig's "this token rather than that one", the gradient-friendly form)."""
    c = args.contrast
    if c is None:
        raise ValueError(
            "a contrastive step function needs contrast_targets (or, for encoder-decoder models, contrast_sources)."
        )
    use_original = args.is_attributed_fn and not c.force_inputs
    logits = args.logits if use_original else c.logits
    if logits is None:  # the engine computes contrast logits whenever this branch can be reached
        raise RuntimeError("contrast logits were not prepared for this call.")
    return StepFunctionArgs(logits, c.target_ids, is_attributed_fn=args.is_attributed_fn)


@contrastive
def contrast_logits_fn(args: StepFunctionArgs) -> torch.Tensor:
    """(N,) logit of the contrast target given the contrast inputs."""
    return logit_fn(_contrast_args(args))


@contrastive
def contrast_prob_fn(args: StepFunctionArgs, logprob: bool = False) -> torch.Tensor:
    """(N,) probability (log with ``logprob``) of the contrast target given the contrast inputs."""
    return probability_fn(_contrast_args(args), logprob=logprob)


@contrastive
def contrast_logits_diff_fn(args: StepFunctionArgs) -> torch.Tensor:
    """(N,) ``logit(target | inputs) - logit(contrast target | contrast inputs)`` (Yin & Neubig 2022)."""
    return logit_fn(args) - contrast_logits_fn(args)


@contrastive
def contrast_prob_diff_fn(args: StepFunctionArgs, logprob: bool = False) -> torch.Tensor:
    """(N,) ``p(target | inputs) - p(contrast target | contrast inputs)`` (log-probabilities with ``logprob``)."""
    return probability_fn(args, logprob=logprob) - contrast_prob_fn(args, logprob=logprob)


@contrastive
def pcxmi_fn(args: StepFunctionArgs) -> torch.Tensor:
    """(N,) P-CXMI as Inseq computes it: ``-log2(p(target | inputs) / p(contrast target | contrast inputs))``."""
    return (contrast_prob_fn(args, logprob=True) - probability_fn(args, logprob=True)) / math.log(2)


@contrastive
def in_context_pvi_fn(args: StepFunctionArgs) -> torch.Tensor:
    """(N,) in-context PVI (Lu et al. 2023): ``-log p(target | inputs) + log p(contrast target | contrast inputs)``
    in nats."""
    return -probability_fn(args, logprob=True) + contrast_prob_fn(args, logprob=True)


def top_p_mask(logits: torch.Tensor, top_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """(N, V) True where a token falls outside the smallest set whose probability reaches ``top_p``."""
    if not 0 <= top_p <= 1:
        raise ValueError(f"top_p must be within [0, 1], got {top_p!r}.")
    if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be a positive int, got {min_tokens_to_keep!r}.")
    sorted_logits, order = torch.sort(logits.float(), descending=False)
    remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p  # the low tail that stays under 1 - top_p
    remove[..., -min_tokens_to_keep:] = False
    return remove.scatter(-1, order, remove)


@contrastive
def kl_divergence_fn(
    args: StepFunctionArgs, top_k: int = 0, top_p: float = 1.0, min_tokens_to_keep: int = 1
) -> torch.Tensor:
    """(N,) ``KL(P || Q) = sum_v P(v) (log P(v) - log Q(v))``, P the original and Q the contrast next-token
    distribution, both restricted to the tokens kept by ``top_p`` then ``top_k`` filtering of the summed
    logits (Inseq's "merged" strategy) and renormalised. Tokens filtered out contribute nothing (Inseq's
    ``F.kl_div`` returns NaN once any token is filtered)."""
    c = args.contrast
    if c is not None and args.is_attributed_fn and not c.force_inputs:
        raise ValueError(
            "kl_divergence as attributed_fn compares the original and the contrast forward: pass "
            "contrast_force_inputs=True (as in Inseq); the contrast forward is a constant of the attribution."
        )
    original = args.logits.float()
    contrast = _contrast_args(args).logits.float()
    vocab = original.shape[-1]
    if not 0 <= top_k <= vocab:
        raise ValueError(f"top_k must be within [0, {vocab}], got {top_k!r}.")
    removed = torch.zeros_like(original, dtype=torch.bool)
    if top_p < 1.0:
        removed |= top_p_mask(original + contrast, top_p, min_tokens_to_keep)
    if top_k > 0:
        merged = (original + contrast).masked_fill(removed, float("-inf"))
        kth = merged.topk(max(top_k, min_tokens_to_keep), dim=-1).values[..., -1:]
        removed |= merged < kth
    log_p = F.log_softmax(original.masked_fill(removed, float("-inf")), dim=-1)
    log_q = F.log_softmax(contrast.masked_fill(removed, float("-inf")), dim=-1)
    terms = torch.where(removed, torch.zeros_like(log_p), log_p.exp() * (log_p - log_q))
    return terms.sum(-1)


def top_p_size_fn(args: StepFunctionArgs, top_p: float) -> torch.Tensor:
    """(N,) how many tokens the ``top_p`` nucleus of each row holds (Inseq returns one count per batch)."""
    return (~top_p_mask(args.logits, top_p)).sum(-1).float()


# ---- MC dropout -----------------------------------------------------------------------------------
def mc_dropout_prob_avg_fn(
    args: StepFunctionArgs, n_mcd_steps: int = 5, logprob: bool = False, seed: int = 0
) -> torch.Tensor:
    """(N,) ``(p - mean(p~)) / std(p~)``: the target probability (log with ``logprob``) z-scored against
    ``n_mcd_steps`` forwards with dropout active (p~, prepared once per batch at the real inputs, each record
    alone with dropout masks seeded from ``seed`` and the record; unbiased std as Inseq's). As attributed
    function the dropout statistics are constants: the gradient is p's."""
    noisy = args.extras["mc_dropout_logprobs"]  # (N, n_mcd_steps)
    noisy = noisy if logprob else noisy.exp()
    return (probability_fn(args, logprob=logprob) - noisy.mean(-1)) / noisy.std(-1)


def _prepare_mc_dropout(ctx, n_mcd_steps: int = 5, logprob: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """n_mcd_steps no-grad forwards of the batch with dropout on -> (B, T, n) target log-probabilities."""
    if not isinstance(n_mcd_steps, int) or n_mcd_steps < 2:
        raise ValueError(f"n_mcd_steps must be an int >= 2 (a standard deviation needs two), got {n_mcd_steps!r}.")
    runs = torch.stack(dropout_logprobs(ctx, n_mcd_steps, seed), dim=-1)  # (B, T, n)
    spread = runs.std(-1)[ctx.plan.valid]
    if spread.numel() and not bool((spread > 0).any()):
        raise ValueError(
            "mc_dropout_prob_avg: every dropout forward gave the same probabilities: the model has no active "
            "dropout (dropout rates are 0 in its config); use a model trained with dropout."
        )
    return {"mc_dropout_logprobs": runs}


mc_dropout_prob_avg_fn.prepare = _prepare_mc_dropout  # type: ignore[attr-defined]


@torch.no_grad()
def dropout_logprobs(ctx, n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` forwards of ``ctx``'s batch (a MethodContext) at the real inputs with dropout active -> each (B, T)
    target log-probabilities.

    Per record: each row runs alone, unpadded, with torch's generators seeded from ``seed`` and the row's
    key (and restored afterwards), so its dropout masks never depend on the batch it is in. Every
    module's training flag is restored afterwards, also on error (actors reuse the model).
    """
    model = ctx.adapter.model
    flags = {m: m.training for m in model.modules()}
    rows = []
    try:
        model.train()
        for b in range(ctx.batch.size):
            rows.append(_row_dropout_logprobs(ctx, b, n, record_seed(seed, ctx.row_keys[b], "mc_dropout")))
    finally:
        for m, flag in flags.items():
            m.train(flag)
    return [torch.cat([r[i] for r in rows]) for i in range(n)]


def _row_dropout_logprobs(ctx, b: int, n: int, seed: int) -> list[torch.Tensor]:
    """Row ``b`` alone, trimmed to its real tokens: ``n`` dropout forwards -> each (1, T) log-probabilities."""
    batch, plan, adapter = ctx.batch, ctx.plan, ctx.adapter
    lt = int(batch.target_mask[b].sum())
    ls = None if batch.source_mask is None else int(batch.source_mask[b].sum())
    inputs = ForwardInputs(
        target_ids=batch.target_ids[b : b + 1, :lt],
        target_mask=batch.target_mask[b : b + 1, :lt],
        source_ids=None if ls is None else batch.source_ids[b : b + 1, :ls],
        source_mask=None if ls is None else batch.source_mask[b : b + 1, :ls],
    )
    positions, targets = (plan.positions[b : b + 1] - 1).clamp(max=lt - 1), plan.target_ids[b : b + 1]
    devices = [adapter.device] if adapter.device.type == "cuda" else []
    out = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for _ in range(n):
            logits = adapter.head(gather_rows(adapter.states(inputs), positions).flatten(0, 1)).float()
            out.append(logits.log_softmax(-1).gather(-1, targets.flatten()[:, None]).view(1, -1))
    return out


STEP_FUNCTIONS: dict[str, StepFunction] = {
    "logit": logit_fn,
    "probability": probability_fn,
    "entropy": entropy_fn,
    "crossentropy": crossentropy_fn,
    "perplexity": perplexity_fn,
    "contrast_logits": contrast_logits_fn,
    "contrast_prob": contrast_prob_fn,
    "contrast_logits_diff": contrast_logits_diff_fn,
    "contrast_prob_diff": contrast_prob_diff_fn,
    "pcxmi": pcxmi_fn,
    "kl_divergence": kl_divergence_fn,
    "in_context_pvi": in_context_pvi_fn,
    "mc_dropout_prob_avg": mc_dropout_prob_avg_fn,
    "top_p_size": top_p_size_fn,
}


def is_contrastive(fn: StepFunction) -> bool:
    return bool(getattr(fn, "contrastive", False))


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
