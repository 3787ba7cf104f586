"""The engine equals the naive per-step definition (captum on every prefix) to 1e-5 in float32."""

from __future__ import annotations

import pytest
import torch

import inseq_ray.methods.gradient as grad_methods
from tests.naive import naive_attribute

SOURCES = ["the cat sees a bird", "a dog", "every old farmer reads a big green book near the river"]
ENC_TARGETS = ["one fish", "the child likes bread today", "a tree"]
DEC_TARGETS = [s + c for s, c in zip(SOURCES, [" and the dog eats", " holds a book here", " today"])]
METHODS = {
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 8},
    "deeplift": {},
    "gradient_shap": {"n_samples": 3, "stdevs": 0.1},
    "occlusion": {"patterns_per_forward": 4},
}
CASES = [("gpt2", True), ("bart", False), ("bart", True), ("llama", True), ("t5", True), ("marian", True)]


def _record_shap_draws(monkeypatch):
    """Record every GradientSHAP draw with the batch's target embeddings, to replay per sequence."""
    calls = []
    real = grad_methods.gradient_shap_draws

    def recording(ctx, n_samples, stdevs, rows):
        noise, alphas = real(ctx, n_samples, stdevs, rows)
        calls.append((ctx.embeds["target"].clone(), noise, alphas))
        return noise, alphas

    monkeypatch.setattr(grad_methods, "gradient_shap_draws", recording)
    return calls


def _draws_for(calls, am, target_ids):
    """The recorded (noise name -> (S, L, H), alphas (S,)) of the batch row holding ``target_ids``."""
    emb = am.adapter.embed_target(target_ids[None])[0]
    for tgt_embeds, noise, alphas in calls:
        for row in range(tgt_embeds.shape[0]):
            if torch.equal(tgt_embeds[row, : emb.shape[0]], emb):
                return {k: v[:, row] for k, v in noise.items()}, alphas[:, row]
    raise AssertionError("draws not found")


def _assert_close(ours, ref, what):
    assert (ours is None) == (ref is None), what
    if ref is None:
        return
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    assert torch.equal(ours.isnan(), ref.isnan()), f"{what}: NaN pattern differs"
    scale = ref.nan_to_num().abs().max()
    assert scale > 1e-5, f"{what}: reference is ~0 ({scale}); the comparison would mean nothing"
    diff = (ours - ref).nan_to_num().abs().max()
    # absolute (the acceptance bar) and relative to the values' scale (so small values still count)
    assert diff <= 1e-5, f"{what}: max abs diff {diff:.2e} (scale {scale:.2e})"
    assert diff <= 1e-4 * scale, f"{what}: max abs diff {diff:.2e} is large relative to scale {scale:.2e}"


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize(("model_name", "attribute_target"), CASES)
@pytest.mark.parametrize("batch_size", [None, 1])
def test_engine_matches_naive_reference(request, monkeypatch, method, model_name, attribute_target, batch_size):
    am = request.getfixturevalue(model_name)
    targets = ENC_TARGETS if am.is_encoder_decoder else DEC_TARGETS
    calls = _record_shap_draws(monkeypatch)
    out = am.attribute(
        SOURCES,
        targets,
        method=method,
        attribute_target=attribute_target,
        batch_size=batch_size,
        show_progress=False,
        **METHODS[method],
    )
    for i, (src, tgt) in enumerate(zip(SOURCES, targets)):
        seq = out[i]
        draws = None
        if method == "gradient_shap":
            draws = _draws_for(calls, am, torch.tensor([t.id for t in seq.target]))
        kw = {"n_steps": 8} if method == "integrated_gradients" else {}
        ref_src, ref_tgt = naive_attribute(am, src, tgt, method, attribute_target, shap_draws=draws, **kw)
        _assert_close(seq.source_attributions, ref_src, f"{method} seq {i} source")
        _assert_close(seq.target_attributions, ref_tgt, f"{method} seq {i} target")


