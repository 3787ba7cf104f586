"""Inseq's token-merging aggregators ("subwords", "spans"), weight_attributions, single-sequence show/plot
and step-score order through save/load, against hand-computed values."""

from __future__ import annotations

import pytest
import torch

import inseq_ray as inseq
from inseq_ray.output import FeatureAttributionSequenceOutput, TokenWithId

NAN = float("nan")


def _seq() -> FeatureAttributionSequenceOutput:
    """Decoder-only shape: prompt "▁the ▁ca t" (3 tokens), generated "▁sa t </s>" (3 steps)."""
    target = [TokenWithId(t, i) for i, t in enumerate(["▁the", "▁ca", "t", "▁sa", "t", "</s>"])]
    tgt = torch.tensor(
        [  # (6 target tokens, 3 steps); NaN where a token is not generated yet
            [0.1, 0.2, -0.3],
            [0.4, -0.5, 0.1],
            [-0.6, 0.1, 0.2],
            [NAN, 0.3, -0.7],
            [NAN, NAN, 0.05],
            [NAN, NAN, NAN],
        ]
    )
    scores = {"probability": torch.tensor([0.5, 0.4, 0.9]), "entropy": torch.tensor([1.0, 2.0, 3.0])}
    return FeatureAttributionSequenceOutput([], target, None, tgt, scores, 3, 6, attribution_dims=())


def test_subwords_merge_rows_steps_and_scores_by_hand():
    seq = _seq().aggregate("subwords")
    assert [t.token for t in seq.target] == ["▁the", "▁cat", "▁sat", "</s>"]
    assert [t.id for t in seq.target] == [0, -1, -1, 5]
    assert (seq.attr_pos_start, seq.attr_pos_end) == (2, 4)
    # steps 0 ("▁sa") and 1 ("t") merge (absmax per row); step 2 ("</s>") stays; rows "▁ca"+"t", "▁sa"+"t" merge
    want = torch.tensor(
        [
            [0.2, -0.3],  # ▁the: absmax(0.1, 0.2), -0.3
            [-0.6, 0.2],  # ▁cat: absmax over rows ▁ca,t and steps 0,1 = -0.6; step 2: absmax(0.1, 0.2)
            [0.3, -0.7],  # ▁sat: row ▁sa (NaN, 0.3) + row t (NaN, NaN) -> 0.3; step 2: absmax(-0.7, 0.05)
            [NAN, NAN],
        ]
    )
    assert torch.allclose(seq.target_attributions, want, equal_nan=True)
    assert torch.allclose(seq.step_scores["probability"], torch.tensor([0.5 * 0.4, 0.9]))  # prod, as Inseq
    assert torch.allclose(seq.step_scores["entropy"], torch.tensor([3.0, 3.0]))  # sum


def test_spans_are_cut_at_the_generation_start_and_validated():
    seq = _seq().aggregate("spans", target_spans=[(2, 5)], aggregate_fn="sum")  # crosses the boundary at 3
    assert [t.token for t in seq.target] == ["▁the", "▁ca", "t", "▁sat", "</s>"]
    assert (seq.attr_pos_start, seq.attr_pos_end) == (3, 5)
    assert torch.allclose(seq.step_scores["entropy"], torch.tensor([3.0, 3.0]))
    with pytest.raises(ValueError, match="target_spans"):
        _seq().aggregate("spans", target_spans=[(3, 2)])
    with pytest.raises(ValueError, match="no word-boundary marker"):
        FeatureAttributionSequenceOutput(
            [], [TokenWithId("a", 0), TokenWithId("b", 1)], None, torch.ones(2, 1), {}, 1, 2, attribution_dims=()
        ).aggregate("subwords")


def test_weight_attributions_multiplies_each_step_in_place():
    seq = _seq()
    before = seq.target_attributions.clone()
    assert seq.weight_attributions("probability") is seq
    assert torch.allclose(seq.target_attributions, before * torch.tensor([0.5, 0.4, 0.9]), equal_nan=True)
    with pytest.raises(ValueError, match="no such step score"):
        seq.weight_attributions("kl_divergence")


def test_real_outputs_merge_subwords_show_plot_and_keep_step_score_order(gpt2, tmp_path):
    out = gpt2.attribute(
        "the cat sees a bird near the river and",
        step_scores=["probability", "entropy", "crossentropy"],
        generation_args={"max_new_tokens": 4},
        show_progress=False,
    )
    words = out.aggregate("subwords")[0]
    assert len(words.target) < len(out[0].target) or all(t.token.startswith("Ġ") for t in out[0].generated)
    assert words.target_attributions.shape == (len(words.target), words.n_steps)
    html = out[0].show(return_html=True)
    assert "<table" in html
    assert out[0].plot(str(tmp_path / "one.png")) == [str(tmp_path / "one.png")]
    path = tmp_path / "o.json"
    out.save(str(path))
    loaded = inseq.FeatureAttributionOutput.load(str(path))
    assert list(loaded[0].step_scores) == ["probability", "entropy", "crossentropy"]  # not alphabetised
