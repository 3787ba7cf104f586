"""Gradient attribution methods, each a pure schedule over :meth:`MethodContext.run`.

All return per-step attributions (T, B, L, H) in float32 for every attributed input. The
definitions follow captum's (which Inseq wraps): saliency is ``|grad|``, input x gradient is
``x * grad``, integrated gradients uses captum's quadrature rules, DeepLift uses the rescale rule on
elementwise nonlinear modules and multiplies by ``(x - baseline)``, GradientSHAP averages
``(x_noisy - baseline) * grad`` at random points between baseline and noisy input.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from functools import reduce

import torch
from torch import nn

from inseq_ray.engine import MethodContext, MethodResult
from inseq_ray.randomness import RowRandom


def _identity(name: str, g: torch.Tensor) -> torch.Tensor:
    return g


def saliency(ctx: MethodContext, abs: bool = True) -> MethodResult:
    """|d f_t / d x| for every step t (captum ``Saliency``, ``abs=True`` by default)."""
    grads = ctx.run(ctx.attributed_embeds(), 1, _identity, at_input=True)
    return MethodResult({k: g.abs() if abs else g for k, g in grads.items()})


def input_x_gradient(ctx: MethodContext) -> MethodResult:
    """x * d f_t / d x (captum ``InputXGradient``)."""
    grads = ctx.run(ctx.attributed_embeds(), 1, _identity, at_input=True)
    return MethodResult({k: g * ctx.embeds[k].float()[None] for k, g in grads.items()})


def integrated_gradients(
    ctx: MethodContext,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
) -> MethodResult:
    """(x - b) * sum_k w_k d f_t/d x (b + a_k (x - b)), captum's quadrature (``method``) and weights."""
    weights, alphas = quadrature(method, n_steps)
    b = ctx.batch.size
    per_chunk = n_steps if internal_batch_size is None else max(1, internal_batch_size // b)
    total: dict[str, torch.Tensor] = {}
    for s in range(0, n_steps, per_chunk):
        a = torch.tensor(alphas[s : s + per_chunk], device=ctx.adapter.device)  # (R,)
        w = torch.tensor(weights[s : s + per_chunk], device=ctx.adapter.device, dtype=torch.float32)
        r = a.shape[0]
        scaled = {k: _interpolate(ctx.baselines[k], ctx.embeds[k], a) for k in ctx.attributed}

        def combine(name: str, g: torch.Tensor, w=w, r=r) -> torch.Tensor:
            return (g.view(r, b, *g.shape[1:]) * w.view(r, 1, 1, 1)).sum(0)

        for k, g in ctx.run(scaled, r, combine).items():
            total[k] = total[k] + g if k in total else g
    attrs = {k: g * (ctx.embeds[k] - ctx.baselines[k]).float()[None] for k, g in total.items()}
    scores = {"deltas": convergence_delta(ctx, attrs)} if return_convergence_delta else {}
    return MethodResult(attrs, scores)


def quadrature(method: str, n_steps: int) -> tuple[list[float], list[float]]:
    """captum's (weights, alphas) of the integration rule ``method`` with ``n_steps`` points."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes_fn, alphas_fn = approximation_parameters(method)
    return step_sizes_fn(n_steps), alphas_fn(n_steps)


def deeplift(ctx: MethodContext, eps: float = 1e-10) -> MethodResult:
    """(x - b) * DeepLift multipliers: one forward over [inputs; baselines] with rescale hooks."""
    b = ctx.batch.size
    stacked = {k: torch.cat([ctx.embeds[k], ctx.baselines[k]]) for k in ctx.attributed}  # (2B, L, H)

    def first_half(name: str, g: torch.Tensor) -> torch.Tensor:
        return g[:b]

    axis = ctx.adapter.activation_batch_axis(RESCALE_MODULES)
    with deeplift_rescale(ctx.adapter.model, eps, axis):
        grads = ctx.run(stacked, 2, first_half, at_input=True)
    return MethodResult({k: g * (ctx.embeds[k] - ctx.baselines[k]).float()[None] for k, g in grads.items()})


def gradient_shap(
    ctx: MethodContext,
    n_samples: int = 5,
    stdevs: float = 0.0,
    generator: torch.Generator | int | None = None,
) -> MethodResult:
    """mean_s (x + e_s - b) * d f_t/d x at b + a_s (x + e_s - b), e_s ~ N(0, stdevs), a_s ~ U(0, 1)."""
    b = ctx.batch.size
    noise, alphas = gradient_shap_draws(ctx, n_samples, stdevs, ctx.row_random(generator))
    noisy = {k: ctx.embeds[k][None] + noise[k] for k in ctx.attributed}  # (S, B, L, H)
    points = {
        k: (ctx.baselines[k][None] + alphas.view(n_samples, b, 1, 1) * (noisy[k] - ctx.baselines[k][None])).flatten(
            0, 1
        )
        for k in ctx.attributed
    }

    def combine(name: str, g: torch.Tensor) -> torch.Tensor:
        diff = (noisy[name] - ctx.baselines[name][None]).float()  # (S, B, L, H)
        return (g.view(n_samples, b, *g.shape[1:]) * diff).mean(0)

    return MethodResult(ctx.run(points, n_samples, combine))


def gradient_shap_draws(
    ctx: MethodContext, n_samples: int, stdevs: float, rows: RowRandom
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The random draws of GradientSHAP, per record (``rows``): noise name -> (S, B, L, H) over each row's real
    tokens (0 on padding) and alphas (S, B)."""
    ref = ctx.embeds[ctx.attributed[0]]
    noise = {
        k: rows.randn((n_samples,), ctx.real_lengths(k), ctx.embeds[k].shape[1:], f"shap noise {k}").to(
            ref.device, ref.dtype
        )
        * stdevs
        for k in ctx.attributed
    }
    alphas = rows.rand_rows((n_samples,), "shap alphas").to(ref.device, ref.dtype)
    return noise, alphas


def convergence_delta(ctx: MethodContext, attrs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T) completeness error: sum of all attributions minus (f(x) - f(baseline))."""
    total = reduce(operator.add, (a.nan_to_num().sum(dim=(2, 3)) for a in attrs.values())).T  # (B, T)
    at_input = ctx.step_values(ctx.fn, ctx.fn_kwargs, attributed=True)
    at_baseline = ctx.attributed_values({k: ctx.baselines[k] for k in ctx.attributed})
    return total - (at_input - at_baseline)


def _interpolate(base: torch.Tensor, x: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """base, x (B, L, H); alphas (R,) -> (R*B, L, H) points base + a (x - base)."""
    return (base[None] + alphas.view(-1, 1, 1, 1).to(x.dtype) * (x - base)[None]).flatten(0, 1)


RESCALE_MODULES = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus)


@contextlib.contextmanager
def deeplift_rescale(model: nn.Module, eps: float = 1e-10, axis: int = 0) -> Iterator[None]:
    """Apply DeepLift's rescale rule to elementwise nonlinear modules; hooks removed on exit.

    The module input is [inputs; baselines] stacked on the batch axis (``axis``: 0, or 1 for
    time-first models). Its output keeps its value but its gradient becomes delta_out / delta_in
    (the plain gradient where |delta_in| < eps).
    """
    hook = _rescale_hook(eps, axis)
    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in RESCALE_MODULES]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _rescale_hook(eps: float, axis: int = 0):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        inp = inputs[0].movedim(axis, 0)  # (2N, ...): inputs then baselines
        out = output.movedim(axis, 0)
        half = inp.shape[0] // 2
        d_in = (inp[:half] - inp[half:]).detach().repeat(2, *[1] * (inp.dim() - 1))
        d_out = (out[:half] - out[half:]).detach().repeat(2, *[1] * (inp.dim() - 1))
        small = d_in.abs() < eps
        multiplier = torch.where(small, torch.zeros_like(d_in), d_out / torch.where(small, torch.ones_like(d_in), d_in))
        rescaled = out.detach() + (inp - inp.detach()) * multiplier
        return torch.where(small, out, rescaled).movedim(0, axis)

    return hook
