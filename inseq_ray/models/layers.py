"""A layer as the attributed input (captum's layer methods): its output captured, or replaced by a tensor.

``LayerSite`` names one module of the model and the side ("source": encoder, "target": decoder or a
decoder-only model) whose token positions its output rows are. Hooks live for one forward and are
removed on exit, also on error (actors reuse the model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from inseq_ray.models.adapter import ModelAdapter


@dataclass(frozen=True)
class LayerSite:
    """module: the layer; side: whose positions its rows are; time_first: its output is (L, B, H)."""

    module: nn.Module
    name: str
    side: str
    time_first: bool


def resolve_layer(adapter: ModelAdapter, target_layer: str | nn.Module) -> LayerSite:
    """A dotted module name (``"model.decoder.layers.1"``) or a module of the model -> its site."""
    model = adapter.model
    names = {id(m): n for n, m in model.named_modules()}
    if isinstance(target_layer, str):
        try:
            module = model.get_submodule(target_layer)
        except AttributeError:
            layers = [n for n, m in model.named_modules() if n.count(".") <= 4 and "layers." in n][:6]
            raise ValueError(
                f"target_layer={target_layer!r} is not a module of {type(model).__name__} "
                f"(e.g. {', '.join(layers) or 'see model.named_modules()'})."
            ) from None
    elif isinstance(target_layer, nn.Module) and id(target_layer) in names:
        module = target_layer
    else:
        raise ValueError("target_layer must be a dotted module name or a module of this model.")
    encoder = {id(m) for m in model.get_encoder().modules()} if adapter.is_encoder_decoder else set()
    side = "source" if id(module) in encoder else "target"
    time_first = adapter.activation_batch_axis((type(module),)) == 1
    return LayerSite(module, names[id(module)], side, time_first)


@contextlib.contextmanager
def captured(site: LayerSite) -> Iterator[list[torch.Tensor]]:
    """Record the layer's output of the forwards run inside (batch-first (B, L, H))."""
    seen: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output) -> None:
        seen.append(_batch_first(_first(output), site).detach())

    handle = site.module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@contextlib.contextmanager
def replaced(site: LayerSite, value: torch.Tensor) -> Iterator[None]:
    """Replace the layer's output by ``value`` (B, L, H) in the forward run inside (it must run exactly once)."""
    calls = []

    def hook(module: nn.Module, args: tuple, output):
        calls.append(1)
        new = value.transpose(0, 1) if site.time_first else value
        first = _first(output)
        if new.shape != first.shape:
            raise ValueError(
                f"target_layer {site.name}: output {tuple(first.shape)} vs substituted {tuple(new.shape)}."
            )
        new = new.to(first.device, first.dtype)  # a dispatched model's layer may live on another device
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = site.module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
    if len(calls) != 1:
        raise ValueError(
            f"target_layer {site.name} ran {len(calls)} times in one forward: pick a module that runs once "
            "(e.g. one transformer layer, not a shared embedding or a module inside a loop)."
        )


def check_activation(site: LayerSite, seen: list[torch.Tensor], batch: int, length: int) -> torch.Tensor:
    """The one activation of a forward, checked to be (batch, tokens of its side, hidden)."""
    if len(seen) != 1:
        raise ValueError(
            f"target_layer {site.name} ran {len(seen)} times in one forward: pick a module that runs once."
        )
    a = seen[0]
    if a.dim() != 3 or a.shape[0] != batch or a.shape[1] != length:
        raise ValueError(
            f"target_layer {site.name} outputs {tuple(a.shape)}, not (batch, tokens, hidden) = ({batch}, {length}, H): "
            "pick a layer whose output has one row per token (a transformer layer, an embedding, a norm)."
        )
    return a


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _batch_first(t: torch.Tensor, site: LayerSite) -> torch.Tensor:
    return t.transpose(0, 1) if site.time_first else t
