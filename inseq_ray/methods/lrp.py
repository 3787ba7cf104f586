"""AttnLRP (Achtibat et al., ICML 2024) in its efficient form, as LXT 2.1 computes it: input x gradient through
one forward whose backward applies the LRP rules. The model is never edited: hooks and a registered attention
function exist for that forward only (removed after it, also on error).

Rules, each as a change of the gradient only (forward values untouched):
- normalisations (LayerNorm, RMSNorm and their family variants): identity rule, the variance a constant;
- elementwise activations: identity rule, gradient ``act(x) / (x + 1e-10)``;
- gated MLPs (``act(gate) * up``): uniform rule on the product, gradient halved;
- attention (every implementation behind transformers' attention interface): uniform rule on the two matrix
  products, gradients to queries and keys divided by 4, to values by 2.
A family whose attention does not go through that interface is refused (the rules would be incomplete).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.activations import ACT2CLS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from inseq_ray.engine import MethodContext, MethodResult
from inseq_ray.errors import ModelConformanceError

ATTENTION_ID = "inseq_ray_attnlrp"
EPS = 1e-10
ACTIVATIONS: tuple[type, ...] = (
    *{c[0] if isinstance(c, tuple) else c for c in ACT2CLS.values() if isinstance(c, type | tuple)},
    nn.GELU,
    nn.SiLU,
    nn.ReLU,
    nn.Tanh,
)
_active: list[dict] = []  # per active context: attention calls, and each config's own implementation (id -> name)


def _scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in the forward, ``factor`` x its gradient in the backward."""
    return x.detach() + factor * (x - x.detach())


def _ratio_rule(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` in the forward; gradient ``y / (x + eps)`` elementwise (identity rule of an elementwise map)."""
    return y.detach() + (x - x.detach()) * (y / (x + EPS)).detach()


def _attention(module: nn.Module, query, key, value, *args, **kwargs):
    """The model's own attention implementation, with the uniform rule of both matrix products applied to the
    gradients of q, k and v (the family's eager function where the model runs eager attention)."""
    state = _active[-1]
    state["calls"] += 1
    impl = state["impls"].get(id(getattr(module, "config", None)), "sdpa")
    if impl in ALL_ATTENTION_FUNCTIONS:
        base = ALL_ATTENTION_FUNCTIONS[impl]
    else:
        base = getattr(sys.modules[type(module).__module__], "eager_attention_forward")  # noqa: B009
    if "dropout" in kwargs:
        kwargs["dropout"] = 0.0
    return base(module, _scaled(query, 0.25), _scaled(key, 0.25), _scaled(value, 0.5), *args, **kwargs)


AttentionInterface.register(ATTENTION_ID, _attention)


def _layer_norm(module: nn.Module, args: tuple, y: torch.Tensor) -> torch.Tensor:
    """LayerNorm with its standard deviation a constant: (x - mean) / stop_grad(std) * w + b."""
    x = args[0]
    centered = x - x.mean(-1, keepdim=True)
    eps = getattr(module, "eps", getattr(module, "variance_epsilon", 1e-5))
    std = (centered.float().pow(2).mean(-1, keepdim=True) + eps).sqrt().to(x.dtype)
    weight = getattr(module, "weight", None)
    scale = (1 / std if weight is None else weight / std).detach()
    return y.detach() + (centered - centered.detach()) * scale


def _elementwise(module: nn.Module, args: tuple, y: torch.Tensor) -> torch.Tensor:
    return _ratio_rule(args[0], y)


def _halve_input(module: nn.Module, args: tuple) -> tuple:
    return (_scaled(args[0], 0.5), *args[1:])


def _rule_hooks(model: nn.Module, handles: list) -> None:
    """One hook per module a rule applies to, appended to ``handles``."""
    for module in model.modules():
        name = type(module).__name__
        if isinstance(module, nn.LayerNorm) or (name.endswith("LayerNorm") and not name.startswith("T5")):
            handles.append(module.register_forward_hook(_layer_norm))
        elif name.endswith("RMSNorm") or name == "T5LayerNorm" or isinstance(module, ACTIVATIONS):
            handles.append(module.register_forward_hook(_elementwise))
        for gate, down in (("gate_proj", "down_proj"), ("wi_0", "wo")):
            if hasattr(module, gate) and isinstance(getattr(module, down, None), nn.Module):
                handles.append(getattr(module, down).register_forward_pre_hook(_halve_input))


@contextlib.contextmanager
def attnlrp_rules(model: nn.Module) -> Iterator[list[int]]:
    """The rules on ``model`` while active (every hook and attention setting restored on exit, also on error);
    yields a one-item list counting the attention calls that went through the rules."""
    from inseq_ray.models.adapter import _configs_with_attn

    configs = _configs_with_attn(model)
    saved = [(cfg, cfg._attn_implementation) for cfg in configs]
    handles: list = []
    _active.append({"calls": 0, "impls": {id(cfg): impl for cfg, impl in saved}})
    counter = [0]
    try:
        _rule_hooks(model, handles)  # appended one by one: removed below even if one fails to register
        for cfg in configs:
            cfg._attn_implementation = ATTENTION_ID
        yield counter
    finally:
        counter[0] = _active.pop()["calls"]
        for h in handles:
            h.remove()
        for cfg, impl in saved:
            cfg._attn_implementation = impl


def attnlrp(ctx: MethodContext) -> MethodResult:
    """AttnLRP relevance x * d f_t / d x with the rules in the backward (LXT's efficient AttnLRP); explain the
    logit (``attributed_fn="logit"``) to get LXT's numbers."""
    calls = [0]
    try:
        with attnlrp_rules(ctx.adapter.model) as calls:
            grads = ctx.run(ctx.attributed_embeds(), 1, lambda name, g: g, at_input=True)
    except Exception as e:
        if calls[0] == 0:  # the family branched on the attention setting itself and failed there
            raise _unsupported(ctx) from e
        raise
    if calls[0] == 0:
        raise _unsupported(ctx)
    return MethodResult({k: g * ctx.embeds[k].float()[None] for k, g in grads.items()})


def _unsupported(ctx: MethodContext) -> ModelConformanceError:
    return ModelConformanceError(
        f"attnlrp: {type(ctx.adapter.model).__name__}'s attention does not go through transformers' attention "
        "interface, so the attention rules cannot be applied; this family is not supported by attnlrp yet."
    )
