"""A deliberately naive per-step reference: for every generated token, run the model on the
prefix only and take captum's attribution of the attributed function w.r.t. the input embeddings.

This is the definition Inseq implements (one forward + backward per step); it shares no code with
the engine beyond the HF model itself and the step functions' formulas. The prefix forward is the
model's own forward *from ids*, with the output of its input embedding module replaced by the
tensors captum perturbs (a hook written here, matched by call order: encoder first), so whatever a
model does to its embeddings after the lookup (scaling, positions from ids) is part of it.
"""

from __future__ import annotations

import torch
from captum.attr import (
    DeepLift,
    InputXGradient,
    IntegratedGradients,
    LayerDeepLift,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    Occlusion,
    Saliency,
)
from torch import nn

import inseq_ray.step_scores as ss


def embedding_modules(model, is_enc_dec: bool) -> tuple[nn.Module | None, nn.Module]:
    """(encoder embedding module or None, decoder / decoder-only embedding module)."""
    if not is_enc_dec:
        return None, model.get_input_embeddings()
    enc, dec = model.get_encoder(), model.get_decoder()
    return enc.embed_tokens, dec.embed_tokens


class PrefixStep(nn.Module):
    """f(embeds) for one step: the model on (source, target prefix) ids, next-token function of the last position.

    ``names`` says which sides the positional inputs replace ("source", "target"); the other side
    embeds its own ids.
    """

    def __init__(self, model, is_enc_dec: bool, src_ids, prefix_ids, target_id: int, names, fn=ss.probability_fn):
        super().__init__()
        self.model, self.is_enc_dec, self.names, self.fn = model, is_enc_dec, tuple(names), fn
        self.src_ids, self.prefix_ids, self.target_id = src_ids, prefix_ids, target_id

    def forward(self, *embeds):
        n = embeds[0].shape[0]
        given = dict(zip(self.names, embeds))
        tgt = self.prefix_ids[None].repeat(n, 1)
        src = self.src_ids[None].repeat(n, 1) if self.is_enc_dec else None
        pending = [("source", src), ("target", tgt)] if self.is_enc_dec else [("target", tgt)]

        def hook(module, args, output):  # the next side in call order whose ids these are (LED embeds extra padding)
            ids = pending[0][1] if pending else None
            if ids is not None and args[0].shape == ids.shape and torch.equal(args[0], ids):
                side = pending.pop(0)[0]
                return given[side].to(output.dtype) if side in given else None
            return None

        handles = [
            m.register_forward_hook(hook)
            for m in {id(m): m for m in embedding_modules(self.model, self.is_enc_dec) if m is not None}.values()
        ]
        try:
            if self.is_enc_dec:
                logits = self.model(input_ids=src, decoder_input_ids=tgt, use_cache=False).logits[:, -1]
            else:
                logits = self.model(input_ids=tgt, use_cache=False).logits[:, -1]
        finally:
            for h in handles:
                h.remove()
        assert not pending, "an embedding module was not called as expected"
        target = torch.full((logits.shape[0],), self.target_id, dtype=torch.long)
        return self.fn(ss.StepFunctionArgs(logits, target))


def embed_pieces(am, source: str, target: str):
    """Return (source ids or None, target ids, attr_start) exactly as a user would define them."""
    tok = am.tokenizer
    if am.is_encoder_decoder:
        src = torch.tensor(tok(source)["input_ids"])
        start = am.model.generation_config.decoder_start_token_id
        tgt = torch.tensor([start, *tok(text_target=target)["input_ids"]])
        return src, tgt, 1
    tgt = torch.tensor(tok(target)["input_ids"])
    return None, tgt, len(tok(source)["input_ids"])


def baseline(am, ids: torch.Tensor, keep_first: bool = False) -> torch.Tensor:
    """UNK everywhere but EOS (and, for an encoder-decoder target, the decoder start token), as in Inseq."""
    tok = am.tokenizer
    base = torch.where(ids == tok.eos_token_id, ids, torch.full_like(ids, tok.unk_token_id))
    if keep_first:
        base[..., 0] = ids[..., 0]
    return base


def next_logits(am, src_ids, prefix_ids) -> torch.Tensor:
    """(V,) the model's own next-token logits after ``prefix_ids`` (and ``src_ids`` for encoder-decoder)."""
    with torch.no_grad():
        if am.is_encoder_decoder:
            return am.model(input_ids=src_ids[None], decoder_input_ids=prefix_ids[None], use_cache=False).logits[0, -1]
        return am.model(input_ids=prefix_ids[None], use_cache=False).logits[0, -1]


