"""Sequential integrated gradients (Enguehard, 2023; Inseq's ``sequential_integrated_gradients``): integrated
gradients along one path per token, that token moving from its baseline to its input, the others kept at theirs.

For token i: (x_i - b_i) * sum_k w_k d f_t / d x_i at (x with x_i replaced by b_i + a_k (x_i - b_i)), captum's
quadrature as in ``integrated_gradients``. The paths of all tokens are R = tokens x ``n_steps`` stacked copies
of the batch; each forward takes ``internal_batch_size`` / B of them (default ``n_steps``: one token's path per
forward, the memory of one ``integrated_gradients`` forward), and serves every step at once.
"""

from __future__ import annotations

import torch

from inseq_ray.engine import MethodContext, MethodResult
from inseq_ray.methods.gradient import convergence_delta, quadrature


def sequential_integrated_gradients(
    ctx: MethodContext,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
) -> MethodResult:
    """Per-token integrated gradients (T, B, L, H); see the module docstring."""
    weights, alphas = quadrature(method, n_steps)
    b, device = ctx.batch.size, ctx.adapter.device
    copies = [  # (side, token, quadrature point): the target's last token is never an input
        (name, i, k) for name in ctx.attributed for i in range(_inputs(ctx, name)) for k in range(n_steps)
    ]
    per_forward = n_steps if internal_batch_size is None else max(1, internal_batch_size // b)
    total = {k: torch.zeros((ctx.n_steps, *ctx.embeds[k].shape), device=device) for k in ctx.attributed}
    for start in range(0, len(copies), per_forward):
        chunk = copies[start : start + per_forward]
        r = len(chunk)
        points = {name: ctx.embeds[name][None].repeat(r, 1, 1, 1) for name in ctx.attributed}  # (R, B, L, H)
        for c, (name, i, k) in enumerate(chunk):
            x, base = ctx.embeds[name][:, i], ctx.baselines[name][:, i]
            points[name][c, :, i] = base + alphas[k] * (x - base)

        def combine(name: str, g: torch.Tensor, chunk=chunk, r=r) -> torch.Tensor:
            g = g.view(r, b, *g.shape[1:])  # (R, B, L, H)
            out = torch.zeros_like(g[0])
            for c, (side, i, k) in enumerate(chunk):
                if side == name:
                    out[:, i] += weights[k] * g[c, :, i]
            return out

        for name, g in ctx.run({k: v.flatten(0, 1) for k, v in points.items()}, r, combine).items():
            total[name] += g
    attrs = {k: g * (ctx.embeds[k] - ctx.baselines[k]).float()[None] for k, g in total.items()}
    scores = {"deltas": convergence_delta(ctx, attrs)} if return_convergence_delta else {}
    return MethodResult(attrs, scores)


def _inputs(ctx: MethodContext, name: str) -> int:
    """How many leading tokens of side ``name`` are inputs of some step (the source: all of them)."""
    if name == "source":
        return ctx.embeds[name].shape[1]
    return int(ctx.plan.positions.max())
