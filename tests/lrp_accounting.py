"""Where AttnLRP's relevance goes: an independent account of one forward/backward under the rules.

LRP relevance at a tensor x is ``sum(x * g)`` with g the gradient the rules give it. Every rule conserves it
(identity rules, the uniform rule), so what the input tokens receive is the explained logit less what is
absorbed on the way, each piece measured here from the tensors themselves:
- each softmax of the attention (the AttnLRP softmax rule's Taylor remainder): ``(sum(A g_A) - sum(z g_z)) / 2``
  (the uniform rule of ``A V`` gave A half of the output's relevance; z: the scores, A: the weights);
- each bias of a linear map or a LayerNorm: ``sum(b g_y)``, and a logits bias (BART's ``final_logits_bias``);
- inputs that are not the tokens: position embeddings ``sum(E g_E)``, and half of that for a bias added to the
  attention scores (T5's relative position bias, Bloom's ALiBi: they enter after the ``A V`` split).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

LINEAR_TYPES = ("Linear", "Conv1D", "FalconLinear")


def relevance_account(am, rules, input_ids, decoder_input_ids=None, target: int | None = None) -> dict:
    """{"tokens", "logit", "softmax", "biases", "positions"}: the explained logit of the last position and where
    its relevance went, under ``rules`` (a context manager installing AttnLRP's rules on ``am.model``)."""
    model = am.model
    token_modules = {id(am.adapter.source_embedding()), id(am.adapter.target_embedding())} if am.is_encoder_decoder \
        else {id(am.adapter.target_embedding())}  # fmt: skip
    seen: dict[str, list] = {"tokens": [], "positions": [], "half_positions": [], "linear": [], "norm": [], "soft": []}

    def keep(kind, extra=None):
        def hook(module, args, out):
            if not out.requires_grad:  # a buffer's sinusoids (M2M100): a leaf of its own, to read its gradient
                out = out.detach().requires_grad_()
            out.retain_grad()
            seen[kind].append((module, out, extra))
            return out

        return hook

    handles = []
    for name, module in model.named_modules():
        if id(module) in token_modules:
            handles.append(module.register_forward_hook(keep("tokens")))
        elif isinstance(module, nn.Embedding) or "Positional" in type(module).__name__:
            kind = "half_positions" if name.endswith("relative_attention_bias") else "positions"
            handles.append(module.register_forward_hook(keep(kind)))
        elif type(module).__name__ in LINEAR_TYPES and getattr(module, "bias", None) is not None:
            handles.append(module.register_forward_hook(keep("linear")))
    softmax = torch.nn.functional.softmax
    base = model.base_model
    build_alibi = getattr(base, "build_alibi_tensor", None)  # Bloom's ALiBi: a score bias built by a function

    def recording_alibi(*args, **kwargs):
        alibi = build_alibi(*args, **kwargs).detach().requires_grad_()
        alibi.retain_grad()
        seen["half_positions"].append((None, alibi, None))
        return alibi

    def recording_softmax(x, *args, **kwargs):
        y = softmax(x, *args, **kwargs)
        if x.requires_grad:
            x.retain_grad()
            y.retain_grad()
            seen["soft"].append((x, y))
        return y

    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(rules)
            for module in model.modules():  # after the rules' hooks: the gradient their outputs receive
                if isinstance(module, nn.LayerNorm) and module.bias is not None:
                    handles.append(module.register_forward_hook(keep("norm")))
            torch.nn.functional.softmax = recording_softmax
            if build_alibi is not None:
                base.build_alibi_tensor = recording_alibi
            kw = {"decoder_input_ids": decoder_input_ids} if decoder_input_ids is not None else {}
            mask = torch.ones_like(input_ids)  # given: Bloom builds its ALiBi from the mask then
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False, **kw).logits[0, -1]
            target = int(logits.argmax()) if target is None else target
            logits[target].backward()
    finally:
        torch.nn.functional.softmax = softmax
        if build_alibi is not None:
            del base.build_alibi_tensor  # the class's method again
        for h in handles:
            h.remove()
    total = lambda pairs: sum(float((o.double() * o.grad.double()).sum()) for _, o, _ in pairs if o.grad is not None)  # noqa: E731
    biases = sum(float((m.bias.detach().double() * o.grad.double()).sum()) for m, o, _ in seen["linear"] + seen["norm"]
                 if o.grad is not None)  # fmt: skip
    logits_bias = getattr(model, "final_logits_bias", None)
    biases += float(logits_bias[0, target]) if logits_bias is not None else 0.0
    return {
        "tokens": total(seen["tokens"]),
        "logit": float(logits[target]),
        "softmax": sum(0.5 * (_relevance(y) - _relevance(x)) for x, y in seen["soft"] if y.grad is not None),
        "biases": biases,
        "positions": total(seen["positions"]) + 0.5 * total(seen["half_positions"]),
        "n_softmax": len(seen["soft"]),
    }


def _relevance(x: torch.Tensor) -> float:
    """sum(x * g) over the finite entries (a score masked with -inf has no gradient and no relevance)."""
    product = x.double() * x.grad.double()
    return float(torch.where(torch.isfinite(x), product, torch.zeros_like(product)).sum())