def _step_inputs(am, src_ids, prefix, names) -> tuple[tuple, tuple]:
    """The embeddings of the named sides for one prefix, and their baselines (as Inseq forms them)."""
    emb_s, emb_t = embedding_modules(am.model, am.is_encoder_decoder)
    with torch.no_grad():
        x = {"target": emb_t(prefix[None]), "source": emb_s(src_ids[None]) if emb_s is not None else None}
        b = {
            "target": emb_t(baseline(am, prefix[None], keep_first=am.is_encoder_decoder)),
            "source": emb_s(baseline(am, src_ids[None])) if emb_s is not None else None,
        }
    return tuple(x[n] for n in names), tuple(b[n] for n in names)


def naive_attribute(
    am, source: str, target: str, method: str, attribute_target: bool, shap_draws=None, fn_for_step=None, **kw
):
    """Per step p: captum ``method`` on the prefix. Returns (src (S, n, H) | None, tgt (L, n, H) | None).

    ``fn_for_step(p)`` gives step p's function of (logits, target) (default: the target's probability).
    """
    model = am.model
    src_ids, tgt_ids, start = embed_pieces(am, source, target)
    names = ("source", "target") if attribute_target else ("source",)
    names = names if am.is_encoder_decoder else ("target",)
    src_cols, tgt_cols = [], []
    for p in range(start, len(tgt_ids)):
        prefix = tgt_ids[:p]
        inputs, bases = _step_inputs(am, src_ids, prefix, names)
        fn = fn_for_step(p) if fn_for_step is not None else ss.probability_fn
        step = PrefixStep(model, am.is_encoder_decoder, src_ids, prefix, int(tgt_ids[p]), names, fn)
        attrs = dict(zip(names, _captum(step, method, inputs, bases, shap_draws, names, **kw)))
        if "source" in attrs:
            src_cols.append(attrs["source"][0])
        if "target" in attrs:
            tgt_cols.append(_pad_nan(attrs["target"][0], len(tgt_ids)))
    src = torch.stack(src_cols, 1) if src_cols else None
    tgt = torch.stack(tgt_cols, 1) if tgt_cols else None
    return src, tgt


LAYER_METHODS = {
    "layer_gradient_x_activation": LayerGradientXActivation,
    "layer_integrated_gradients": LayerIntegratedGradients,
    "layer_deeplift": LayerDeepLift,
}


def naive_layer_attribute(am, source: str, target: str, method: str, layer: str, attribute_target: bool, **kw):
    """Per step p: captum's layer ``method`` on the prefix forward, attributing ``layer``'s output (the module
    named so). Returns (src (S, n, H) | None, tgt (L, n, H) | None): the side the layer's rows are."""
    model = am.model
    module = model.get_submodule(layer)
    in_encoder = am.is_encoder_decoder and any(m is module for m in model.get_encoder().modules())
    src_ids, tgt_ids, start = embed_pieces(am, source, target)
    names = ("source", "target") if attribute_target else ("source",)
    names = names if am.is_encoder_decoder else ("target",)
    cols = []
    for p in range(start, len(tgt_ids)):
        prefix = tgt_ids[:p]
        inputs, bases = _step_inputs(am, src_ids, prefix, names)
        step = PrefixStep(model, am.is_encoder_decoder, src_ids, prefix, int(tgt_ids[p]), names)
        explainer = LAYER_METHODS[method](step, module)
        if method == "layer_gradient_x_activation":
            attr = explainer.attribute(inputs)
        else:
            attr = explainer.attribute(inputs, baselines=bases, **kw)
        attr = attr[0] if isinstance(attr, (tuple, list)) else attr
        cols.append(attr[0].detach() if in_encoder else _pad_nan(attr[0].detach(), len(tgt_ids)))
    stacked = torch.stack(cols, 1)
    return (stacked, None) if in_encoder else (None, stacked)


def _pad_nan(a: torch.Tensor, length: int) -> torch.Tensor:
    """(p, *extra) -> (length, *extra), NaN past p."""
    out = torch.full((length, *a.shape[1:]), float("nan"))
    out[: a.shape[0]] = a
    return out


def _captum(step, method, inputs, bases, shap_draws, names, **kw):
    if method == "saliency":
        return Saliency(step).attribute(inputs, abs=True)
    if method == "input_x_gradient":
        return InputXGradient(step).attribute(inputs)
    if method == "integrated_gradients":
        return IntegratedGradients(step).attribute(inputs, baselines=bases, **kw)
    if method == "deeplift":
        return DeepLift(step).attribute(inputs, baselines=bases)
    if method == "gradient_shap":
        return _gradient_shap(step, inputs, bases, shap_draws, names)
    if method == "occlusion":  # Inseq: a (1, hidden) window per input, then the first slice's absolute value
        windows = tuple((1, x.shape[-1]) for x in inputs)
        with torch.no_grad():
            attrs = Occlusion(step).attribute(inputs, sliding_window_shapes=windows, baselines=bases)
        return tuple(a[..., 0].abs() for a in attrs)
    raise ValueError(method)


