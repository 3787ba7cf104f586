"""ALTI+ (issue #26) beyond the family matrix (tests/test_families.py compares it with the per-layer reference):
per-layer rollouts, batch independence, what it refuses, and the model left untouched, also on error."""

from __future__ import annotations

import pytest
import torch

import inseq_ray
from inseq_ray.errors import ModelConformanceError
from inseq_ray.models.families import MODEL_CONFIGS, ModelConfig

SOURCES = ["the cat sees a bird near the river", "a dog"]
TARGETS = ["one fish likes bread today", "the child"]


def _hooks(model) -> set:
    """(module, hook id) of every forward hook (transformers installs its own output-capturing hooks once, on the
    first ``output_attentions`` forward: they stay)."""
    return {(n, k) for n, m in model.named_modules() for k in [*m._forward_hooks, *m._forward_pre_hooks]}


@pytest.mark.parametrize("name", ["bart", "llama"])
def test_keep_all_rolls_out_every_layer_and_the_last_is_the_default(model_dir, name):
    am = inseq_ray.load_model(model_dir[name], "alti_plus", device="cpu")
    targets = TARGETS if am.is_encoder_decoder else [s + " and more" for s in SOURCES]
    last = am.attribute(SOURCES, targets, attribute_target=True, show_progress=False)
    every = am.attribute(SOURCES, targets, attribute_target=True, keep_all=True, show_progress=False)
    n_layers = am.model.config.get_text_config().num_hidden_layers
    for a, b in zip(last, every, strict=True):
        assert b.attribution_dims == ("layers",) and b.target_attributions.shape[-1] == n_layers
        assert torch.allclose(a.target_attributions, b.target_attributions[..., -1], equal_nan=True)
        steps = b.target_attributions.nansum(0) + (b.source_attributions.nansum(0) if am.is_encoder_decoder else 0)
        assert torch.allclose(steps, torch.ones_like(steps), atol=1e-5)  # every layer's rows sum to 1
        assert not torch.allclose(b.target_attributions[..., 0], b.target_attributions[..., -1], equal_nan=True)


def test_a_sequence_alone_equals_it_in_a_padded_batch(model_dir):
    am = inseq_ray.load_model(model_dir["t5"], "alti_plus", device="cpu")
    both = am.attribute(SOURCES, TARGETS, attribute_target=True, show_progress=False)
    alone = am.attribute(SOURCES[1], TARGETS[1], attribute_target=True, show_progress=False)[0]
    for side in ("source_attributions", "target_attributions"):
        assert torch.allclose(getattr(both[1], side), getattr(alone, side), atol=1e-6, equal_nan=True)


def test_the_model_is_untouched_and_a_wrong_norm_declaration_is_refused(model_dir, monkeypatch):
    am = inseq_ray.load_model(model_dir["gpt2"], device="cpu")
    impl = am.model.config._attn_implementation
    am.attribute(SOURCES[0], SOURCES[0] + " and more", method="attention", show_progress=False)
    before = _hooks(am.model)
    am.attribute(SOURCES[0], SOURCES[0] + " and more", method="alti_plus", show_progress=False)
    assert _hooks(am.model) == before and am.model.config._attn_implementation == impl
    wrong = ModelConfig(**{**MODEL_CONFIGS["gpt2"].__dict__, "norm_placement": "post", "self_attention_norm": "ln_2"})
    monkeypatch.setitem(MODEL_CONFIGS, "gpt2", wrong)
    am = inseq_ray.load_model(model_dir["gpt2"], device="cpu")
    am.attribute(SOURCES[0], SOURCES[0] + " and more", method="attention", show_progress=False)
    before = _hooks(am.model)
    with pytest.raises(ModelConformanceError, match="not 'post'"):
        am.attribute(SOURCES[0], SOURCES[0] + " and more", method="alti_plus", show_progress=False)
    assert _hooks(am.model) == before and am.model.config._attn_implementation == impl


def test_an_undeclared_post_norm_family_is_refused(model_dir, monkeypatch):
    """BART declared pre-norm: its attentions read the stream itself, which the check sees."""
    monkeypatch.setitem(
        MODEL_CONFIGS, "bart", ModelConfig(**{**MODEL_CONFIGS["bart"].__dict__, "norm_placement": None})
    )
    am = inseq_ray.load_model(model_dir["bart"], device="cpu")
    with pytest.raises(ModelConformanceError, match="not 'pre'"):
        am.attribute(SOURCES[0], TARGETS[0], method="alti_plus", show_progress=False)


def test_led_is_refused_in_one_line(tmp_path):
    from inseq_ray.toy import build_tiny_model

    am = inseq_ray.load_model(str(build_tiny_model("led", tmp_path / "led", init_std=0.2)), device="cpu")
    with pytest.raises(ModelConformanceError, match="alti_plus needs a full attention") as err:
        am.attribute(SOURCES[0], TARGETS[0], method="alti_plus", show_progress=False)
    assert "\n" not in str(err.value)


def test_alti_plus_is_listed():
    assert "alti_plus" in inseq_ray.list_feature_attribution_methods()


def test_a_projection_without_a_readable_weight_gives_the_same_shares(model_dir, monkeypatch):
    """The fallback for an output projection that is not a plain linear map (called on each head's block alone)
    equals the path through its weight."""
    from inseq_ray.methods import alti

    am = inseq_ray.load_model(model_dir["bart"], "alti_plus", device="cpu")
    fast = am.attribute(SOURCES, TARGETS, attribute_target=True, show_progress=False)
    monkeypatch.setattr(alti, "_out_weight", lambda module: None)
    called = am.attribute(SOURCES, TARGETS, attribute_target=True, show_progress=False)
    for a, b in zip(fast, called, strict=True):
        assert torch.allclose(a.source_attributions, b.source_attributions, atol=1e-6)
        assert torch.allclose(a.target_attributions, b.target_attributions, atol=1e-6, equal_nan=True)


def test_an_attention_that_never_returns_its_weights_is_refused(model_dir, monkeypatch):
    from inseq_ray.models import mixing

    am = inseq_ray.load_model(model_dir["gpt2"], device="cpu")
    am.attribute(SOURCES[0], SOURCES[0] + " and more", method="attention", show_progress=False)
    before = _hooks(am.model)
    monkeypatch.setattr(mixing, "_probabilities", lambda x: False)  # as a module returning no weights would
    with pytest.raises(ModelConformanceError, match="returns no attention weights, even with output_attentions"):
        am.attribute(SOURCES[0], SOURCES[0] + " and more", method="alti_plus", show_progress=False)
    assert _hooks(am.model) == before
