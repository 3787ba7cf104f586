"""A deliberately naive per-step reference: for every generated token, run the model on the
prefix only and take captum's attribution of the attributed function w.r.t. the input embeddings.

This is the definition Inseq implements (one forward + backward per step); it shares no code with
the engine beyond the HF model itself and the step functions' formulas.
"""

from __future__ import annotations

import torch
from captum.attr import DeepLift, InputXGradient, IntegratedGradients, Saliency
from torch import nn

import inseq_ray.step_scores as ss


class PrefixStep(nn.Module):
    """f(embeds) for one step: the model on the prefix, next-token logits of the last position."""

    def __init__(self, model, is_enc_dec: bool, target_id: int, n_inputs: int, fn=ss.probability_fn):
        super().__init__()
        self.model, self.is_enc_dec, self.target_id, self.n_inputs, self.fn = model, is_enc_dec, target_id, n_inputs, fn

    def forward(self, *args):
        inputs, extra = args[: self.n_inputs], args[self.n_inputs :]
        if self.is_enc_dec:
            src, tgt = (inputs[0], inputs[1]) if self.n_inputs == 2 else (inputs[0], extra[0])
            logits = self.model(inputs_embeds=src, decoder_inputs_embeds=tgt, use_cache=False).logits[:, -1]
        else:
            logits = self.model(inputs_embeds=inputs[0], use_cache=False).logits[:, -1]
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


def baseline(am, ids: torch.Tensor) -> torch.Tensor:
    tok = am.tokenizer
    return torch.where(ids == tok.eos_token_id, ids, torch.full_like(ids, tok.unk_token_id))


def naive_attribute(am, source: str, target: str, method: str, attribute_target: bool, shap_draws=None, **kw):
    """Per step p: captum ``method`` on the prefix. Returns (src (S, n, H) | None, tgt (L, n, H) | None)."""
    model = am.model
    src_ids, tgt_ids, start = embed_pieces(am, source, target)
    emb_t = am.model.get_input_embeddings() if not am.is_encoder_decoder else am.model.get_decoder().embed_tokens
    emb_s = am.model.get_encoder().embed_tokens if am.is_encoder_decoder else None
    src_cols, tgt_cols = [], []
    for p in range(start, len(tgt_ids)):
        prefix = tgt_ids[:p][None]
        with torch.no_grad():
            x_t, b_t = emb_t(prefix), emb_t(baseline(am, prefix))
            x_s = emb_s(src_ids[None]) if emb_s is not None else None
            b_s = emb_s(baseline(am, src_ids[None])) if emb_s is not None else None
        if am.is_encoder_decoder:
            inputs, bases = ((x_s, x_t), (b_s, b_t)) if attribute_target else ((x_s,), (b_s,))
            extra = () if attribute_target else (x_t,)
        else:
            inputs, bases, extra = (x_t,), (b_t,), ()
        step = PrefixStep(model, am.is_encoder_decoder, int(tgt_ids[p]), len(inputs))
        attrs = _captum(step, method, inputs, bases, extra, shap_draws, p, **kw)
        if am.is_encoder_decoder:
            src_cols.append(attrs[0][0])
            if attribute_target:
                tgt_cols.append(_pad_nan(attrs[1][0], len(tgt_ids)))
        else:
            tgt_cols.append(_pad_nan(attrs[0][0], len(tgt_ids)))
    src = torch.stack(src_cols, 1) if src_cols else None
    tgt = torch.stack(tgt_cols, 1) if tgt_cols else None
    return src, tgt


def _pad_nan(a: torch.Tensor, length: int) -> torch.Tensor:
    out = torch.full((length, a.shape[-1]), float("nan"))
    out[: a.shape[0]] = a
    return out


def _captum(step, method, inputs, bases, extra, shap_draws, p, **kw):
    extra = extra if extra else None
    if method == "saliency":
        return Saliency(step).attribute(inputs, additional_forward_args=extra, abs=True)
    if method == "input_x_gradient":
        return InputXGradient(step).attribute(inputs, additional_forward_args=extra)
    if method == "integrated_gradients":
        return IntegratedGradients(step).attribute(inputs, baselines=bases, additional_forward_args=extra, **kw)
    if method == "deeplift":
        return DeepLift(step).attribute(inputs, baselines=bases, additional_forward_args=extra)
    if method == "gradient_shap":
        return _gradient_shap(step, inputs, bases, extra, shap_draws, p)
    raise ValueError(method)


def _gradient_shap(step, inputs, bases, extra, draws, p):
    """GradientSHAP with given draws: noise name -> (S, L, H) for this sequence, alphas (S,)."""
    noise, alphas = draws
    names = ["source", "target"][: len(inputs)] if step.is_enc_dec else ["target"]
    total = [torch.zeros_like(x) for x in inputs]
    for s in range(alphas.shape[0]):
        noisy = [x + noise[n][s][None, : x.shape[1]] for n, x in zip(names, inputs)]
        points = [(b + alphas[s] * (xn - b)).requires_grad_(True) for xn, b in zip(noisy, bases)]
        out = step(*points, *(extra or ()))
        grads = torch.autograd.grad(out.sum(), points)
        for i, (g, xn, b) in enumerate(zip(grads, noisy, bases)):
            total[i] += (xn - b) * g
    return tuple(t / alphas.shape[0] for t in total)
