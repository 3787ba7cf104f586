"""AttnLRP (issue #26): equal to LXT 2.1's own AttnLRP on the families LXT supports here (Llama, GPT-2, Qwen2), per step
of a batch of sequences; the model is untouched afterwards."""

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


def _lxt(path: str, family: str, prompt: str, text: str) -> list[torch.Tensor]:
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "lxt_reference.py"), path, family, prompt, text],
                         check=True, capture_output=True, text=True)  # fmt: skip
    return [torch.tensor(step) for step in json.loads(out.stdout.strip().splitlines()[-1])]


@pytest.fixture(scope="module")
def lxt_models(model_dir, tmp_path_factory):
    """The families LXT 2.1 has patch maps for and this matrix builds: Llama, GPT-2, Qwen2."""
    from inseq_ray.toy import build_tiny_model

    qwen2 = build_tiny_model("qwen2", tmp_path_factory.mktemp("qwen2") / "m", init_std=0.2)
    return {"llama": model_dir["llama"], "gpt2": model_dir["gpt2"], "qwen2": str(qwen2)}


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2"])
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
    assert am.model.config._attn_implementation != "inseq_ray_attnlrp"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in am.model.modules())


def test_a_family_whose_attention_bypasses_the_interface_is_refused(tmp_path):
    from inseq_ray.errors import ModelConformanceError
    from inseq_ray.toy import build_tiny_model

    am = inseq_ray.load_model(str(build_tiny_model("bloom", tmp_path / "bloom")), "attnlrp", device="cpu")
    with pytest.raises(ModelConformanceError, match="attnlrp: BloomForCausalLM's attention"):
        am.attribute(PROMPTS[0], TEXTS[0], show_progress=False)
    assert am.model.config._attn_implementation != "inseq_ray_attnlrp"
