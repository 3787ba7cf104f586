"""The memory model (issue #25, item 3): the bytes autograd saves, measured on three small probes, predict the
bytes saved at lengths the fit never saw; eager attention shows as the quadratic term; a device's token budget
keeps the predicted peak inside it; ``--dry-run`` prints the prediction per batch."""

from __future__ import annotations

import json

import pytest

import inseq_ray
from inseq_ray.memory import MemoryProfile, _saved_bytes, batch_token_budget, predict_peak, tokens_that_fit
from inseq_ray.models.adapter import eager_attention
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.estimate import estimate
from inseq_ray.settings import CPU_BATCH_TOKENS


def _params(am) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in am.model.parameters()}


@pytest.mark.parametrize("name", ["gpt2", "llama", "bart", "t5"])
def test_the_fit_predicts_the_saved_bytes_at_unseen_lengths(model_dir, name):
    am = inseq_ray.load_model(model_dir[name], device="cpu")
    profile = MemoryProfile.measure(am.adapter)
    assert profile.per_token > 0 and profile.weight_bytes == sum(p.nbytes for p in am.model.parameters())
    for length in (48, 100):
        for padded in (False, True):
            measured = _saved_bytes(am.adapter, length, _params(am), padded) / 2
            per_sq = profile.per_token_sq + (profile.mask_per_token_sq if padded else 0)
            predicted = profile.per_token * length + per_sq * length**2
            assert predicted == pytest.approx(measured, rel=0.05), (length, padded)


def test_eager_attention_is_the_quadratic_term(model_dir):
    am = inseq_ray.load_model(model_dir["llama"], device="cpu")
    fused = MemoryProfile.measure(am.adapter)
    with eager_attention(am.model):
        eager = MemoryProfile.measure(am.adapter)
    heads, layers = am.model.config.num_attention_heads, am.model.config.num_hidden_layers
    assert eager.per_token_sq >= heads * layers * 4  # at least one float32 L x L score matrix per head and layer
    assert fused.per_token_sq <= eager.per_token_sq / heads  # the fused kernel keeps no scores (a padding mask only)


def test_predictions_grow_as_the_kinds_do(model_dir):
    profile = MemoryProfile.measure(inseq_ray.load_model(model_dir["gpt2"], device="cpu").adapter)
    grad = [predict_peak(profile, "gradient", 1, 1, n, 4)["total"] - profile.weight_bytes for n in (1000, 2000)]
    attn = [predict_peak(profile, "attention", 1, 1, n, 4)["attention weights"] for n in (1000, 2000)]
    assert 1.9 < grad[1] / grad[0] < 4 and attn[1] / attn[0] == pytest.approx(4, rel=0.01)  # linear + a mask
    ig = predict_peak(profile, "gradient", 8, 1, 1000, 4)["saved activations"]
    assert ig == pytest.approx(8 * predict_peak(profile, "gradient", 1, 1, 1000, 4)["saved activations"], rel=1e-6)


def test_a_devices_budget_keeps_the_predicted_peak_inside_it(model_dir):
    am = inseq_ray.load_model(model_dir["gpt2"], device="cpu")
    profile = MemoryProfile.measure(am.adapter)
    memory = 2 << 30
    for method, kind in (("saliency", "gradient"), ("attention", "attention")):
        budget = batch_token_budget(None, method, am, memory)
        assert budget == tokens_that_fit(profile, kind, 1, memory) > 1000
        rows = max(1, budget // 512)
        if kind == "gradient":
            assert predict_peak(profile, kind, 1, rows, 512, 8)["total"] <= 0.8 * memory
    assert batch_token_budget(1234, "saliency", am, memory) == 1234  # a given budget wins
    assert batch_token_budget(None, "saliency", am, None) == CPU_BATCH_TOKENS  # a CPU keeps the constant


def test_the_dry_run_predicts_each_batch(tmp_path, model_dir, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"source": "the cat sees " * k, "target": "a dog"}) + "\n" for k in range(1, 9))
    )
    cfg = PipelineConfig(input=str(corpus), output=str(tmp_path / "run"), model=model_dir["bart"], batch_size=4)
    e = estimate(cfg, attribute_records=8)
    batches = e["memory"]["batches"]
    assert sum(b["rows"] for b in batches) == 8 and len(batches) == 2
    weights = e["memory"]["profile"]["weight_bytes"]
    assert all(b["predicted_bytes"] > weights for b in batches)
    assert batches[1]["predicted_bytes"] > batches[0]["predicted_bytes"]  # the longer records' batch
    from inseq_ray.pipeline.estimate import print_estimate

    print_estimate(e)
    assert "predicted peak memory per batch (2 batches" in capsys.readouterr().out


def test_a_registered_method_declares_its_memory_kind():
    from inseq_ray.methods import METHODS, get_method_spec, register_attribution_method

    def mine(ctx):  # pragma: no cover - never called
        raise AssertionError

    with pytest.raises(ValueError, match="valid are gradient, attention, forward"):
        register_attribution_method(mine, "mine_memory_test", memory="gpu")
    try:
        register_attribution_method(mine, "mine_memory_test", memory="forward")
        assert get_method_spec("mine_memory_test").memory == "forward"
    finally:
        METHODS.pop("mine_memory_test", None)
    assert {get_method_spec(m).memory for m in ("saliency", "attention", "occlusion")} == {
        "gradient",
        "attention",
        "forward",
    }
