"""Safe loading of Hugging Face models and tokenizers (safetensors first, no remote code)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from inseq_ray.models import placement
from inseq_ray.models.families import family_config

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Map ``"bf16"``/``"float16"``/... to a torch dtype; ``None`` keeps the checkpoint's dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}. Valid: {', '.join(sorted(_DTYPES))}.")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_model_ref(model: str | PreTrainedModel) -> str | PreTrainedModel:
    """``toy:<name>`` -> the toy model's local folder (built on first use); anything else as given."""
    if isinstance(model, str) and model.startswith("toy:"):
        from inseq_ray.toy import resolve_toy

        return resolve_toy(model)
    return model


def load_hf_model(
    model: str | PreTrainedModel,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    trust_remote_code: bool = False,
    **model_kwargs: Any,
) -> PreTrainedModel:
    """Load ``model`` (hub id, local path or built model) as a seq2seq or causal LM in eval mode.

    safetensors weights are required unless ``use_safetensors=False`` is passed explicitly, and
    remote code runs only with ``trust_remote_code=True``. A ``device_map`` (in ``model_kwargs``) places the
    modules through accelerate and the model is not moved to ``device``.
    """
    model_kwargs = placement.quantization_kwargs(model_kwargs)
    if isinstance(model, PreTrainedModel):
        hf_model = model
        if dtype is not None:
            hf_model = hf_model.to(dtype)  # type: ignore[arg-type]  # transformers types .to for its own wrapper
    else:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        auto_cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model_kwargs.setdefault("use_safetensors", True)
        if dtype is not None:
            model_kwargs["dtype"] = dtype
        try:
            hf_model = auto_cls.from_pretrained(model, trust_remote_code=trust_remote_code, **model_kwargs)
        except OSError as e:
            if model_kwargs.get("use_safetensors") and "safetensors" in str(e).lower():
                raise OSError(
                    f"{model!r} has no safetensors weights. Pickled weights can run code when loaded: if you "
                    "trust this checkpoint, pass use_safetensors=False to load_model."
                ) from e
            raise
    if not placement.is_dispatched(hf_model):
        hf_model = hf_model.to(device)  # type: ignore[arg-type]  # (as above)
    return hf_model.eval()


def load_tokenizer(
    model: str | PreTrainedModel,
    tokenizer: str | PreTrainedTokenizerBase | None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """Load the tokenizer named by ``tokenizer`` or, by default, the one stored with ``model``."""
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    source = tokenizer if tokenizer is not None else model
    if isinstance(source, PreTrainedModel):
        name = source.config.name_or_path
        if not name:
            raise ValueError("A model object without a saved path needs tokenizer=... to be passed.")
        source = name
    return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)


def max_input_length(hf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The longest sequence the model accepts, from its config (or a sane tokenizer limit)."""
    cfg = hf_model.config
    field = family_config(hf_model).max_length_field
    for name in ((field,) if field else ()) + ("max_position_embeddings", "n_positions", "max_source_positions"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 1_000_000 else None
