"""Inseq 0.7.1's public surface (issue #26): every top-level name exists here, the model's token helpers equal
Inseq's on the same checkpoint, and an Inseq user's script runs unchanged after ``import inseq_ray as inseq``."""

from __future__ import annotations

import pytest
import torch

import inseq_ray

inseq = pytest.importorskip("inseq")

HELPERS = ("bos_token", "bos_token_id", "eos_token_id", "pad_token", "special_tokens", "special_tokens_ids")


def test_every_public_name_of_inseq_exists():
    public = [n for n in inseq.__all__ if not n.startswith("_")]
    assert public and [n for n in public if not hasattr(inseq_ray, n)] == []
    assert inseq_ray.list_supported_frameworks() == inseq.list_supported_frameworks()


@pytest.mark.parametrize("name", ["bart", "gpt2"])
def test_token_helpers_equal_inseqs(model_dir, name):
    theirs = inseq.load_model(model_dir[name], "saliency")
    ours = inseq_ray.load_model(model_dir[name], "saliency", device="cpu")
    for helper in HELPERS:
        assert getattr(ours, helper) == getattr(theirs, helper), helper
    assert ours.info["model_class"] == theirs.info["model_class"] and ours.default_attributed_fn_id == "probability"
    ids = torch.tensor([[ours.tokenizer.eos_token_id, 5, 9, 12], [7, 8, 9, 10]])
    for kw in ({}, {"skip_special_tokens": False}, {"decode_tokens": True}):
        assert ours.convert_ids_to_tokens(ids, **kw) == theirs.convert_ids_to_tokens(ids, **kw), kw
        assert ours.convert_ids_to_tokens(ids[0], **kw) == theirs.convert_ids_to_tokens(ids[0], **kw), kw
    texts = ["the cat sees a bird", "a dog"]
    for kw in ({}, {"skip_special_tokens": False}, {"as_targets": name == "bart"}):
        tokens = ours.convert_string_to_tokens(texts, **kw)
        assert tokens == theirs.convert_string_to_tokens(texts, **kw), kw
        assert ours.convert_tokens_to_string(tokens, **kw) == theirs.convert_tokens_to_string(tokens, **kw), kw
        assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
    assert ours.decode(ids) == theirs.decode(ids) and ours.decode(ids, False) == theirs.decode(ids, False)


def test_an_inseq_users_script_runs_unchanged(model_dir, tmp_path, capsys):
    """A script written for Inseq 0.7.1, names and arguments as its documentation shows them."""
    inseq = inseq_ray  # the one change: ``import inseq_ray as inseq``
    assert "hf_transformers" in inseq.list_supported_frameworks()
    assert {"saliency", "attnlrp", "alti_plus"} <= set(inseq.list_feature_attribution_methods())
    assert "probability" in inseq.list_step_functions() and "spans" in inseq.list_aggregators()
    inseq.explain("saliency")
    model = inseq.load_model(model_dir["bart"], "integrated_gradients")
    out = model.attribute(
        ["the cat sees a bird", "a dog"],
        n_steps=4,
        step_scores=["probability"],
        attribute_target=True,
        show_progress=False,
        output_step_attributions=False,
        skip_special_tokens=False,
    )
    tokens = model.convert_ids_to_tokens(torch.tensor([out[0].source[0].id]))
    assert tokens == [out[0].source[0].token]
    out.save(tmp_path / "out.json", overwrite=True)
    loaded = inseq.FeatureAttributionOutput.load(tmp_path / "out.json")
    agg = loaded.aggregate()
    agg.show(display=False, return_html=True)
    dicts = out.get_scores_dicts()
    assert len(dicts) == 2 and out.decode_tokens(model.tokenizer) is not None
    merged = inseq.merge_attributions([out, out])
    assert len(merged) == 4
    inseq.show_attributions(agg, display=False, return_html=True)
