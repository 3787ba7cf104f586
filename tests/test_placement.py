"""Models spread over devices (issue #25, item 1): a model dispatched by accelerate (``device_map`` with layers
offloaded, their weights on the ``meta`` device until their forward) attributes exactly as the same model on one
device, for every method family; quantization is refused in one line where it cannot run.

This machine has no GPU, so the dispatched models run their modules through accelerate's hooks (weights
loaded from CPU memory or disk at each forward) on the CPU; ``benchmarks/gpu_check.sh`` has the multi-GPU case.
"""

from __future__ import annotations

import re

import pytest
import torch

import inseq_ray
from inseq_ray.errors import InputError

SOURCES = ["happy sees the house", "tree river book"]
TARGETS = {False: ["happy sees the house tree near", "tree river book apple"], True: ["a house tree", "book apple"]}
EVERY_FAMILY = {  # one method of each family, with the arguments that keep it fast
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 4},
    "deeplift": {},
    "gradient_shap": {"n_samples": 3},
    "attention": {},
    "occlusion": {},
    "lime": {"n_samples": 8},
    "value_zeroing": {},
    "sequential_integrated_gradients": {"n_steps": 2},
    "dummy": {},
}
LAYER = {"gpt2": "transformer.h.1", "bart": "model.decoder.layers.0"}


def _half_offloaded(model) -> dict[str, str]:
    """A device map with every other transformer block offloaded to disk, the rest (embeddings, norms, head) in
    CPU memory: the weights of an offloaded block live on the ``meta`` device until its forward."""
    blocks = [n for n, _ in model.named_modules() if re.search(r"\.(h|layers|layer|block)\.\d+$", n)]
    offloaded = set(blocks[1::2])
    owners = {
        next((b for b in blocks if n.startswith(b + ".")), n.rsplit(".", 1)[0])
        for n, _ in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]
    }
    return {owner: "disk" if owner in offloaded else "cpu" for owner in owners}


def _dispatched(path: str, tmp_path) -> inseq_ray.AttributionModel:
    """The model with every other block offloaded to disk (accelerate's hooks load them at each forward)."""
    plain = inseq_ray.load_model(path, device="cpu")
    return inseq_ray.load_model(path, device_map=_half_offloaded(plain.model), offload_folder=str(tmp_path / "off"))


def _max_diff(a, b) -> float:
    diffs = [0.0]
    for x, y in zip(a.sequence_attributions, b.sequence_attributions, strict=True):
        for name in ("source_attributions", "target_attributions"):
            u, v = getattr(x, name), getattr(y, name)
            if u is not None:
                diffs.append((u - v).nan_to_num().abs().max().item())
        for k, u in x.step_scores.items():
            diffs.append((u - y.step_scores[k]).nan_to_num().abs().max().item())
    return max(diffs)


@pytest.mark.parametrize("name", ["gpt2", "bart"])
def test_a_dispatched_model_attributes_as_the_same_model_on_one_device(model_dir, tmp_path, name):
    ref = inseq_ray.load_model(model_dir[name], device="cpu")
    am = _dispatched(model_dir[name], tmp_path)
    offloaded = [k for k, v in am.model.hf_device_map.items() if v == "disk"]
    assert offloaded and any(p.device.type == "meta" for p in am.model.parameters())  # really dispatched
    assert am.device == torch.device("cpu")
    texts = (SOURCES, TARGETS[am.is_encoder_decoder])
    methods = {**EVERY_FAMILY, "layer_integrated_gradients": {"n_steps": 4, "target_layer": LAYER[name]}}
    for method, args in methods.items():
        kw = {"attribution_args": args, "step_scores": ["probability"], "show_progress": False}
        a = ref.attribute(*texts, method=method, attribute_target=True, **kw)
        b = am.attribute(*texts, method=method, attribute_target=True, **kw)
        assert _max_diff(a, b) <= 1e-5, method
    contrast = {"attributed_fn": "contrast_prob_diff", "contrast_targets": [t.rsplit(" ", 1)[0] + " river" for t in texts[1]], "show_progress": False,
                "step_scores": ["kl_divergence", "mc_dropout_prob_avg"], "step_scores_args": {"n_mcd_steps": 2}}  # fmt: skip
    a, b = (m.attribute(*texts, method="saliency", **contrast) for m in (ref, am))
    assert _max_diff(a, b) <= 1e-5  # contrast forwards and dropout forwards of the dispatched model


@pytest.mark.parametrize("name", ["llama", "t5"])
def test_dispatched_llama_and_t5_equal_and_generate(model_dir, tmp_path, name):
    ref = inseq_ray.load_model(model_dir[name], device="cpu")
    am = _dispatched(model_dir[name], tmp_path)
    gen = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    targets = TARGETS[True] if am.is_encoder_decoder else None  # the Llama generates through the dispatched model
    for method in ("saliency", "attention", "value_zeroing"):
        a = ref.attribute(SOURCES, targets, method=method, generation_args=gen, show_progress=False)
        b = am.attribute(SOURCES, targets, method=method, generation_args=gen, show_progress=False)
        assert [s.target for s in a.sequence_attributions] == [s.target for s in b.sequence_attributions]
        assert _max_diff(a, b) <= 1e-5, method


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("flag", ["load_in_8bit", "load_in_4bit"])
def test_quantized_loading_is_refused_in_one_line_without_cuda(model_dir, flag):
    with pytest.raises(InputError, match=f"{flag}: quantized checkpoints .* CUDA GPUs only") as e:
        inseq_ray.load_model(model_dir["gpt2"], **{flag: True})
    assert "\n" not in str(e.value)


def test_placement_arguments_are_checked(model_dir):
    with pytest.raises(InputError, match="give one"):
        inseq_ray.load_model(model_dir["gpt2"], device="cpu", device_map="auto")
    with pytest.raises(InputError, match="max_memory limits a device_map"):
        inseq_ray.load_model(model_dir["gpt2"], max_memory={"cpu": 1 << 20})
