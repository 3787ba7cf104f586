"""AttnLRP (Achtibat et al., ICML 2024) in its efficient form, as LXT 2.1 computes it: input x gradient through
one forward whose backward applies the LRP rules. The model is never edited: hooks and a registered attention
function exist for that forward only (removed after it, also on error).

Rules, each as a change of the gradient only (forward values untouched):
- normalisations (LayerNorm, RMSNorm and their family variants): identity rule, the variance a constant;
- elementwise activations: identity rule, gradient ``act(x) / (x + 1e-10)``;
- gated MLPs (``act(gate) * up``): uniform rule on the product, gradient halved;
- attention (every implementation behind transformers' attention interface): uniform rule on the two matrix
  products, gradients to queries and keys divided by 4, to values by 2.
A family whose attention does not go through that interface (Bloom, Falcon, FSMT, LED) gets the same attention
rule at its q/k/v projections' outputs instead (:func:`projection_rules`): a gradient scaled by a constant on the
way into q, k or v is the same scaled wherever on that path it is applied, since every backward step is linear in
the gradient it receives and q, k and v feed the attention only. Which of the two a model takes is found on its
first call (the interface is tried, and counts its calls) and kept for the model.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.activations import ACT2CLS
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from inseq_ray.engine import MethodContext, MethodResult
from inseq_ray.errors import ModelConformanceError
from inseq_ray.models.adapter import ModelAdapter
from inseq_ray.models.values import ValueSite, decoder_blocks, value_sites

ATTENTION_ID = "inseq_ray_attnlrp"
EPS = 1e-10
ACTIVATIONS: tuple[type, ...] = (
    *{c[0] if isinstance(c, tuple) else c for c in ACT2CLS.values() if isinstance(c, type | tuple)},
    nn.GELU,
    nn.SiLU,
    nn.ReLU,
    nn.Tanh,
)
_active: list[dict] = []  # per active context: its attention calls
SEPARATE_PROJECTIONS = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q", "k", "v"))  # Longformer, T5
_RULE_SITE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> "interface" or "projections"


def _scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in the forward, ``factor`` x its gradient in the backward."""
    return x.detach() + factor * (x - x.detach())


