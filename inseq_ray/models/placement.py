"""Models spread over devices (``device_map``) and quantized checkpoints: what loading accepts and where the
engine's tensors live.

A model dispatched by accelerate (``device_map="auto"``, a user's map, offloaded layers) moves each module's
inputs to that module's device itself, through hooks on the modules. The engine keeps every tensor it owns
(ids, embeddings, baselines, gathered state rows, logits, step functions' inputs) on one device: the
*input device*, where the model's input embedding runs. The adapter brings what the model returns (states,
logits, attention weights) back there; the model's own hooks carry the substituted embeddings and layer
values forward. So attributions of a dispatched model equal those of the same model on one device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from inseq_ray.errors import InputError

QUANTIZATION_FLAGS = ("load_in_8bit", "load_in_4bit")


def input_device(model: nn.Module) -> torch.device:
    """Where the model's input ids go: its input embedding's execution device (an accelerate hook's), else the
    device of its first weight that is not offloaded (``meta``)."""
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    for module in (embedding, model):
        if not isinstance(module, nn.Module):
            continue
        device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        for p in module.parameters():
            if p.device.type != "meta":
                return p.device
    return torch.device("cpu")


def is_dispatched(model: nn.Module) -> bool:
    """True when accelerate placed the model (a ``device_map``): loading must not move it as a whole."""
    return bool(getattr(model, "hf_device_map", None))


def quantization_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``load_in_8bit=True`` / ``load_in_4bit=True`` (Inseq's and older transformers' flags) -> a bitsandbytes
    ``quantization_config``; refused in one line where it cannot run (no CUDA device, no bitsandbytes)."""
    flags = [k for k in QUANTIZATION_FLAGS if model_kwargs.pop(k, False)]
    config = model_kwargs.get("quantization_config")
    if not flags and config is None:
        return model_kwargs
    what = flags[0] if flags else f"quantization_config={type(config).__name__}"
    if not torch.cuda.is_available():
        raise InputError(
            f"{what}: quantized checkpoints (bitsandbytes 8-bit/4-bit) run on CUDA GPUs only and this machine has "
            "none; load the model unquantized (dtype='bf16' halves its memory) or run on a GPU node."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise InputError(f"{what} needs the bitsandbytes package: pip install bitsandbytes") from e
    if flags:
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(**{flags[0]: True})
    model_kwargs.setdefault("device_map", {"": input_index()})
    return model_kwargs


def input_index() -> int:
    """The CUDA device this process uses (quantized weights are placed there)."""
    return torch.cuda.current_device()


def device_map_kwargs(device_map: Any, max_memory: dict | None) -> dict[str, Any]:
    """``device_map``/``max_memory`` for ``from_pretrained`` (accelerate places the modules); checked first."""
    if device_map is None:
        if max_memory is not None:
            raise InputError("max_memory limits a device_map: give device_map='auto' (or your own map) with it.")
        return {}
    try:
        import accelerate  # noqa: F401
    except ImportError as e:
        raise InputError(f"device_map={device_map!r} needs the accelerate package: pip install accelerate") from e
    return {"device_map": device_map, **({"max_memory": max_memory} if max_memory is not None else {})}
