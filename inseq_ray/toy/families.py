"""Tiny model families built with the flags their *real* checkpoints carry (a per-family config registry).

Each entry maps a family id to a function ``Size -> (model class, config class, config kwargs)``.
Default-config models hide the bugs users meet (a Marian built with defaults does not scale its
embeddings; every opus-mt checkpoint does), so every entry sets the flags of a named published
checkpoint, noted beside it: embedding scaling, decoder start token, tied or untied heads,
projections, logits biases and soft-capping, embedding norms, gated FFNs, positions, GQA. Only the
sizes are tiny.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import transformers

from inseq_ray.registry import lookup


@dataclass(frozen=True)
class Size:
    """Tiny sizes shared by every family; ``init_std`` large enough that outputs are peaked."""

    vocab: int
    layers: int = 2
    hidden: int = 32
    heads: int = 4
    max_positions: int = 128
    init_std: float = 0.02
    activation: str | None = None  # None: the family's own


@dataclass(frozen=True)
class Family:
    """How to build one family: its classes, flags, and the tokenizer template it needs."""

    build: Callable[[Size], dict]  # Size -> config kwargs
    model_cls: str  # transformers class name
    config_cls: str
    encoder_decoder: bool
    bos_template: bool = False  # the tokenizer adds <s> in front (Llama-style)
    checkpoint: str = ""  # the published checkpoint whose flags are copied


FAMILIES: dict[str, Family] = {}
SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}  # the toy tokenizers' ids


def family(name: str, model_cls: str, config_cls: str, checkpoint: str, encoder_decoder: bool, **kw):
    def add(fn: Callable[[Size], dict]) -> Callable[[Size], dict]:
        FAMILIES[name] = Family(fn, model_cls, config_cls, encoder_decoder, checkpoint=checkpoint, **kw)
        return fn

    return add


def get_family(name: str) -> Family:
    return lookup(FAMILIES, name, "toy model family")


def build_model(name: str, size: Size):
    """A seeded-by-caller random model of family ``name`` (eval mode)."""
    fam = get_family(name)
    config = getattr(transformers, fam.config_cls)(**fam.build(size))
    return getattr(transformers, fam.model_cls)(config).eval()


# ---- encoder-decoder --------------------------------------------------------------------------------


def _bart_like(s: Size, activation: str, **flags) -> dict:
    return {
        "vocab_size": s.vocab,
        "d_model": s.hidden,
        "encoder_layers": s.layers,
        "decoder_layers": s.layers,
        "encoder_attention_heads": s.heads,
        "decoder_attention_heads": s.heads,
        "encoder_ffn_dim": s.hidden * 2,
        "decoder_ffn_dim": s.hidden * 2,
        "max_position_embeddings": s.max_positions,
        "activation_function": s.activation or activation,
        "init_std": s.init_std,
        "forced_eos_token_id": None,
        **SPECIAL_IDS,
        **flags,
    }


@family("fsmt", "FSMTForConditionalGeneration", "FSMTConfig", "facebook/wmt19-en-de", True)
def _fsmt(s: Size) -> dict:
    kw = _bart_like(s, "relu", scale_embedding=True, tie_word_embeddings=False, decoder_start_token_id=2)
    kw.pop("forced_eos_token_id")
    return {**kw, "src_vocab_size": s.vocab, "tgt_vocab_size": s.vocab, "langs": ["en", "de"], "num_beams": 1}


@family("marian", "MarianMTModel", "MarianConfig", "Helsinki-NLP/opus-mt-en-it", True)
def _marian(s: Size) -> dict:
    # opus-mt: scaled embeddings, sinusoidal positions, decoder starts from <pad>, swish, shared embeddings
    return _bart_like(s, "swish", scale_embedding=True, decoder_start_token_id=0, share_encoder_decoder_embeddings=True)


@family("bart", "BartForConditionalGeneration", "BartConfig", "facebook/bart-large", True)
def _bart(s: Size) -> dict:
    # bart-large: no embedding scale, layernorm_embedding, post-norm, decoder starts from </s>
    return _bart_like(s, "gelu", scale_embedding=False, decoder_start_token_id=2, forced_bos_token_id=1)


@family("mbart", "MBartForConditionalGeneration", "MBartConfig", "facebook/mbart-large-50", True)
def _mbart(s: Size) -> dict:
    # mbart-large-50: scaled embeddings, pre-norm with final layer norms, decoder starts from </s>
    return _bart_like(s, "gelu", scale_embedding=True, decoder_start_token_id=2)


@family("m2m100", "M2M100ForConditionalGeneration", "M2M100Config", "facebook/nllb-200-distilled-600M", True)
def _m2m100(s: Size) -> dict:
    # NLLB: scaled embeddings (inside the embedding module), sinusoidal positions, relu, start from </s>
    return _bart_like(s, "relu", scale_embedding=True, decoder_start_token_id=2)


@family("pegasus", "PegasusForConditionalGeneration", "PegasusConfig", "google/pegasus-xsum", True)
def _pegasus(s: Size) -> dict:
    # pegasus-xsum: scaled embeddings, static sinusoidal positions, pre-norm, relu, start from <pad>
    return _bart_like(s, "relu", scale_embedding=True, decoder_start_token_id=0)


@family("led", "LEDForConditionalGeneration", "LEDConfig", "allenai/led-base-16384", True)
def _led(s: Size) -> dict:
    # led-base-16384: Longformer local attention in the encoder (window 1024 there), start from </s>
    kw = _bart_like(s, "gelu", decoder_start_token_id=2)
    kw.pop("max_position_embeddings")
    return {
        **kw,
        "max_encoder_position_embeddings": s.max_positions,
        "max_decoder_position_embeddings": s.max_positions,
        "attention_window": [4] * s.layers,
    }


def _t5(s: Size, **flags) -> dict:
    return {
        "vocab_size": s.vocab,
        "d_model": s.hidden,
        "d_kv": s.hidden // s.heads,
        "d_ff": s.hidden * 2,
        "num_layers": s.layers,
        "num_heads": s.heads,
        "initializer_factor": s.init_std * 5,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "eos_token_id": 2,
        **flags,
    }


@family("t5", "T5ForConditionalGeneration", "T5Config", "t5-small", True)
def _t5_v1(s: Size) -> dict:
    # t5-small: relu FFN, tied head (decoder output rescaled by d_model**-0.5), relative attention bias
    return _t5(s, feed_forward_proj=s.activation or "relu", tie_word_embeddings=True)


@family("flan_t5", "T5ForConditionalGeneration", "T5Config", "google/flan-t5-small", True)
def _flan_t5(s: Size) -> dict:
    # T5 v1.1 / Flan: gated-gelu FFN, untied head
    kw = _t5(s, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    kw["initializer_factor"] *= 0.25  # gated FFNs: a smaller init keeps this tiny model's outputs from saturating
    return kw


# ---- decoder-only -----------------------------------------------------------------------------------


def _llama_like(s: Size, activation: str = "silu", **flags) -> dict:
    return {
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "intermediate_size": s.hidden * 2,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": max(1, s.heads // 2),
        "max_position_embeddings": s.max_positions,
        "initializer_range": s.init_std,
        "hidden_act": s.activation or activation,
        **SPECIAL_IDS,
        **flags,
    }


@family("gpt2", "GPT2LMHeadModel", "GPT2Config", "gpt2", False)
def _gpt2(s: Size) -> dict:
    # gpt2: learned positions, tied head, gelu_new, scaled attention weights
    return {
        "vocab_size": s.vocab,
        "n_positions": s.max_positions,
        "n_embd": s.hidden,
        "n_layer": s.layers,
        "n_head": s.heads,
        "activation_function": s.activation or "gelu_new",
        "initializer_range": s.init_std,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        **SPECIAL_IDS,
    }


@family("gpt_neox", "GPTNeoXForCausalLM", "GPTNeoXConfig", "EleutherAI/pythia-70m", False)
def _gpt_neox(s: Size) -> dict:
    # pythia: parallel residual, rotary on 25% of each head, untied head
    return {
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "intermediate_size": s.hidden * 4,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "max_position_embeddings": s.max_positions,
        "initializer_range": s.init_std,
        "rotary_pct": 0.25,
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        **SPECIAL_IDS,
    }


@family("opt", "OPTForCausalLM", "OPTConfig", "facebook/opt-350m", False)
def _opt(s: Size) -> dict:
    # opt-350m: word_embed_proj_dim != hidden (project_in/out), post-norm, learned positions offset 2
    return {
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "word_embed_proj_dim": s.hidden // 2,
        "ffn_dim": s.hidden * 2,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "max_position_embeddings": s.max_positions,
        "init_std": s.init_std,
        "do_layer_norm_before": False,
        "activation_function": s.activation or "relu",
        **SPECIAL_IDS,
    }


@family("bloom", "BloomForCausalLM", "BloomConfig", "bigscience/bloom-560m", False)
def _bloom(s: Size) -> dict:
    # bloom: ALiBi, layer norm right after the embeddings, tied head
    return {
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "n_layer": s.layers,
        "n_head": s.heads,
        "initializer_range": s.init_std,
        "tie_word_embeddings": True,
        **SPECIAL_IDS,
    }


@family("llama", "LlamaForCausalLM", "LlamaConfig", "meta-llama/Llama-3.2-1B", False, bos_template=True)
def _llama(s: Size) -> dict:
    # Llama 3: GQA, rotary (llama3 scaling omitted at this size), RMSNorm, BOS added, untied head here
    return _llama_like(s, tie_word_embeddings=False, rope_theta=500000.0)


@family("mistral", "MistralForCausalLM", "MistralConfig", "mistralai/Mistral-7B-v0.1", False, bos_template=True)
def _mistral(s: Size) -> dict:
    # Mistral 7B v0.1: GQA, sliding-window attention (window shorter than the test texts here)
    return _llama_like(s, tie_word_embeddings=False, sliding_window=6)


@family("qwen2", "Qwen2ForCausalLM", "Qwen2Config", "Qwen/Qwen2.5-0.5B", False)
def _qwen2(s: Size) -> dict:
    # Qwen2.5-0.5B: q/k/v biases, GQA, tied head, no BOS
    return _llama_like(s, tie_word_embeddings=True, rope_theta=1000000.0, use_sliding_window=False)


@family("qwen3", "Qwen3ForCausalLM", "Qwen3Config", "Qwen/Qwen3-0.6B", False)
def _qwen3(s: Size) -> dict:
    # Qwen3-0.6B: per-head q/k RMSNorm, GQA, no q/k/v biases, explicit head_dim, tied head, no BOS
    return _llama_like(
        s,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        head_dim=s.hidden // s.heads,
        attention_bias=False,
        use_sliding_window=False,
    )


@family("gemma", "GemmaForCausalLM", "GemmaConfig", "google/gemma-2b", False, bos_template=True)
def _gemma(s: Size) -> dict:
    # gemma-2b: embeddings times sqrt(hidden), MQA, GeGLU, tied head, (1 + w) RMSNorm
    return _llama_like(
        s, "gelu_pytorch_tanh", num_key_value_heads=1, head_dim=s.hidden // s.heads, tie_word_embeddings=True
    )


@family("gemma2", "Gemma2ForCausalLM", "Gemma2Config", "google/gemma-2-2b", False, bos_template=True)
def _gemma2(s: Size) -> dict:
    # gemma-2-2b: final logit soft-capping 30, attention soft-capping 50, alternating sliding window
    return _llama_like(
        s,
        "gelu_pytorch_tanh",
        head_dim=s.hidden // s.heads,
        tie_word_embeddings=True,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        query_pre_attn_scalar=s.hidden // s.heads,
        sliding_window=6,
    )


@family("gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig", "google/gemma-3-1b-it", False, bos_template=True)
def _gemma3(s: Size) -> dict:
    # gemma-3-1b-it: q/k norms, sandwich norms, local (sliding) and global layers with their own rope bases, MQA,
    # no soft-capping, embeddings times sqrt(hidden), tied head
    return _llama_like(
        s,
        "gelu_pytorch_tanh",
        num_key_value_heads=1,
        head_dim=s.hidden // s.heads,
        tie_word_embeddings=True,
        query_pre_attn_scalar=s.hidden // s.heads,
        sliding_window=6,
        layer_types=["sliding_attention", "full_attention"],
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
    )


@family("phi", "PhiForCausalLM", "PhiConfig", "microsoft/phi-2", False)
def _phi(s: Size) -> dict:
    # phi-2: parallel attention/MLP, partial rotary (40%), LM head with a bias, untied
    kw = _llama_like(s, "gelu_new", partial_rotary_factor=0.4, tie_word_embeddings=False)
    kw.update(
        hidden_size=20 * s.heads, intermediate_size=40 * s.heads, num_key_value_heads=s.heads
    )  # head_dim 20 as phi-2's 80: 40% of it is even
    return kw


@family("falcon", "FalconForCausalLM", "FalconConfig", "tiiuae/falcon-7b", False)
def _falcon(s: Size) -> dict:
    # falcon-7b: multi-query attention, parallel attention, rotary, tied head
    return {
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "multi_query": True,
        "parallel_attn": True,
        "alibi": False,
        "new_decoder_architecture": False,
        "bias": False,
        "initializer_range": s.init_std,
        "max_position_embeddings": s.max_positions,
        "tie_word_embeddings": True,
        **SPECIAL_IDS,
    }


@family("olmo", "OlmoForCausalLM", "OlmoConfig", "allenai/OLMo-1B-hf", False)
def _olmo(s: Size) -> dict:
    # OLMo-1B: non-parametric layer norm, clip_qkv absent in 1B (set here, as OLMo-7B-0424), tied head
    kw = _llama_like(s, tie_word_embeddings=True, clip_qkv=8.0)
    kw["num_key_value_heads"] = s.heads
    return kw