def _ratio_rule(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` in the forward; gradient ``y / (x + eps)`` elementwise (identity rule of an elementwise map)."""
    return y.detach() + (x - x.detach()) * (y / (x + EPS)).detach()


def _attention_for(impl: str):
    """The attention function wrapping implementation ``impl`` (the family's eager function for ``eager``), with the
    uniform rule of both matrix products applied to the gradients of q, k and v."""

    def attention(module: nn.Module, query, key, value, *args, **kwargs):
        _active[-1]["calls"] += 1
        if impl in ALL_ATTENTION_FUNCTIONS:
            base = ALL_ATTENTION_FUNCTIONS[impl]
        else:
            base = getattr(sys.modules[type(module).__module__], "eager_attention_forward")  # noqa: B009
        if "dropout" in kwargs:
            kwargs["dropout"] = 0.0
        return base(module, _scaled(query, 0.25), _scaled(key, 0.25), _scaled(value, 0.5), *args, **kwargs)

    return attention


# One registered id per implementation, each with that implementation's mask function: transformers builds no
# attention mask at all for an id it has no mask function for (padding would be attended to).
for _impl, _mask in dict(AttentionMaskInterface._global_mapping).items():
    AttentionInterface.register(f"{ATTENTION_ID}_{_impl}", _attention_for(_impl))
    AttentionMaskInterface.register(f"{ATTENTION_ID}_{_impl}", cast(Callable[..., Any], _mask))


def _rule_id(impl: str | None) -> str:
    """The registered id wrapping ``impl`` (sdpa's for an implementation without one of its own)."""
    wrapped = f"{ATTENTION_ID}_{impl or 'sdpa'}"
    return wrapped if wrapped in AttentionMaskInterface._global_mapping else f"{ATTENTION_ID}_sdpa"


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
        elif name.endswith(("RMSNorm", "Gelu")) or name == "T5LayerNorm" or isinstance(module, ACTIVATIONS):
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
    _active.append({"calls": 0})
    counter = [0]
    try:
        _rule_hooks(model, handles)  # appended one by one: removed below even if one fails to register
        for cfg, impl in saved:
            cfg._attn_implementation = _rule_id(impl)
        yield counter
    finally:
        counter[0] = _active.pop()["calls"]
        for h in handles:
            h.remove()
        for cfg, impl in saved:
            cfg._attn_implementation = impl


@contextlib.contextmanager
def projection_rules(model: nn.Module, fused: Sequence[ValueSite] = ()) -> Iterator[list[int]]:
    """The rules on ``model`` with the attention rule at the q/k/v projections (gradients into q and k x 1/4, into
    v x 1/2): separate projections (:data:`SEPARATE_PROJECTIONS`) found by name, fused ones given as value sites
    (their value columns x 1/2, the rest x 1/4). Yields a one-item list counting the projection calls."""
    handles: list = []
    counter = [0]

    def scale(factor):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            counter[0] += 1
            f = factor.to(output.device, output.dtype) if isinstance(factor, torch.Tensor) else factor
            return output.detach() + f * (output - output.detach())

        return hook

    try:
        _rule_hooks(model, handles)
        for module in model.modules():
            for names in SEPARATE_PROJECTIONS:
                if all(isinstance(getattr(module, n, None), nn.Module) for n in names):
                    for n, f in zip(names, (0.25, 0.25, 0.5), strict=True):
                        handles.append(getattr(module, n).register_forward_hook(scale(f)))
        for site in fused:
            columns = torch.full((_width(site.module),), 0.25)
            columns[site.columns(range(site.n_heads))] = 0.5
            handles.append(site.module.register_forward_hook(scale(columns)))
        yield counter
    finally:
        for h in handles:
            h.remove()


def attnlrp(ctx: MethodContext) -> MethodResult:
    """AttnLRP relevance x * d f_t / d x with the rules in the backward (LXT's efficient AttnLRP); explain the
    logit (``attributed_fn="logit"``) to get LXT's numbers."""
    model = ctx.adapter.model
    if _RULE_SITE.get(model) != "projections":
        calls = [0]
        try:
            with attnlrp_rules(model) as calls:
                result = _relevance(ctx)
        except torch.OutOfMemoryError:  # the engine halves the batch: says nothing about the family
            raise
        except Exception:
            if calls[0]:
                raise
        if calls[0]:  # the family branched on the attention setting itself (and failed, or ran without it) if 0
            _RULE_SITE[model] = "interface"
            return result
        _RULE_SITE[model] = "projections"
    with rules_for(ctx.adapter) as calls:
        result = _relevance(ctx)
    if calls[0] == 0:
        raise ModelConformanceError(
            f"attnlrp: {type(model).__name__}'s attention neither goes through transformers' attention interface "
            "nor has q/k/v projections this method knows (q_proj/k_proj/v_proj, query/key/value, or a fused one in "
            "the family table), so the attention rule cannot be applied."
        )
    return result


def _relevance(ctx: MethodContext) -> MethodResult:
    """x * d f_t / d x per attributed side, under whatever rules are installed."""
    grads = ctx.run(ctx.attributed_embeds(), 1, lambda name, g: g, at_input=True)
    return MethodResult({k: g * ctx.embeds[k].float()[None] for k, g in grads.items()})


def rules_for(adapter: ModelAdapter) -> contextlib.AbstractContextManager[list[int]]:
    """The rules as ``attnlrp`` applies them to this model (after its first call: at the attention interface, or
    at the q/k/v projections)."""
    if _RULE_SITE.get(adapter.model) == "projections":
        return projection_rules(adapter.model, fused_value_sites(adapter))
    return attnlrp_rules(adapter.model)


def fused_value_sites(adapter: ModelAdapter) -> list[ValueSite]:
    """The decoder's fused q/k/v projections (Bloom's, Falcon's, ...) as value sites; none for separate ones."""
    try:
        sites = value_sites(adapter, decoder_blocks(adapter), "self")
    except ValueError:
        return []
    return [s for s in sites if s.columns(range(s.n_heads)).numel() < _width(s.module)]


def _width(module: nn.Module) -> int:
    """Output features of a linear projection (nn.Linear's weight is (out, in); GPT-2's Conv1D's (in, out))."""
    weight: Any = module.weight
    return int(getattr(module, "nf", 0) or weight.shape[0])
