"""Inseq's per-call options of attribute() (issue #26): clean_special_chars equal to Inseq 0.7.1's tokens,
override_default_attribution, device (moved for the call and back), pretty_progress accepted."""

from __future__ import annotations

import warnings

import pytest
import torch

import inseq_ray
from inseq_ray.errors import InputError

inseq = pytest.importorskip("inseq")

SOURCE, TARGETS = "the cat sees a bird", {False: "the cat sees a bird and the dog", True: "a dog likes the tree"}


@pytest.mark.parametrize("name", ["gpt2", "bart"])
def test_clean_special_chars_gives_inseqs_tokens(model_dir, name):
    am = inseq_ray.load_model(model_dir[name], "saliency", device="cpu")
    target = TARGETS[am.is_encoder_decoder]
    ours = am.attribute(SOURCE, target, clean_special_chars=True, show_progress=False)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inseq.load_model(model_dir[name], "saliency").attribute(
            SOURCE, target, clean_special_chars=True, show_progress=False
        )[0]
    assert [t.token for t in ours.target] == [t.token for t in theirs.target]
    if am.is_encoder_decoder:
        assert [t.token for t in ours.source] == [t.token for t in theirs.source]
    plain = am.attribute(SOURCE, target, show_progress=False)[0]
    assert [t.id for t in plain.target] == [t.id for t in ours.target]  # ids kept
    assert any(a.token != b.token for a, b in zip(plain.target, ours.target, strict=True))


def test_override_default_attribution(model_dir):
    am = inseq_ray.load_model(model_dir["gpt2"], "saliency", device="cpu")
    am.attribute(SOURCE, TARGETS[False], method="input_x_gradient", show_progress=False)
    assert am.default_method == "saliency"
    out = am.attribute(SOURCE, TARGETS[False], method="input_x_gradient", override_default_attribution=True,
                       show_progress=False)  # fmt: skip
    assert am.default_method == "input_x_gradient" == out.info["attribution_method"]
    assert am.attribute(SOURCE, TARGETS[False], show_progress=False).info["attribution_method"] == "input_x_gradient"


def test_device_for_one_call_and_pretty_progress(model_dir, tmp_path):
    am = inseq_ray.load_model(model_dir["gpt2"], "saliency", device="cpu")
    a = am.attribute(SOURCE, TARGETS[False], device="cpu", pretty_progress=False, show_progress=False)[0]
    b = am.attribute(SOURCE, TARGETS[False], show_progress=False)[0]
    assert torch.equal(a.target_attributions.nan_to_num(), b.target_attributions.nan_to_num())
    assert am.device == torch.device("cpu")
    with pytest.raises(InputError, match="attribute\\(\\)'s"):
        am.attribute_stream(SOURCE, TARGETS[False], device="cpu")
    from tests.test_placement import _dispatched

    spread = _dispatched(model_dir["gpt2"], tmp_path)
    with pytest.raises(InputError, match="device_map"):
        spread.attribute(SOURCE, TARGETS[False], device="meta", show_progress=False)


@pytest.mark.parametrize("name", ["llama", "bart"])
def test_skip_special_tokens_equals_inseqs(model_dir, name):
    """No special tokens added (Llama's BOS, BART's <s> and </s>) and their strings removed from the texts:
    the same tokens and scores as Inseq 0.7.1 with skip_special_tokens=True."""
    am = inseq_ray.load_model(model_dir[name], "saliency", device="cpu")
    target = TARGETS[am.is_encoder_decoder]
    source = "<s>" + SOURCE if not am.is_encoder_decoder else SOURCE
    ours = am.attribute(source, ("<s>" if not am.is_encoder_decoder else "") + target, skip_special_tokens=True,
                        show_progress=False, attribute_target=am.is_encoder_decoder)[0].aggregate()  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inseq.load_model(model_dir[name], "saliency").attribute(
            source, ("<s>" if not am.is_encoder_decoder else "") + target, skip_special_tokens=True,
            show_progress=False, attribute_target=am.is_encoder_decoder,
        )[0].aggregate()  # fmt: skip
    assert [t.token for t in ours.target] == [t.token for t in theirs.target]
    assert [t.token for t in ours.source] == [t.token for t in theirs.source]
    assert am.tokenizer.bos_token not in [t.token for t in ours.source + ours.target[1:]]
    for side in ("source_attributions", "target_attributions"):
        a, b = getattr(ours, side), getattr(theirs, side)
        if a is not None and b is not None:
            assert torch.allclose(a.float(), b.float(), equal_nan=True, atol=1e-4), side


def test_generate_from_target_prefix_equals_inseqs(model_dir):
    """An encoder-decoder continues the given target prefixes (greedy): the same generated text as Inseq 0.7.1
    (whose tokens then differ where it re-tokenises that text: README, Differences, "generation"); a decoder-only
    model refuses the option (it would do nothing)."""
    am = inseq_ray.load_model(model_dir["bart"], "saliency", device="cpu")
    gen = {"max_new_tokens": 4, "do_sample": False}
    sources, prefixes = [SOURCE, "the old tree near the river"], ["a dog", "the"]
    ours = am.attribute(sources, prefixes, generate_from_target_prefix=True, generation_args=gen, show_progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = inseq.load_model(model_dir["bart"], "saliency")
        theirs = [model.attribute(s, p, generate_from_target_prefix=True, generation_args=dict(gen),
                                  show_progress=False) for s, p in zip(sources, prefixes, strict=True)]  # fmt: skip
    assert ours.info["generated_texts"] == [t.info["generated_texts"][0] for t in theirs]
    for seq, prefix in zip(ours, prefixes, strict=True):
        assert am.tokenizer.decode([t.id for t in seq.target], skip_special_tokens=True).startswith(prefix)
        assert seq.attr_pos_start == 1 and seq.n_steps > len(am.tokenizer(text_target=prefix)["input_ids"]) - 1
    with pytest.raises(InputError, match="encoder-decoder"):
        inseq_ray.load_model(model_dir["gpt2"], device="cpu").attribute(SOURCE, SOURCE + " x",
                                                                         generate_from_target_prefix=True)  # fmt: skip


@pytest.mark.parametrize("name", ["gpt2", "bart"])
def test_step_attributions_equal_inseqs(model_dir, name):
    """output_step_attributions=True: each step's source and target-prefix scores, step scores and tokens equal
    Inseq 0.7.1's step outputs (one sequence, saliency, granular)."""
    am = inseq_ray.load_model(model_dir[name], "saliency", device="cpu")
    enc_dec = am.is_encoder_decoder
    kw = {"output_step_attributions": True, "step_scores": ["probability"], "attribute_target": enc_dec,
          "show_progress": False}  # fmt: skip
    ours = am.attribute(SOURCE, TARGETS[enc_dec], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inseq.load_model(model_dir[name], "saliency").attribute(SOURCE, TARGETS[enc_dec], **kw)
    assert len(ours.step_attributions) == len(theirs.step_attributions) == ours[0].n_steps
    for o, t in zip(ours.step_attributions, theirs.step_attributions, strict=True):
        for side in ("source_attributions", "target_attributions"):
            a, b = getattr(o, side), getattr(t, side)
            assert (a is None) == (b is None), side
            if a is not None:
                assert torch.allclose(a.float(), b.float(), atol=1e-5), side
        assert torch.allclose(o.step_scores["probability"], t.step_scores["probability"].float(), atol=1e-5)
        assert [x.token for x in o.prefix[0]] == [x.token for x in t.prefix[0]]
        assert [x.token for x in o.target[0]] == [x.token for x in t.target[0]]
