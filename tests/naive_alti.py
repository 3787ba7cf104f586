"""An independent ALTI+ reference, one prefix and one layer at a time, from the model's own forward.

Each token's vector ``T_i(j)`` is measured, not rebuilt: the attention module's output minus its output with
token j's value vectors zeroed (``tests.naive._value_zeroer``, each family's modeling code), the layer's input
clean. Streams are the blocks' own inputs; the norm structure is written out per family from its modeling code
(post-norm BART/Marian/FSMT/OPT-350m, Gemma 2's norm of the attention output, Bloom's attention adding the
residual itself), a LayerNorm linearised from its parameters, an RMS norm by its elementwise gain on this row.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.naive import _decoder_block_list, _value_zeroer, embed_pieces

ATTENTION_PATHS = {
    "t5": ("layer.0.SelfAttention", "layer.1.EncDecAttention"),
    "gpt2": ("attn", None),
    "gpt_neox": ("attention", None),
    "bloom": ("self_attention", None),
    "falcon": ("self_attention", None),
}
POST_NORMS = ("self_attn_layer_norm", "encoder_attn_layer_norm")


def naive_alti(am, source: str, target: str) -> dict[str, torch.Tensor]:
    """side -> (tokens, n_steps) ALTI+ shares of each step's predicting row (target tokens from the step on NaN)."""
    model, enc_dec = am.model, am.is_encoder_decoder
    src_ids, tgt_ids, start = embed_pieces(am, source, target)

    def runner(prefix):
        def run():
            with torch.no_grad():
                if enc_dec:
                    model(input_ids=src_ids[None], decoder_input_ids=prefix[None], use_cache=False)
                else:
                    model(input_ids=prefix[None], use_cache=False)

        return run

    n_src = len(src_ids) if enc_dec else 0
    r_enc = None
    if enc_dec:
        r_enc = torch.eye(n_src, dtype=torch.float64)
        encoder = model.get_encoder()
        blocks = encoder.block if hasattr(encoder, "block") else encoder.layers
        for (c,) in _stack(am, blocks, ("self",), runner(tgt_ids[:1])):
            r_enc = c @ r_enc
    cols: dict[str, list] = {"source": [], "target": []}
    for p in range(start, len(tgt_ids)):
        kinds = ("self", "cross") if enc_dec else ("self",)
        r = torch.cat([torch.zeros(p, n_src, dtype=torch.float64), torch.eye(p, dtype=torch.float64)], 1)
        for per_kind in _stack(am, _decoder_block_list(model, enc_dec), kinds, runner(tgt_ids[:p]), n_src):
            r = per_kind[0] @ r
            if enc_dec:
                c = per_kind[1]
                r = c[:, :1] * r + c[:, 1:] @ torch.cat([r_enc, torch.zeros(n_src, p, dtype=torch.float64)], 1)
        row = r[p - 1]
        cols["source"].append(row[:n_src])
        cols["target"].append(torch.cat([row[n_src:], torch.full((len(tgt_ids) - p,), float("nan"))]))
    return {k: torch.stack(v, 1).float() for k, v in cols.items() if k == "target" or enc_dec}


def _stack(am, blocks, kinds, run, n_src: int = 0) -> list[list[torch.Tensor]]:
    """Per block, per attention kind, its (Q, K) contributions ((Q, 1 + K) for cross-attention)."""
    family = am.model.config.get_text_config().model_type
    paths = ATTENTION_PATHS.get(family, ("self_attn", "encoder_attn"))
    out = []
    for block in blocks:
        modules = [block.get_submodule(paths[0 if k == "self" else 1]) for k in kinds]
        stream, *clean = _captured(family, run, block, modules)
        per_kind = []
        for kind, module, a in zip(kinds, modules, clean):
            keys = a.shape[0] if kind == "self" else n_src
            t = torch.stack([a - _without(am, run, block, module, kind, j) for j in range(keys)], 1)  # (Q, K, D)
            c, stream = _shares(am, family, block, kind, stream, a, t)
            per_kind.append(c)
        out.append(per_kind)
    return out


def _captured(family, run, block, modules) -> list[torch.Tensor]:
    """[the block's input, each module's output] (Q, D) of batch row 0 in one clean forward."""
    seen: dict[int, torch.Tensor] = {}

    def first(x):
        x = x[0] if isinstance(x, tuple) else x
        return (x[:, 0] if family == "fsmt" else x[0]).double()

    def pre(m, args, kwargs):
        seen[-1] = first(args[0] if args else kwargs["hidden_states"])

    handles = [block.register_forward_pre_hook(pre, with_kwargs=True)]
    for i, m in enumerate(modules):
        handles.append(m.register_forward_hook(lambda mod, a, o, i=i: seen.__setitem__(i, first(o))))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return [seen[-1], *(seen[i] for i in range(len(modules)))]


def _without(am, run, block, module, kind, j) -> torch.Tensor:
    """(Q, D) the module's output with token j's values zeroed."""
    family = am.model.config.get_text_config().model_type
    zero_module, hook = _value_zeroer(am.model, block, kind, j, None)
    handle = zero_module.register_forward_hook(hook)
    try:
        return _captured(family, run, block, [module])[1]
    finally:
        handle.remove()


def _shares(am, family, block: nn.Module, kind: str, stream, a, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, K[+1]) shares and the stream after the attention, by the family's norm structure."""
    cfg = am.model.config.get_text_config()
    attn = a - stream if family == "bloom" else a  # Bloom's attention adds the residual itself
    post = family in ("bart", "marian", "fsmt", "led") or (family == "opt" and not cfg.do_layer_norm_before)
    own = stream
    if post:
        ln = block.get_submodule(POST_NORMS[0 if kind == "self" else 1])
        u = stream + attn
        with torch.no_grad():
            y = ln(u.float()).double()
        sigma = (u.var(-1, unbiased=False) + ln.eps).sqrt()[:, None]  # (Q, 1)
        w = ln.weight.double()
        t = w * (t - t.mean(-1, keepdim=True)) / sigma[:, :, None]
        own = w * (stream - stream.mean(-1, keepdim=True)) / sigma
    elif family in ("gemma2", "gemma3_text"):  # a norm of the attention output before the residual add
        with torch.no_grad():
            normed = block.post_attention_layernorm(attn.float()).double()
        t = t * (normed / attn)[:, None]
        y = stream + normed
    else:
        y = stream + attn
    if kind == "self":
        t = t.clone()
        for i in range(t.shape[0]):
            t[i, i] += own[i]
    else:
        t = torch.cat([own[:, None], t], 1)
    raw = (y.abs().sum(-1)[:, None] - (y[:, None] - t).abs().sum(-1)).clamp(min=0)
    return raw / raw.sum(-1, keepdim=True), y
