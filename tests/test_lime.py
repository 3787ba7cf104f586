"""LIME: equal to captum's LimeBase with sklearn's Ridge (Inseq's op) on each step's prefix forward, given the
same masks; the forward budget; bad arguments."""

from __future__ import annotations

import pytest
import torch

import inseq_ray.methods.surrogate as lime_module
from tests.faults import count_forwards
from tests.naive import naive_lime


def _record_masks(monkeypatch) -> list:
    calls = []
    real = lime_module.lime_masks

    def recording(ctx, n_samples, mask_prob, rows):
        keep = real(ctx, n_samples, mask_prob, rows)
        calls.append((ctx.embeds["target"].clone(), keep))
        return keep

    monkeypatch.setattr(lime_module, "lime_masks", recording)
    return calls


def _masks_for(calls, am, seq) -> dict:
    """The recorded keep-masks (name -> (S, L)) of the batch row holding ``seq`` (batches are length-sorted)."""
    emb = am.adapter.embed_target(torch.tensor([[t.id for t in seq.target]]))[0]
    for tgt_embeds, keep in calls:
        for row in range(tgt_embeds.shape[0]):
            if torch.equal(tgt_embeds[row, : emb.shape[0]], emb):
                return {k: v[:, row] for k, v in keep.items()}
    raise AssertionError("masks not found")


CASES = {
    "gpt2": (["the cat sees a bird", "a dog"], ["the cat sees a bird and the dog", "a dog holds a book"], False),
    "llama": (["the cat sees a bird"], ["the cat sees a bird and the dog eats"], False),
    "bart": (["the cat sees a bird near the river", "a dog"], ["one fish likes bread", "the child"], False),
    "bart+target": (["the cat sees a bird near the river", "a dog"], ["one fish likes bread", "the child"], True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lime_equals_the_per_step_ridge_surrogate(case, request, monkeypatch):
    am = request.getfixturevalue(case.split("+")[0])
    sources, targets, attribute_target = CASES[case]
    calls = _record_masks(monkeypatch)
    out = am.attribute(
        sources, targets, method="lime", n_samples=12, patterns_per_forward=5, attribute_target=attribute_target,
        generator=torch.Generator().manual_seed(0), show_progress=False,
    )  # fmt: skip
    for i, (src, tgt) in enumerate(zip(sources, targets)):
        row = _masks_for(calls, am, out[i])
        ref_src, ref_tgt = naive_lime(am, src, tgt, row, attribute_target, am.tokenizer.unk_token_id)
        for ours, ref, side in ((out[i].source_attributions, ref_src, "source"), (out[i].target_attributions, ref_tgt, "target")):  # fmt: skip
            assert (ours is None) == (ref is None), side
            if ref is None:
                continue
            ours = ours[: ref.shape[0]]
            known = ~ref.isnan()
            scale = ref[known].abs().max()
            assert scale > 1e-6, (case, side, "vacuous")
            assert torch.allclose(ours[known], ref[known], atol=1e-3 * scale, rtol=1e-3), (case, i, side)


def test_lime_forward_budget_is_one_per_sample_chunk_for_all_steps(bart, monkeypatch):
    calls = count_forwards(monkeypatch, bart.adapter)
    out = bart.attribute(
        ["the cat sees a bird", "a dog"], ["one fish likes bread today", "the child"], method="lime",
        n_samples=20, patterns_per_forward=8, show_progress=False,
    )  # fmt: skip
    assert calls == [16, 16, 8] and out[0].n_steps > 3  # ceil(20 / 8) forwards of patterns x batch, whatever T


def test_lime_arguments_are_checked(bart):
    def attribute(**kw):
        bart.attribute("a dog", "the child", method="lime", show_progress=False, **kw)

    with pytest.raises(ValueError, match="n_samples"):
        attribute(n_samples=1)
    with pytest.raises(ValueError, match="mask_prob"):
        attribute(mask_prob=1.0)
    with pytest.raises(ValueError, match="mask_token='mask'"):
        attribute(mask_token="mask")


def test_lime_runs_in_the_pipeline(tmp_path):
    from inseq_ray.pipeline.config import PipelineConfig
    from inseq_ray.pipeline.runner import run
    from tests.test_pipeline import check_complete, read_table

    (tmp_path / "c.txt").write_text("the cat sees a bird\na dog runs\nthe old farmer reads a book\n")
    cfg = PipelineConfig(input=str(tmp_path / "c.txt"), output=str(tmp_path / "run"), use_ray=False, method="lime")
    run(cfg, progress=False)
    check_complete(tmp_path / "run", 3)
    assert read_table(tmp_path / "run", "source_attributions").height > 0