@pytest.mark.parametrize("model_name", ["gpt2", "bart"])
def test_batched_vjp_equals_loop(request, model_name):
    am = request.getfixturevalue(model_name)
    targets = ENC_TARGETS if am.is_encoder_decoder else DEC_TARGETS
    kw = {"attribute_target": True, "show_progress": False, "method": "input_x_gradient"}
    loop = am.attribute(SOURCES, targets, vjp="loop", **kw)
    batched = am.attribute(SOURCES, targets, vjp="batched", **kw)
    for a, b in zip(loop, batched):
        for name in ("source_attributions", "target_attributions"):
            x, y = getattr(a, name), getattr(b, name)
            if x is not None:
                assert (x - y).nan_to_num().abs().max() <= 1e-6


@pytest.mark.parametrize("model_name", ["gpt2", "bart"])
def test_ig_convergence_deltas_shrink_to_small(request, model_name):
    """Completeness: attributions sum to f(x) - f(baseline), up to a quadrature error that shrinks."""
    am = request.getfixturevalue(model_name)
    targets = ENC_TARGETS if am.is_encoder_decoder else DEC_TARGETS

    def worst_delta(n_steps):
        out = am.attribute(
            SOURCES,
            targets,
            method="integrated_gradients",
            n_steps=n_steps,
            return_convergence_delta=True,
            attribute_target=True,
            show_progress=False,
            step_scores=["probability"],
        )
        prob = max(s.step_scores["probability"].max().item() for s in out)
        return max(s.step_scores["deltas"].abs().max().item() for s in out), prob

    coarse, _ = worst_delta(4)
    fine, prob = worst_delta(128)
    assert fine < coarse / 10
    assert fine < 0.02 * prob


@pytest.mark.parametrize("model_name", ["gpt2", "bart"])
def test_ig_internal_batching_changes_nothing(request, model_name):
    am = request.getfixturevalue(model_name)
    targets = ENC_TARGETS if am.is_encoder_decoder else DEC_TARGETS
    kw = {"method": "integrated_gradients", "n_steps": 7, "attribute_target": True, "show_progress": False}
    whole = am.attribute(SOURCES, targets, **kw)
    chunked = am.attribute(SOURCES, targets, internal_batch_size=6, **kw)  # 2 points x 3 sentences per forward
    for a, b in zip(whole, chunked):
        for name in ("source_attributions", "target_attributions"):
            x, y = getattr(a, name), getattr(b, name)
            if x is not None:
                assert (x - y).nan_to_num().abs().max() <= 1e-6


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "deeplift", "gradient_shap"])
@pytest.mark.parametrize(("model_name", "attribute_target"), CASES[:3])
def test_step_blocks_change_nothing(request, method, model_name, attribute_target):
    """Truncated per-block forwards give the one-forward result (causal masking makes them exact)."""
    am = request.getfixturevalue(model_name)
    targets = ENC_TARGETS if am.is_encoder_decoder else DEC_TARGETS
    kw = {
        **METHODS[method],
        "method": method,
        "attribute_target": attribute_target,
        "show_progress": False,
        "step_scores": ["probability"],
    }
    outs = []
    for blocks in (1, 3, 50):
        if method == "gradient_shap":
            kw["generator"] = torch.Generator().manual_seed(0)
        outs.append(am.attribute(SOURCES, targets, step_blocks=blocks, **kw))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.allclose(a.step_scores["probability"], b.step_scores["probability"], atol=1e-6)
            for name in ("source_attributions", "target_attributions"):
                x, y = getattr(a, name), getattr(b, name)
                if x is not None:
                    assert torch.equal(x.isnan(), y.isnan())
                    assert (x - y).nan_to_num().abs().max() <= 1e-6


def test_head_modes(llama, t5, marian):
    """The split head is used where it reproduces the model's logits, the full logits elsewhere (T5)."""
    assert llama.adapter.mode == "split" and marian.adapter.mode == "split"
    assert t5.adapter.mode == "full"
