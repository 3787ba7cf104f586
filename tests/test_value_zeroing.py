"""Value zeroing beyond the family matrix (tests/test_families.py): head selection, the euclidean metric, the
zeroing touches values only, every hook is removed, the forward budget, errors, and the pipeline."""

from __future__ import annotations

import pytest
import torch

import inseq_ray as inseq
from inseq_ray.models.adapter import ForwardInputs
from inseq_ray.models.values import decoder_blocks, value_sites, zeroed
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from inseq_ray.toy import build_tiny_model
from tests.faults import count_forwards
from tests.naive import naive_value_zeroing
from tests.test_pipeline import check_complete, read_table

PROMPT, TARGET = "the cat sees a bird", "the cat sees a bird and the dog eats"


def test_selected_heads_and_layers_equal_the_reference(llama):
    """Llama has 2 value heads (GQA): head 1 of layer 0 only; layer 1 is not zeroed, so it scores nothing."""
    out = llama.attribute(
        PROMPT, TARGET, method="value_zeroing", decoder_zeroed_units_indices={0: [1]}, show_progress=False
    )[0]
    ref = naive_value_zeroing(llama, PROMPT, TARGET, "target", heads={0: [1]})
    known = ~ref.isnan()
    assert ref[..., 0][known[..., 0]].max() > 0.05
    assert torch.allclose(out.target_attributions[known], ref[known], atol=1e-3)
    assert out.target_attributions[..., 1].nan_to_num().abs().max() == 0


def test_euclidean_distances_equal_the_reference(bart):
    src, tgt = "the cat sees a bird", "one fish likes bread"
    out = bart.attribute(src, tgt, method="value_zeroing", similarity_metric="euclidean", show_progress=False)[0]
    ref = naive_value_zeroing(bart, src, tgt, "source", metric="euclidean")
    assert torch.allclose(out.source_attributions, ref, atol=1e-3)
    cosine = bart.attribute(src, tgt, method="value_zeroing", show_progress=False)[0]
    assert (cosine.source_attributions - out.source_attributions).abs().max() > 1e-3  # the metric is applied


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox", "bloom", "falcon", "llama", "bart", "t5"])
def test_zeroing_changes_the_values_only(name, tmp_path):
    """With a token's values zeroed in one layer, its attention map is unchanged (queries and keys untouched) while the
    outputs change: the zeroed columns are the values, also in GPT-2's fused projection."""
    am = inseq.load_model(str(build_tiny_model(name, tmp_path / name, init_std=0.2)), device="cpu")
    ids = torch.tensor([am.tokenizer("a dog runs home")["input_ids"]])
    mask = torch.ones_like(ids)
    src = (ids, mask) if am.is_encoder_decoder else (None, None)
    inputs = ForwardInputs(target_ids=ids, target_mask=mask, source_ids=src[0], source_mask=src[1])
    blocks = decoder_blocks(am.adapter)
    sites = value_sites(am.adapter, blocks, "self")
    maps = "decoder_attentions" if am.is_encoder_decoder else "attentions"
    with torch.no_grad():
        clean = am.adapter.attention_forward(inputs)
        for layer, site in enumerate(sites):  # one layer's values zeroed: its map and the ones before unchanged
            only = [s if i == layer else None for i, s in enumerate(sites)]
            with zeroed(only, [list(range(site.n_heads))] * len(sites), torch.tensor([1]), 1):
                hit = am.adapter.attention_forward(inputs)
            for a, b in zip(getattr(clean, maps)[: layer + 1], getattr(hit, maps)[: layer + 1], strict=True):
                assert torch.allclose(a, b, atol=1e-6), (name, layer)
            assert (clean.logits - hit.logits).abs().max() > 1e-3, (name, layer)


def test_no_hook_is_left_behind_also_on_error(gpt2, monkeypatch):
    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in gpt2.model.modules())

    gpt2.attribute(PROMPT, TARGET, method="value_zeroing", show_progress=False)  # transformers adds its own once
    before = hooks()
    gpt2.attribute(PROMPT, TARGET, method="value_zeroing", show_progress=False)
    assert hooks() == before
    real, calls = gpt2.adapter.last_hidden_states, []

    def failing(inputs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("device lost")
        return real(inputs)

    monkeypatch.setattr(gpt2.adapter, "last_hidden_states", failing)
    with pytest.raises(RuntimeError, match="device lost"):
        gpt2.attribute(PROMPT, TARGET, method="value_zeroing", show_progress=False)
    assert hooks() == before


def test_forward_budget_is_one_per_pattern_for_all_steps_and_layers(bart, monkeypatch):
    rows = count_forwards(monkeypatch, bart.adapter, "last_hidden_states")
    sources = ["the cat sees a bird near the river", "a dog runs"]
    out = bart.attribute(
        sources, ["one fish likes bread today", "the child"], method="value_zeroing", attribute_target=True,
        patterns_per_forward=4, show_progress=False,
    )  # fmt: skip
    n_src, n_tgt = out[0].source_attributions.shape[0], out[0].target_attributions.shape[0]
    assert len(rows) == 1 + -(-n_src // 4) + -(-n_tgt // 4)  # clean + ceil(L / 4) per side, whatever the steps
    assert rows[1] == 4 * len(sources) and out[0].n_steps > 3


def test_arguments_are_checked(bart):
    def attribute(**kw):
        bart.attribute("a dog", "the child", method="value_zeroing", show_progress=False, **kw)

    with pytest.raises(ValueError, match="similarity_metric='dot'.*cosine, euclidean"):
        attribute(similarity_metric="dot")
    with pytest.raises(ValueError, match="encoder_zeroed_units_indices"):
        attribute(encoder_zeroed_units_indices=0)
    with pytest.raises(ValueError, match="output_encoder_self_scores"):
        attribute(output_encoder_self_scores=True)
    with pytest.raises(ValueError, match="attribute_target=True"):
        attribute(output_decoder_self_scores=True)
    attribute(output_encoder_self_scores=False, output_decoder_self_scores=False)  # Inseq's "off" is fine
    with pytest.raises(ValueError, match="value heads index 9"):
        attribute(cross_zeroed_units_indices=9)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        attribute(cross_zeroed_units_indices={5: 0})
    with pytest.raises(ValueError, match="patterns_per_forward"):
        attribute(patterns_per_forward=0)


def test_value_zeroing_runs_in_the_pipeline(tmp_path):
    (tmp_path / "c.txt").write_text("the cat sees a bird\na dog runs\nthe old farmer reads a book\n")
    cfg = PipelineConfig(
        input=str(tmp_path / "c.txt"), output=str(tmp_path / "run"), use_ray=False, method="value_zeroing"
    )
    run(cfg, progress=False)
    check_complete(tmp_path / "run", 3)
    src = read_table(tmp_path / "run", "source_attributions")
    assert src.height > 0 and float(src["score"].min()) >= 0
