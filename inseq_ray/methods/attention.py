"""Attention attribution (``method="attention"``): raw attention weights from one forward pass.

Encoder-decoder: cross-attention over the source (plus decoder self-attention over the target
prefix with ``attribute_target=True``). Decoder-only: self-attention over the prefix. Step t reads
the attention row of the query position that predicts target t.

Selection follows the seed release: ``layers``/``heads`` take an int, a ``(start, end)`` tuple
(end exclusive) or a list of indices (negatives allowed); layers are aggregated first
(``aggregate_layers_fn``), then heads (``aggregate_heads_fn``): ``"average"``/``"mean"``, ``"max"``,
``"min"``, ``"single"`` (one index only) or a callable ``fn(x, dim) -> x reduced``. Default: the
average over all heads of the last layer. ``keep_all=True`` keeps the whole
``[tokens, steps, layers, heads]`` tensor instead, to select at aggregation time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from inseq_ray.aggregation import Selection, select_and_reduce
from inseq_ray.engine import MethodContext, MethodResult


def attention(
    ctx: MethodContext,
    layers: Selection = -1,
    heads: Selection = None,
    aggregate_layers_fn: str | Callable = "average",
    aggregate_heads_fn: str | Callable = "average",
    keep_all: bool = False,
) -> MethodResult:
    """Attention weights of the step rows; see the module docstring for the selection semantics."""
    with torch.no_grad():
        out = ctx.adapter.attention_forward(ctx.forward_inputs({}, 1))
    ctx.cache_input_logits(out.logits)
    pos = (ctx.plan.positions - 1).clamp(min=0)  # (B, T) query rows
    maps = {"target": out.decoder_attentions if ctx.adapter.is_encoder_decoder else out.attentions}
    if ctx.adapter.is_encoder_decoder:
        maps["source"] = out.cross_attentions
    result = {}
    for name in ctx.attributed:
        per_layer = [  # each layer's (B, H, Q, K) weights -> the step rows (B, H, T, K), before anything is stacked
            a.gather(2, pos[:, None, :, None].expand(-1, a.shape[1], -1, a.shape[3])) for a in maps[name]
        ]
        rows = torch.stack(per_layer, dim=-1).permute(2, 0, 3, 4, 1).float()  # (T, B, K, n_layers, H)
        if not keep_all:
            rows = select_and_reduce(rows, layers, heads, aggregate_layers_fn, aggregate_heads_fn)[..., None]
        result[name] = rows
    dims = ("layers", "heads") if keep_all else ()
    return MethodResult({k: v if keep_all else v[..., 0] for k, v in result.items()}, dims=dims)
