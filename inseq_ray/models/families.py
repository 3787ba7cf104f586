"""Model-family quirks as data: one :class:`ModelConfig` per family, read wherever a family differs.

Most of what the engine needs is found generically (the input embedding by ``get_input_embeddings``, the LM
head by ``get_output_embeddings``, the decoder start by the generation config); this table says what is not:
where a block keeps its attentions and their value projections (value zeroing), how a fused q/k/v projection
lays out its values, which config field holds the maximum length, the model attributes that change logits after
the head. Keys are a ``config.model_type`` ("gpt2") or a model class name ("GPT2LMHeadModel", Inseq's keys);
a class name wins. A family that is not here is discovered with every name the table knows; users add theirs
with :func:`register_model_config` (Inseq's name and arguments). The load-time conformance check
(:meth:`inseq_ray.models.adapter.ModelAdapter.check_conformance`) stays the authority on correctness: a wrong
entry fails loading or its method in one line, never gives silent numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """One family's layout; ``None`` means "find it generically".

    self_attention_module / cross_attention_module: a decoder block's attention submodules (dotted paths under
    the block: ``"attn"``, T5's ``"layer.0.SelfAttention"``). value_vector: the attention's submodule whose output
    holds the value vectors (``"v_proj"``, or a fused ``"c_attn"``; Inseq names a forward variable here, we hook a
    module). value_layout: how a fused projection orders q, k and v (see ``models.values.FUSED_LAYOUTS``).
    embedding_module: the input embedding under the encoder/decoder stack, where ``get_input_embeddings`` is not
    it. max_length_field: the config field holding the longest accepted input. logits_bias: a model attribute
    added to the head's logits (BART's ``final_logits_bias``); logit_softcap_field: a config field capping
    logits as ``tanh(x / cap) * cap`` (Gemma 2). decoder_start_token_id: overrides the generation config's.
    """

    self_attention_module: str | None = None
    cross_attention_module: str | None = None
    value_vector: str | None = None
    value_layout: str | None = None
    embedding_module: str | None = None
    max_length_field: str | None = None
    logits_bias: str | None = None
    logit_softcap_field: str | None = None
    decoder_start_token_id: int | None = None
    norm_placement: str | None = None
    self_attention_norm: str | None = None
    cross_attention_norm: str | None = None
    attention_output_projection: str | None = None


def _bart_like(**kw) -> ModelConfig:
    fields = {"self_attention_module": "self_attn", "cross_attention_module": "encoder_attn", "value_vector": "v_proj"}
    fields |= {"attention_output_projection": "out_proj"}
    return ModelConfig(**{**fields, "max_length_field": "max_position_embeddings", **kw})


_POST = {"norm_placement": "post", "self_attention_norm": "self_attn_layer_norm"}
_POST |= {"cross_attention_norm": "encoder_attn_layer_norm"}
_SANDWICH = {"norm_placement": "sandwich", "self_attention_norm": "post_attention_layernorm"}


def _llama_like(**kw) -> ModelConfig:
    fields = {"self_attention_module": "self_attn", "value_vector": "v_proj"}
    return ModelConfig(**{**fields, "max_length_field": "max_position_embeddings", **kw})


_T5 = ModelConfig("layer.0.SelfAttention", "layer.1.EncDecAttention", "v")

MODEL_CONFIGS: dict[str, ModelConfig] = {
    # encoder-decoders
    "bart": _bart_like(logits_bias="final_logits_bias", **_POST),
    "mbart": _bart_like(logits_bias="final_logits_bias"),
    "marian": _bart_like(logits_bias="final_logits_bias", **_POST),
    "pegasus": _bart_like(logits_bias="final_logits_bias"),
    "m2m_100": _bart_like(),
    "fsmt": _bart_like(**_POST),
    "led": _bart_like(logits_bias="final_logits_bias", max_length_field="max_encoder_position_embeddings", **_POST),
    "t5": _T5,
    "mt5": _T5,
    "umt5": _T5,
    # decoder-only
    "gpt2": ModelConfig("attn", "crossattention", "c_attn", "qkv", max_length_field="n_positions"),
    "gpt_neo": ModelConfig("attn.attention", None, "v_proj", max_length_field="max_position_embeddings"),
    "mpt": ModelConfig("attn", None, "Wqkv", "q_kv", max_length_field="max_seq_len"),
    "gpt_neox": ModelConfig(
        "attention", None, "query_key_value", "per_head", max_length_field="max_position_embeddings"
    ),
    "bloom": ModelConfig("self_attention", None, "query_key_value", "per_head"),
    "falcon": ModelConfig(
        "self_attention", None, "query_key_value", "falcon", max_length_field="max_position_embeddings"
    ),
    "opt": _llama_like(**{**_POST, "norm_placement": "auto"}),  # do_layer_norm_before: False in opt-350m
    "llama": _llama_like(),
    "mistral": _llama_like(),
    "mixtral": _llama_like(),
    "qwen2": _llama_like(),
    "qwen3": _llama_like(),
    "gemma": _llama_like(),
    "gemma2": _llama_like(logit_softcap_field="final_logit_softcapping", **_SANDWICH),
    "gemma3_text": _llama_like(logit_softcap_field="final_logit_softcapping", **_SANDWICH),
    "phi": _llama_like(),
    "phi3": _llama_like(value_vector="qkv_proj", value_layout="q_kv"),
    "olmo": _llama_like(),
    "olmo2": _llama_like(**_SANDWICH),
}

GENERIC = ModelConfig()


def family_config(model) -> ModelConfig:
    """The table's entry for ``model`` (a ``PreTrainedModel``): by class name, else ``config.model_type``, else
    :data:`GENERIC` (every field found generically)."""
    entry = MODEL_CONFIGS.get(type(model).__name__)
    if entry is None:
        entry = MODEL_CONFIGS.get(str(getattr(model.config, "model_type", "")), GENERIC)
    return entry


def known_names(field: str) -> tuple[str, ...]:
    """Every value the table holds for ``field``, in table order: what discovery tries on an unknown family."""
    seen: dict[str, None] = {}
    for entry in MODEL_CONFIGS.values():
        value = getattr(entry, field)
        if value is not None:
            seen[value] = None
    return tuple(seen)


def register_model_config(
    model_type: str, config: dict | ModelConfig, overwrite: bool = False, allow_partial: bool = False
) -> None:
    """Register the layout of a family (Inseq's ``register_model_config``): ``model_type`` is a model class name
    (``"MyLMHeadModel"``, as Inseq keys it) or a ``config.model_type``; ``config`` a :class:`ModelConfig` or a
    dict of its fields. As in Inseq, an existing entry needs ``overwrite=True`` and a dict without
    ``self_attention_module`` and ``value_vector`` needs ``allow_partial=True`` (missing fields are then found
    generically). Unknown fields are refused, naming the valid ones."""
    if model_type in MODEL_CONFIGS and not overwrite:
        raise ValueError(f"{model_type} is already registered in model configurations: pass overwrite=True.")
    if isinstance(config, dict):
        valid = [f.name for f in dataclasses.fields(ModelConfig)]
        unknown = sorted(set(config) - set(valid))
        if unknown:
            raise ValueError(f"unknown model config fields {unknown} for {model_type}; valid: {', '.join(valid)}.")
        missing = [f for f in ("self_attention_module", "value_vector") if config.get(f) is None]
        if missing and not allow_partial:
            raise ValueError(
                f"missing fields {', '.join(missing)} in the model configuration for {model_type}: give them, or "
                "pass allow_partial=True to find them generically."
            )
        config = ModelConfig(**config)
    if model_type in MODEL_CONFIGS:
        logger.warning("Overwriting the model configuration of %s.", model_type)
    MODEL_CONFIGS[model_type] = config
