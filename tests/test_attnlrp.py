"""AttnLRP (issue #26): equal to LXT 2.1's own AttnLRP on every family LXT supports (Llama, GPT-2, Qwen2, Qwen3,
Gemma 3), per step of a batch of sequences; the rule at the projections for the families outside transformers'
attention interface; the model is untouched afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import inseq_ray

pytest.importorskip("lxt")
ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["the cat sees", "a dog near the river"]
TEXTS = ["the cat sees a bird near the house", "a dog near the river likes bread"]
SOURCES = ["the cat sees a bird near the river", "a dog"]
ENC_TARGETS = ["one fish likes bread today", "the child"]


def _lxt(path: str, family: str, prompt: str, text: str) -> list[torch.Tensor]:
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "lxt_reference.py"), path, family, prompt, text],
                         check=True, capture_output=True, text=True)  # fmt: skip
    return [torch.tensor(step) for step in json.loads(out.stdout.strip().splitlines()[-1])]


@pytest.fixture(scope="module")
def lxt_models(model_dir, tmp_path_factory):
    """The families LXT 2.1 has patch maps for, all in this matrix: Llama, GPT-2, Qwen2, Qwen3, Gemma 3."""
    from inseq_ray.toy import build_tiny_model

    built = {n: str(build_tiny_model(n, tmp_path_factory.mktemp(n) / "m", init_std=0.2)) for n in LXT_BUILT}
    return {"llama": model_dir["llama"], "gpt2": model_dir["gpt2"], **built}


LXT_BUILT = ("qwen2", "qwen3", "gemma3")


@pytest.mark.parametrize("name", ["llama", "gpt2", *LXT_BUILT])
def test_attnlrp_equals_lxt(lxt_models, name):
    model_dir = lxt_models
    am = inseq_ray.load_model(model_dir[name], "attnlrp", device="cpu")
    out = am.attribute(PROMPTS, TEXTS, attributed_fn="logit", show_progress=False)
    for seq, prompt, text in zip(out, PROMPTS, TEXTS, strict=True):
        ref = _lxt(model_dir[name], name, prompt, text)
        assert len(ref) == seq.n_steps
        for t, rel in enumerate(ref):  # rel: (prefix length, H) for step t
            ours = seq.target_attributions[: rel.shape[0], t]
            assert torch.allclose(ours, rel, atol=1e-5, rtol=1e-4), (t, (ours - rel).abs().max())
            assert torch.isnan(seq.target_attributions[rel.shape[0] :, t]).all()


def test_the_model_is_untouched_and_unsupported_families_are_refused(model_dir):
    am = inseq_ray.load_model(model_dir["llama"], device="cpu")
    before = am.attribute(PROMPTS[0], TEXTS[0], method="input_x_gradient", show_progress=False)[0]
    am.attribute(PROMPTS[0], TEXTS[0], method="attnlrp", show_progress=False)
    after = am.attribute(PROMPTS[0], TEXTS[0], method="input_x_gradient", show_progress=False)[0]
    assert torch.equal(before.target_attributions.nan_to_num(), after.target_attributions.nan_to_num())
    assert not am.model.config._attn_implementation.startswith("inseq_ray_attnlrp")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in am.model.modules())


@pytest.mark.parametrize("name", ["gpt2", "bart", "llama", "t5"])
def test_the_rule_at_the_projections_equals_the_rule_in_the_attention(model_dir, monkeypatch, name):
    """Scaling the gradient into q, k, v at their projections (fused: by columns) == inside the attention."""
    from inseq_ray.methods import lrp

    am = inseq_ray.load_model(model_dir[name], "attnlrp", device="cpu")
    args = (SOURCES, ENC_TARGETS) if am.is_encoder_decoder else (PROMPTS, TEXTS)
    kw = {"attributed_fn": "logit", "attribute_target": True, "show_progress": False}
    inside = am.attribute(*args, **kw)
    assert lrp._RULE_SITE[am.model] == "interface"
    monkeypatch.setitem(lrp._RULE_SITE, am.model, "projections")
    at_projections = am.attribute(*args, **kw)
    for a, b in zip(inside, at_projections, strict=True):
        for side in ("source_attributions", "target_attributions"):
            x, y = getattr(a, side), getattr(b, side)
            if x is not None:
                assert x.nan_to_num().abs().max() > 0.01  # far above the tolerance
                assert torch.allclose(x, y, atol=1e-5, rtol=1e-4, equal_nan=True), (name, side)


@pytest.mark.parametrize("name", ["bloom", "falcon", "fsmt", "led"])
def test_families_outside_the_interface_equal_the_per_step_reference_under_the_same_rules(tmp_path, name):
    """Bloom, Falcon, FSMT and LED take the rule at their projections; the engine (batched, padded) equals
    input x gradient of the logit on each prefix alone (captum, ``tests/naive.py``) under the same rules."""
    from inseq_ray.methods import lrp
    from inseq_ray.step_scores import logit_fn
    from inseq_ray.toy import build_tiny_model
    from tests.naive import naive_attribute

    am = inseq_ray.load_model(str(build_tiny_model(name, tmp_path / name, init_std=0.2)), "attnlrp", device="cpu")
    sources, targets = (SOURCES, ENC_TARGETS) if am.is_encoder_decoder else (PROMPTS, TEXTS)
    out = am.attribute(sources, targets, attributed_fn="logit", attribute_target=True, show_progress=False)
    assert lrp._RULE_SITE[am.model] == "projections"
    for seq, src, tgt in zip(out, sources, targets, strict=True):
        with lrp.projection_rules(am.model, lrp.fused_value_sites(am.adapter)) as calls:
            ref = naive_attribute(am, src, tgt, "input_x_gradient", True, fn_for_step=lambda p: logit_fn)
        assert calls[0] > 0
        for ours, theirs in zip((seq.source_attributions, seq.target_attributions), ref, strict=True):
            if theirs is not None:
                known = ~theirs.isnan()
                assert theirs[known].abs().max() > 0.01
                assert torch.allclose(ours[known], theirs[known], atol=1e-5, rtol=1e-4), name
    assert not any(m._forward_pre_hooks for m in am.model.modules())
