"""Perturbation methods: no gradients, one no-grad forward per perturbation pattern for every step at once.

Under causal masking a perturbed input's forward gives the perturbation's effect on every generation
step (step t only sees positions < its target), so a pattern costs one forward for all steps and all
sentences of the batch, where the per-step definition (Inseq's) reruns every pattern at every step.
"""

from __future__ import annotations

import torch

from inseq_ray.engine import MethodContext, MethodResult


def occlusion(ctx: MethodContext, patterns_per_forward: int = 16) -> MethodResult:
    """|f_t(x) - f_t(x with token i's embedding replaced by its baseline)| for each attributed token i and step t.

    captum ``Occlusion`` with Inseq's defaults: a (1, hidden) window (one token at a time), stride 1, UNK
    baselines (EOS and the decoder start token kept), each attributed side occluded on its own, and the
    absolute value Inseq takes. Coarse output: (T, B, L) per side, no hidden dimension.

    Forward budget per batch: 1 + (tokens of each attributed side), ``patterns_per_forward`` patterns
    stacked into each forward (rows = patterns x batch).
    """
    reference = ctx.attributed_values({}, 1)  # (B, T) f at the real inputs
    b, t = reference.shape
    out = {}
    for name in ctx.attributed:
        x, base = ctx.embeds[name], ctx.baselines[name]  # (B, L, H)
        length = x.shape[1]
        scores = torch.zeros((t, b, length), device=x.device, dtype=torch.float32)
        for start in range(0, length, patterns_per_forward):
            positions = torch.arange(start, min(length, start + patterns_per_forward), device=x.device)
            r = positions.numel()
            occluded = x[None].repeat(r, 1, 1, 1)  # (R, B, L, H): copy k has token positions[k] occluded
            occluded[torch.arange(r), :, positions] = base[:, positions].transpose(0, 1)
            values = ctx.attributed_values({name: occluded.flatten(0, 1)}, r).view(r, b, t)
            scores[:, :, positions] = (reference[None] - values).abs().permute(2, 1, 0)
        out[name] = scores
    return MethodResult(out, dims=())
