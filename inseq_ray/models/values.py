"""Where a model keeps its attention value vectors, and forwards with some of them zeroed (value zeroing).

A :class:`ValueSite` is the module whose output holds one attention's value vectors (``v_proj``, T5's ``v``,
or a fused q/k/v projection) and the columns of that output that are the values of each value head. Zeroing
token j's values is then a forward hook that multiplies those columns of row j by 0: no frame tracing, no
change to the model, hooks removed on exit (also on error). Block outputs can be captured and replaced in the
same forward (:func:`patched_blocks`), so that each layer sees the clean output of the layer before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from inseq_ray.models.adapter import ModelAdapter
from inseq_ray.models.families import MODEL_CONFIGS, ModelConfig, known_names


@dataclass(frozen=True)
class ValueSite:
    """module's output (rows, tokens, D) holds value heads 0..n_heads-1: head h is columns
    ``offset + h * group + (group - head_dim) + arange(head_dim)`` (a plain projection: group = head_dim)."""

    module: nn.Module
    name: str
    n_heads: int
    head_dim: int
    offset: int = 0
    group: int = 0

    def columns(self, heads: Sequence[int]) -> torch.Tensor:
        """(len(heads) * head_dim,) column indices of the given value heads."""
        group = self.group or self.head_dim
        base = torch.tensor([self.offset + h * group + group - self.head_dim for h in heads])
        return (base[:, None] + torch.arange(self.head_dim)[None]).flatten()


def block_stack(module: nn.Module) -> nn.ModuleList:
    """The first ``nn.ModuleList`` under ``module`` (depth first): a decoder's transformer blocks."""
    found = _first_module_list(module)
    if found is None:
        raise ValueError(f"{type(module).__name__} has no stack of transformer blocks (nn.ModuleList).")
    return found


def _first_module_list(module: nn.Module) -> nn.ModuleList | None:
    for child in module.children():
        found = child if isinstance(child, nn.ModuleList) else _first_module_list(child)
        if found is not None:
            return found
    return None


def decoder_blocks(adapter: ModelAdapter) -> nn.ModuleList:
    """The blocks of the decoder (decoder-only: of the model), in order."""
    model = adapter.model
    return block_stack(model.get_decoder() if adapter.is_encoder_decoder else model.base_model)


def value_sites(adapter: ModelAdapter, blocks: nn.ModuleList, kind: str) -> list[ValueSite]:
    """One :class:`ValueSite` per block: its self-attention (``kind="self"``) or cross-attention (``"cross"``),
    where the family's entry in :mod:`inseq_ray.models.families` says (else every name the table knows)."""
    field = "self_attention_module" if kind == "self" else "cross_attention_module"
    names = _candidates(adapter.family, field)
    return [_site(adapter, block, names, f"{kind}-attention of block {i}") for i, block in enumerate(blocks)]


def _candidates(family: ModelConfig, field: str) -> tuple[str, ...]:
    value = getattr(family, field)
    return (value,) if value is not None else known_names(field)


