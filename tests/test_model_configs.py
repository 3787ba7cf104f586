"""The family table (inseq_ray/models/families.py) and ``register_model_config``: every family of the matrix has
its own entry and each entry names modules its model really has; what the engine reads comes from the table; a
family the table does not know is found generically, or by what its user registers (Inseq's rules)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import inseq_ray as inseq
from inseq_ray.models.families import GENERIC, MODEL_CONFIGS, ModelConfig, family_config
from inseq_ray.models.values import decoder_blocks, value_sites
from inseq_ray.toy.families import FAMILIES, Size, build_model

PROMPT, TARGET = "the cat sees a bird", "the cat sees a bird and the dog eats"


class MyConfig(LlamaConfig):
    model_type = "my_llama"  # a family the table does not know


class MyLM(LlamaForCausalLM):
    config_class = MyConfig


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_has_an_entry_naming_modules_it_has(name):
    torch.manual_seed(0)
    model = build_model(name, Size(vocab=64))
    entry = family_config(model)
    assert entry is not GENERIC, f"{name} ({model.config.model_type}) has no entry in models/families.py"
    for block in decoder_blocks(_Adapter(model)):
        attention = block.get_submodule(entry.self_attention_module)
        attention.get_submodule(entry.value_vector)
        if model.config.is_encoder_decoder:
            block.get_submodule(entry.cross_attention_module).get_submodule(entry.value_vector)
    if entry.max_length_field is not None:
        assert getattr(model.config, entry.max_length_field) > 0
    if entry.logits_bias is not None:
        assert isinstance(getattr(model, entry.logits_bias), torch.Tensor)
    if entry.logit_softcap_field is not None:  # a field of the config (None where a checkpoint has no cap: Gemma 3)
        assert hasattr(model.config.get_text_config(), entry.logit_softcap_field)


class _Adapter:
    """What decoder_blocks reads of an adapter, without loading (no conformance forward)."""

    def __init__(self, model) -> None:
        self.model, self.is_encoder_decoder = model, bool(model.config.is_encoder_decoder)


def load_my(model_dir):
    """The tiny Llama's weights in a class whose family the table does not know, loaded (the table is read then)."""
    base = LlamaForCausalLM.from_pretrained(model_dir["llama"])
    fields = {k: v for k, v in base.config.to_dict().items() if k != "model_type"}
    model = MyLM(MyConfig(**fields))
    assert model.config.model_type == "my_llama"
    model.load_state_dict(base.state_dict())
    return inseq.load_model(model.eval(), tokenizer=model_dir["llama"], device="cpu")


@pytest.fixture
def registered():
    """Names registered by a test are removed after it."""
    names: list[str] = []
    yield names
    for name in names:
        MODEL_CONFIGS.pop(name, None)


def test_an_unknown_family_is_found_generically(model_dir, llama):
    my_model = load_my(model_dir)
    assert my_model.adapter.family is GENERIC
    ours = my_model.attribute(PROMPT, TARGET, method="value_zeroing", show_progress=False)[0]
    ref = llama.attribute(PROMPT, TARGET, method="value_zeroing", show_progress=False)[0]
    known = ~ref.target_attributions.isnan()
    assert ref.target_attributions[known].abs().max() > 0.05
    assert torch.allclose(ours.target_attributions[known], ref.target_attributions[known], atol=1e-5)


def test_a_registered_family_is_what_the_engine_reads(model_dir, registered):
    registered.append("MyLM")
    inseq.register_model_config("MyLM", {"self_attention_module": "self_attn", "value_vector": "k_proj"})
    my_model = load_my(model_dir)
    sites = value_sites(my_model.adapter, decoder_blocks(my_model.adapter), "self")
    assert all(s.module is b.self_attn.k_proj for s, b in zip(sites, my_model.model.model.layers, strict=True))
    inseq.register_model_config("MyLM", {"self_attention_module": "mixer", "value_vector": "v_proj"}, overwrite=True)
    with pytest.raises(ValueError, match="looked for mixer.*register_model_config"):
        load_my(model_dir).attribute(PROMPT, TARGET, method="value_zeroing", show_progress=False)


def test_registered_quirks_reach_loading_and_the_head(model_dir, registered):
    """A class name wins over the model type; a registered max-length field and decoder start are read; a
    logits bias the table misses makes the conformance check fall back to the model's own logits ("full"):
    the table never gives silent numbers."""
    registered += ["GPT2LMHeadModel", "MarianMTModel"]
    inseq.register_model_config("GPT2LMHeadModel", ModelConfig(max_length_field="n_embd"))
    am = inseq.load_model(model_dir["gpt2"], device="cpu")
    assert am.max_length == am.model.config.n_embd != am.model.config.n_positions
    assert inseq.load_model(model_dir["marian"], device="cpu").adapter.mode == "split"
    quirks = ModelConfig(logits_bias="no_such_bias", decoder_start_token_id=7)
    inseq.register_model_config("MarianMTModel", quirks)
    am = inseq.load_model(model_dir["marian"], device="cpu")
    assert am.adapter.mode == "full" and am.decoder_start() == 7


def test_register_follows_inseqs_rules(registered):
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        inseq.register_model_config("llama", {"self_attention_module": "self_attn", "value_vector": "v_proj"})
    with pytest.raises(ValueError, match="missing fields value_vector.*allow_partial=True"):
        inseq.register_model_config("NewLM", {"self_attention_module": "attn"})
    with pytest.raises(ValueError, match=r"unknown model config fields \['value_vectr'\].*valid: self_attention"):
        inseq.register_model_config("NewLM", {"self_attention_module": "attn", "value_vectr": "v"})
    assert "NewLM" not in MODEL_CONFIGS
    registered.append("NewLM")
    inseq.register_model_config("NewLM", {"self_attention_module": "attn"}, allow_partial=True)
    assert MODEL_CONFIGS["NewLM"] == ModelConfig(self_attention_module="attn")
