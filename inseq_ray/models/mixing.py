"""What ALTI+ reads of one eager forward: for each attention of each block, its weights, its value vectors, its
output, the residual stream entering it and the norm around it (where the family has one), recorded by hooks
that exist for that forward only (removed on exit, also on error) and handed over block by block, so that only
one block's attention weights are held at a time. Nothing here computes contributions.

Where things are comes from the family table (:mod:`inseq_ray.models.families`): the attention modules and
value projections as value zeroing finds them, the output projection (``attention_output_projection``, else the
first of :data:`OUTPUT_PROJECTIONS` the attention has) and the norm placement (``pre`` unless declared).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from inseq_ray.errors import ModelConformanceError, WeightsNotReturned
from inseq_ray.models.adapter import ModelAdapter
from inseq_ray.models.values import ValueSite, block_stack, decoder_blocks, value_sites

OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "dense", "o")
PLACEMENTS = ("pre", "post", "sandwich", "auto")


@dataclass
class Mixing:
    """One attention of one block as one forward saw it (batch-first).

    weights (B, H, Q, K) probabilities; values (B, K, H_kv, dh) value vectors (their bias included); output
    (B, Q, D) the attention module's output, query_input (B, Q, D) the hidden states it was given; out_proj maps (..., H * dh) -> (..., D); placement one of
    :data:`PLACEMENTS`; norm the module normalising stream + output (``post``) or output (``sandwich``), with its
    (input, output) (B, Q, D) in this forward.
    """

    weights: torch.Tensor
    values: torch.Tensor
    output: torch.Tensor
    query_input: torch.Tensor
    out_proj: nn.Module
    placement: str
    norm: nn.Module | None = None
    norm_io: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class _Site:
    """Where one attention of a block lives: the module, its value site, output projection and norm."""

    attention: nn.Module
    values: ValueSite
    out_proj: nn.Module
    norm: nn.Module | None
    placement: str


def encoder_blocks(adapter: ModelAdapter) -> nn.ModuleList:
    """The encoder's blocks (encoder-decoders only)."""
    return block_stack(adapter.model.get_encoder())


def record_mixing(adapter: ModelAdapter, run, on_block: Callable[[str, torch.Tensor, list[Mixing]], None]) -> Any:
    """Run ``run()`` (one eager forward) under the recording hooks, and after each block's forward call
    ``on_block(stack, its input stream (B, L, D), its attentions' Mixing in order)`` (``stack``: ``"encoder"`` or
    ``"decoder"``, in the order the model runs them); a block's records are dropped after it, so one block's
    attention weights are held at a time. Returns ``run()``'s output. Raises :class:`WeightsNotReturned` where an
    attention module returned no weights (run again with ``output_attentions``)."""
    stacks = {"decoder": (decoder_blocks(adapter), ("self", "cross") if adapter.is_encoder_decoder else ("self",))}
    if adapter.is_encoder_decoder:
        stacks = {"encoder": (encoder_blocks(adapter), ("self",)), **stacks}
    sites = {name: _sites(adapter, blocks, kinds) for name, (blocks, kinds) in stacks.items()}
    time_first = adapter.activation_batch_axis((type(stacks["decoder"][0][0]),)) == 1
    seen: dict[tuple[str, int], list] = {}

    def done(name: str, row: list[_Site]):
        def hook(module: nn.Module, args: tuple, output) -> None:
            stream = seen.pop(("in", id(module)))[0]
            mixings = [_mixing(site, seen) for site in row]
            seen.clear()
            on_block(name, stream, mixings)

        return hook

    with _recording(stacks, sites, seen, time_first, adapter.device, done):
        return run()


def _mixing(site: _Site, seen: dict[tuple[str, int], list]) -> Mixing:
    values = seen["out", id(site.values.module)][0]
    cols = site.values.columns(range(site.values.n_heads)).to(values.device)
    b, k = values.shape[:2]
    per_head = values[..., cols].view(b, k, site.values.n_heads, site.values.head_dim)
    output, weights = seen["out", id(site.attention)]
    if weights.dim() != 4 or weights.shape[-1] != k or weights.shape[-2] != output.shape[1]:
        raise ModelConformanceError(
            f"alti_plus: {type(site.attention).__name__} reports attention weights of shape {tuple(weights.shape)}, "
            f"not (batch, heads, {output.shape[1]}, {k}) (a local or sparse attention); ALTI+ needs full weights."
        )
    norm_io = (seen["norm", id(site.norm)][0], seen["norm", id(site.norm)][1]) if site.norm is not None else None
    query = seen["in", id(site.attention)][0]
    return Mixing(weights, per_head, output, query, site.out_proj, site.placement, site.norm, norm_io)