def _gradient_shap(step, inputs, bases, draws, names):
    """GradientSHAP with given draws: noise name -> (S, L, H) for this sequence, alphas (S,)."""
    noise, alphas = draws
    total = [torch.zeros_like(x) for x in inputs]
    for s in range(alphas.shape[0]):
        noisy = [x + noise[n][s][None, : x.shape[1]] for n, x in zip(names, inputs)]
        points = [(b + alphas[s] * (xn - b)).requires_grad_(True) for xn, b in zip(noisy, bases)]
        out = step(*points)
        grads = torch.autograd.grad(out.sum(), points)
        for i, (g, xn, b) in enumerate(zip(grads, noisy, bases)):
            total[i] += (xn - b) * g
    return tuple(t / alphas.shape[0] for t in total)


# ---- value zeroing -----------------------------------------------------------------------------------------
def _decoder_block_list(model, is_enc_dec: bool) -> nn.ModuleList:
    """The decoder's transformer blocks, by each family's attribute names."""
    root = model.get_decoder() if is_enc_dec else model.base_model
    for path in ("layers", "block", "h", "decoder.layers"):
        try:
            return root.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError(type(root).__name__)


def _value_zeroer(model, block: nn.Module, kind: str, token: int, heads: list[int] | None):
    """(module, forward hook) zeroing ``token``'s value vectors (of ``heads``, default all) in the block's
    self- or cross-attention, from each family's modeling code (batch of one; FSMT runs time-first)."""
    cfg = model.config.get_text_config()
    family = cfg.model_type
    n_heads = cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads

    def plain(out):  # (1, L, kv_heads * hd), or FSMT's (L, 1, D)
        out = out.clone()
        view = out.transpose(0, 1) if family == "fsmt" else out
        for h in heads if heads is not None else range(view.shape[-1] // hd):
            view[0, token, h * hd : (h + 1) * hd] = 0
        return out

    def gpt2(out):  # c_attn: q | k | v
        out = out.clone()
        e = out.shape[-1] // 3
        for h in heads if heads is not None else range(n_heads):
            out[0, token, 2 * e + h * hd : 2 * e + (h + 1) * hd] = 0
        return out

    def per_head(out):  # NeoX / Bloom: (heads, q k v, hd)
        out = out.clone()
        view = out.view(1, out.shape[1], n_heads, 3, hd)
        view[0, token, heads if heads is not None else slice(None), 2] = 0
        return out

    def falcon_mq(out):  # Falcon multi-query: (q heads..., k, v)
        out = out.clone()
        out.view(1, out.shape[1], n_heads + 2, hd)[0, token, -1] = 0
        return out

    if family == "t5":
        name = "layer.0.SelfAttention.v" if kind == "self" else "layer.1.EncDecAttention.v"
        fn = plain
    elif family == "gpt2":
        name, fn = "attn.c_attn", gpt2
    elif family in ("gpt_neox", "bloom"):
        name = "attention.query_key_value" if family == "gpt_neox" else "self_attention.query_key_value"
        fn = per_head
    elif family == "falcon":
        name, fn = "self_attention.query_key_value", falcon_mq
    else:
        name, fn = ("self_attn.v_proj" if kind == "self" else "encoder_attn.v_proj"), plain
    return block.get_submodule(name), lambda module, args, out: fn(out)


def naive_value_zeroing(
    am, source: str, target: str, side: str, metric: str = "cosine", heads: dict | None = None, threshold=1e-5
) -> torch.Tensor:
    """Value zeroing per step on the prefix forward, one layer zeroed at a time (the layers before it untouched,
    so its input is clean), layer outputs from the model's own ``output_hidden_states`` (the last one after any
    final norm). ``heads``: {layer: value heads} zeroed (None: all heads of every layer).

    Returns (tokens of ``side``, n_steps, n_layers): distances thresholded and normalised over the side's tokens
    per (step, layer); target tokens from the step on are NaN."""
    model, enc_dec = am.model, am.is_encoder_decoder
    src_ids, tgt_ids, start = embed_pieces(am, source, target)
    blocks = _decoder_block_list(model, enc_dec)
    kind = "cross" if side == "source" else "self"
    n_tokens = len(src_ids) if side == "source" else len(tgt_ids)

    def hidden(prefix):
        with torch.no_grad():
            if enc_dec:
                out = model(
                    input_ids=src_ids[None], decoder_input_ids=prefix[None], output_hidden_states=True, use_cache=False
                )
                return out.decoder_hidden_states
            return model(input_ids=prefix[None], output_hidden_states=True, use_cache=False).hidden_states

    cols = []
    for p in range(start, len(tgt_ids)):
        prefix = tgt_ids[:p]
        clean = hidden(prefix)
        scores = torch.full((n_tokens, len(blocks)), float("nan"))
        for layer, block in enumerate(blocks):
            chosen = None if heads is None else heads.get(layer, [])
            for j in range(len(src_ids) if side == "source" else p):
                if chosen == []:
                    scores[j, layer] = 0.0
                    continue
                module, hook = _value_zeroer(model, block, kind, j, chosen)
                handle = module.register_forward_hook(hook)
                try:
                    corrupted = hidden(prefix)
                finally:
                    handle.remove()
                a, b = clean[layer + 1][0, -1].double(), corrupted[layer + 1][0, -1].double()
                d = 1 - torch.cosine_similarity(a, b, dim=0) if metric == "cosine" else (a - b).norm()
                scores[j, layer] = d
        scores = torch.where(scores < threshold, torch.zeros_like(scores), scores)
        total = scores.nansum(0, keepdim=True)
        cols.append(scores / torch.where(total == 0, torch.ones_like(total), total))
    return torch.stack(cols, 1)


# ---- LIME ---------------------------------------------------------------------------------------------------
def naive_lime(am, source: str, target: str, keep: dict, attribute_target: bool, fill: int) -> tuple:
    """LIME per step on the prefix forward, as Inseq's op (captum ``LimeBase`` + sklearn ``Ridge``): the samples
    are the given keep-masks (name -> (S, tokens)) restricted to the step's inputs, each perturbed as
    ``x * keep + (1 - keep) * fill``; features = the perturbed embedding values, weights = unchanged values.
    Returns (src (S_len, n, H) | None, tgt (L, n, H) | None), NaN for target tokens past the prefix."""
    from sklearn.linear_model import Ridge

    src_ids, tgt_ids, start = embed_pieces(am, source, target)
    names = (("source", "target") if attribute_target else ("source",)) if am.is_encoder_decoder else ("target",)
    cols: dict[str, list] = {n: [] for n in names}
    for p in range(start, len(tgt_ids)):
        prefix = tgt_ids[:p]
        inputs, _ = _step_inputs(am, src_ids, prefix, names)
        step = PrefixStep(am.model, am.is_encoder_decoder, src_ids, prefix, int(tgt_ids[p]), names)
        samples, ys, ws = [], [], []
        for s in range(next(iter(keep.values())).shape[0]):
            pert = []
            for n, x in zip(names, inputs):
                k = keep[n][s, : x.shape[1]].to(x.dtype)[None, :, None]
                pert.append(x * k + (1 - k) * fill)
            with torch.no_grad():
                ys.append(float(step(*pert)))
            ws.append(float(sum((a == x).sum() for a, x in zip(pert, inputs))))
            samples.append(torch.cat([a.flatten() for a in pert]).double().numpy())
        fit = Ridge(alpha=1.0).fit(samples, ys, sample_weight=ws)
        coef, offset = torch.tensor(fit.coef_), 0
        for n, x in zip(names, inputs):
            size = x[0].numel()
            c = coef[offset : offset + size].view(x.shape[1:]).float()
            offset += size
            cols[n].append(c if n == "source" else _pad_nan(c, len(tgt_ids)))
    out = {n: torch.stack(v, 1) for n, v in cols.items()}
    return out.get("source"), out.get("target")


# ---- sequential integrated gradients ------------------------------------------------------------------------
def naive_sequential_ig(am, source: str, target: str, attribute_target: bool, n_steps: int) -> tuple:
    """Inseq's own ``SequentialIntegratedGradients`` op on each step's prefix forward, per attributed side (the
    other side at its input: each token's path moves that token alone). (src | None, tgt | None) as
    ``naive_attribute``."""
    from inseq.attr.feat.ops import SequentialIntegratedGradients

    src_ids, tgt_ids, start = embed_pieces(am, source, target)
    names = (("source", "target") if attribute_target else ("source",)) if am.is_encoder_decoder else ("target",)
    cols: dict[str, list] = {n: [] for n in names}
    for p in range(start, len(tgt_ids)):
        prefix = tgt_ids[:p]
        for name in names:
            (x,), (b,) = _step_inputs(am, src_ids, prefix, (name,))
            step = PrefixStep(am.model, am.is_encoder_decoder, src_ids, prefix, int(tgt_ids[p]), (name,))
            attr = SequentialIntegratedGradients(step).attribute((x,), baselines=(b,), n_steps=n_steps)[0][0]
            cols[name].append(attr.detach() if name == "source" else _pad_nan(attr.detach(), len(tgt_ids)))
    out = {n: torch.stack(v, 1) for n, v in cols.items()}
    return out.get("source"), out.get("target")