def _site(adapter: ModelAdapter, block: nn.Module, attention_names: tuple[str, ...], what: str) -> ValueSite:
    config = adapter.model.config.get_text_config()
    attention = next((block.get_submodule(n) for n in attention_names if _has(block, n)), None)
    if attention is None:
        raise ValueError(
            f"value_zeroing: no {what} in {type(block).__name__} (looked for {', '.join(attention_names)}; "
            "inseq_ray.register_model_config names it for a new family)."
        )
    name = next((n for n in _candidates(adapter.family, "value_vector") if _has(attention, n)), None)
    if name is None:
        raise ValueError(
            f"value_zeroing: {type(attention).__name__} ({what}) has none of the value projections "
            f"{', '.join(_candidates(adapter.family, 'value_vector'))} (a submodule whose output holds the values, "
            "e.g. 'v_proj'; inseq_ray.register_model_config names it for a new family)."
        )
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0))
    head_dim = int(getattr(config, "head_dim", 0) or config.hidden_size // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    module = attention.get_submodule(name)
    layout = _layout(adapter.family, name)
    if layout is None:
        return ValueSite(module, name, _out_features(module) // head_dim, head_dim)
    if layout not in FUSED_LAYOUTS:
        raise ValueError(f"value_zeroing: unknown value_layout {layout!r}; valid: {', '.join(FUSED_LAYOUTS)}.")
    return FUSED_LAYOUTS[layout](module, name, config, heads, kv_heads, head_dim)


def _layout(family: ModelConfig, name: str) -> str | None:
    """The fused layout of value projection ``name``: the family's, or (discovered) the table's for that name."""
    if family.value_vector is not None:
        return family.value_layout
    return next((e.value_layout for e in MODEL_CONFIGS.values() if e.value_vector == name), None)


def _q_k_v(module: nn.Module, name: str, config, heads: int, kv_heads: int, head_dim: int) -> ValueSite:
    """q | k | v, equal widths (GPT-2's ``c_attn``)."""
    return ValueSite(module, name, heads, head_dim, offset=2 * _out_features(module) // 3)


def _q_kv(module: nn.Module, name: str, config, heads: int, kv_heads: int, head_dim: int) -> ValueSite:
    """q (heads) | k (kv heads) | v (kv heads): Phi-3's ``qkv_proj``, MPT's ``Wqkv``."""
    return ValueSite(module, name, kv_heads, head_dim, offset=(heads + kv_heads) * head_dim)


def _per_head(module: nn.Module, name: str, config, heads: int, kv_heads: int, head_dim: int) -> ValueSite:
    """(q, k, v) per head: NeoX, Bloom, Falcon's first layout."""
    return ValueSite(module, name, heads, head_dim, group=3 * head_dim)


def _falcon(module: nn.Module, name: str, config, heads: int, kv_heads: int, head_dim: int) -> ValueSite:
    """Falcon's three layouts, by its config flags."""
    width = _out_features(module)
    if getattr(config, "new_decoder_architecture", False):  # kv groups of (q..., k, v)
        groups = int(getattr(config, "num_kv_heads", None) or heads)
        return ValueSite(module, name, groups, head_dim, group=width // groups)
    if getattr(config, "multi_query", False):  # q heads, one k, one v
        return ValueSite(module, name, 1, head_dim, group=width)
    return _per_head(module, name, config, heads, kv_heads, head_dim)


FUSED_LAYOUTS = {"qkv": _q_k_v, "q_kv": _q_kv, "per_head": _per_head, "falcon": _falcon}


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def _out_features(module: nn.Module) -> int:
    weight = getattr(module, "weight", None)
    if weight is None:
        raise ValueError(f"value_zeroing: cannot tell the width of {type(module).__name__}.")
    return int(getattr(module, "out_features", 0) or getattr(module, "nf", 0) or weight.shape[0])


@contextlib.contextmanager
def zeroed(
    sites: Sequence[ValueSite | None],
    heads: Sequence[Sequence[int]],
    positions: torch.Tensor,
    batch: int,
    time_first: bool = False,
) -> Iterator[None]:
    """Zero value vectors in the forward run inside, which stacks R = len(positions) copies of a batch of
    ``batch`` rows: copy k has token ``positions[k]``'s values zeroed in every site (its heads ``heads[i]``).
    A ``None`` site (or no heads) is left alone. Each site must run exactly once."""
    calls: list[str] = []

    def hook_for(site: ValueSite, cols: torch.Tensor):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            calls.append(site.name)
            out = output.transpose(0, 1) if time_first else output  # (R*B, L, D)
            mask = torch.ones((positions.numel(), out.shape[1], out.shape[2]), dtype=out.dtype, device=out.device)
            r = torch.arange(positions.numel(), device=out.device)
            mask[r[:, None], positions.to(out.device)[:, None], cols.to(out.device)[None]] = 0
            masked = out * mask.repeat_interleave(batch, dim=0)
            return masked.transpose(0, 1) if time_first else masked

        return hook

    active = [(s, h) for s, h in zip(sites, heads, strict=True) if s is not None and len(h)]
    handles = [s.module.register_forward_hook(hook_for(s, s.columns(h))) for s, h in active]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    if len(calls) != len(active):
        raise ValueError(
            f"value_zeroing: {len(calls)} value projections ran for {len(active)} attentions in one forward; "
            "this family shares or loops its projections, which value zeroing does not support."
        )


@contextlib.contextmanager
def patched_blocks(
    blocks: Sequence[nn.Module], clean: Sequence[torch.Tensor] | None, time_first: bool = False
) -> Iterator[list[torch.Tensor]]:
    """Record each block's output (batch-first (N, L, H)) in the forward run inside and, unless ``clean`` is
    None, pass ``clean[i]`` (N, L, H) on instead, so that every block sees its clean input. Yields the records."""
    seen: list[torch.Tensor] = []

    def hook_for(value: torch.Tensor | None):
        def hook(module: nn.Module, args: tuple, output):
            first = output[0] if isinstance(output, tuple) else output
            seen.append((first.transpose(0, 1) if time_first else first).detach())
            if value is None:
                return None
            new = (value.transpose(0, 1) if time_first else value).to(first.dtype)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    values = [None] * len(blocks) if clean is None else clean
    handles = [b.register_forward_hook(hook_for(v)) for b, v in zip(blocks, values, strict=True)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()
    if len(seen) != len(blocks):
        raise ValueError(f"value_zeroing: {len(seen)} of {len(blocks)} blocks ran in one forward.")