def _sites(adapter: ModelAdapter, blocks: nn.ModuleList, kinds: tuple[str, ...]) -> list[list[_Site]]:
    family = adapter.family
    placement = family.norm_placement or "pre"
    if placement not in PLACEMENTS:
        raise ValueError(f"norm_placement={placement!r}: valid are {', '.join(PLACEMENTS)}.")
    try:
        per_kind = {kind: value_sites(adapter, blocks, kind) for kind in kinds}
    except ValueError as e:  # e.g. LED's encoder: Longformer's local attention, no value projection there
        reason = str(e).removeprefix("value_zeroing: ")
        raise ModelConformanceError(
            f"alti_plus needs a full attention with a value projection in every block: {reason}"
        ) from e
    rows = []
    for i, block in enumerate(blocks):
        row = []
        for kind in kinds:
            values = per_kind[kind][i]
            attention = _attention_of(block, values.module)
            norm_name = family.self_attention_norm if kind == "self" else family.cross_attention_norm
            if placement != "pre" and not norm_name:
                raise ValueError(f"norm_placement={placement!r} needs the {kind}-attention's norm named in the family.")
            norm = block.get_submodule(norm_name) if placement != "pre" and norm_name else None
            row.append(_Site(attention, values, _out_proj(adapter, attention), norm, placement))
        rows.append(row)
    return rows


def _attention_of(block: nn.Module, value_module: nn.Module) -> nn.Module:
    """The block's submodule whose direct child is the value projection."""
    for module in block.modules():
        if any(child is value_module for child in module.children()):
            return module
    raise ModelConformanceError(f"alti_plus: no attention module holds the value projection in {type(block).__name__}.")


def _out_proj(adapter: ModelAdapter, attention: nn.Module) -> nn.Module:
    named = adapter.family.attention_output_projection
    names = (named,) if named else OUTPUT_PROJECTIONS
    for name in names:
        module = getattr(attention, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ModelConformanceError(
        f"alti_plus: {type(attention).__name__} has none of the output projections {', '.join(names)} "
        "(inseq_ray.register_model_config(..., attention_output_projection=...) names it for a new family)."
    )


@contextlib.contextmanager
def _recording(stacks: dict, sites: dict, seen: dict, time_first: bool, device: torch.device, done) -> Iterator[None]:
    """Hooks recording block inputs, value projections' and attentions' outputs and norms' (input, output), each
    batch-first on the input device (blocks of a model spread over devices run elsewhere)."""

    def batch_first(x):
        return (x.transpose(0, 1) if time_first and x.dim() == 3 else x).to(device)

    def pre_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("query"))
        seen["in", id(module)] = [batch_first(hidden).detach()]

    def out_hook(module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        seen["out", id(module)] = [batch_first(first).detach()]

    def attention_hook(module, args, output):
        weights = next((t for t in (output[1:] if isinstance(output, tuple) else ()) if _probabilities(t)), None)
        if weights is None:
            raise WeightsNotReturned(type(module).__name__)
        seen["out", id(module)] = [batch_first(output[0]).detach(), weights.detach().to(device)]

    def norm_hook(module, args, output):
        seen["norm", id(module)] = [batch_first(args[0]).detach(), batch_first(output).detach()]

    handles = []
    try:
        for name, (blocks, _) in stacks.items():
            for block, row in zip(blocks, sites[name], strict=True):
                handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
                handles.append(block.register_forward_hook(done(name, row)))
                for site in row:
                    handles.append(site.values.module.register_forward_hook(out_hook))
                    handles.append(site.attention.register_forward_pre_hook(pre_hook, with_kwargs=True))
                    handles.append(site.attention.register_forward_hook(attention_hook))
                    if site.norm is not None:
                        handles.append(site.norm.register_forward_hook(norm_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _probabilities(x: object) -> bool:
    """Whether ``x`` is attention weights (B, H, Q, K): rows of probabilities (T5's attention also returns its
    position bias, of the same shape)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        return False
    rows = x.detach().float().sum(-1)
    return bool((x.detach() >= 0).all() and torch.allclose(rows, torch.ones_like(rows), atol=1e-2))
