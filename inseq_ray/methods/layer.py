"""Layer methods: captum's layer attributions, each the input method run with a layer's output as the input.

``target_layer`` (a dotted module name or a module of the model; default: the input embeddings, where each
equals its input method) is captured at the inputs and at the baselines, and substituted in the one forward
(see :meth:`MethodContext.at_layer`): the rest of the schedule, and its forward budget, is the input method's.
Attributions are per position of the layer's side (encoder layers: source tokens; decoder layers and
decoder-only models: target tokens), granular over the layer's hidden size.
"""

from __future__ import annotations

import torch

from inseq_ray.engine import MethodContext, MethodResult
from inseq_ray.methods.gradient import deeplift, input_x_gradient, integrated_gradients


def _at(ctx: MethodContext, target_layer) -> MethodContext:
    return ctx if target_layer is None else ctx.at_layer(target_layer)


def layer_gradient_x_activation(ctx: MethodContext, target_layer=None) -> MethodResult:
    """a(x) * d f_t / d a, a the layer's output (captum ``LayerGradientXActivation``)."""
    return input_x_gradient(_at(ctx, target_layer))


def layer_integrated_gradients(
    ctx: MethodContext,
    target_layer=None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
) -> MethodResult:
    """(a(x) - a(b)) * sum_k w_k d f_t / d a at a(b) + alpha_k (a(x) - a(b)) (captum ``LayerIntegratedGradients``)."""
    return integrated_gradients(_at(ctx, target_layer), n_steps, method, internal_batch_size, return_convergence_delta)


def layer_deeplift(ctx: MethodContext, target_layer=None, eps: float = 1e-10) -> MethodResult:
    """(a(x) - a(b)) * DeepLift multipliers from the layer on (captum ``LayerDeepLift``, rescale rule). As in
    captum, the baseline half runs every attributed input at its baseline (e.g. the decoder's target prefix
    when an encoder layer is attributed), not only the layer."""
    if target_layer is None:
        return deeplift(ctx, eps)
    under = {k: torch.cat([ctx.embeds[k], ctx.baselines[k]]) for k in ctx.attributed}  # (2B, L, H)
    return deeplift(ctx.at_layer(target_layer, context_embeds=under), eps)
