"""Attention attribution against attention weights taken straight from the model (eager, output_attentions)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

import inseq_ray as inseq

SRC = ["the cat sees a bird near the river", "a dog"]
ENC_TGT = ["one fish", "the child likes bread today"]
DEC_TGT = [SRC[0] + " and the dog eats", SRC[1] + " holds a book"]


@pytest.fixture(scope="session")
def attn_models(tmp_path_factory):
    from inseq_ray.toy import build_tiny_model

    root = tmp_path_factory.mktemp("attn")
    out = {}
    for kind, cls in (("gpt2", AutoModelForCausalLM), ("bart", AutoModelForSeq2SeqLM)):
        path = build_tiny_model(kind, root / kind, layers=6, heads=8, hidden=64, init_std=0.2)
        am = inseq.load_model(str(path), "attention", device="cpu")
        eager = cls.from_pretrained(path, attn_implementation="eager").eval()
        out[kind] = (am, eager)
    return out


def raw_rows(am, eager, src, tgt, attribute_target):
    """Per sequence: {"source"/"target": (n_layers, n_heads, n_steps, keys)} straight from the model."""
    seq = am.attribute([src], [tgt], method="saliency", show_progress=False)[0]  # only for the token ids
    tgt_ids = torch.tensor([[t.id for t in seq.target]])
    with torch.no_grad():
        if am.is_encoder_decoder:
            src_ids = torch.tensor([[t.id for t in seq.source]])
            out = eager(input_ids=src_ids, decoder_input_ids=tgt_ids, output_attentions=True)
            maps = {"source": out.cross_attentions, "target": out.decoder_attentions}
        else:
            out = eager(input_ids=tgt_ids, output_attentions=True)
            maps = {"target": out.attentions}
    rows = range(seq.attr_pos_start - 1, seq.attr_pos_end - 1)
    keep = ["source", "target"] if attribute_target else ["source"]
    if not am.is_encoder_decoder:
        keep = ["target"]
    return {k: torch.stack([layer[0][:, list(rows), :] for layer in maps[k]]) for k in keep}


def reference(raw, layers, heads, agg_layers, agg_heads):
    """Hand-written selection: explicit index lists, layers reduced first, then heads."""
    n_layers, n_heads = raw.shape[:2]

    def idx(sel, n):
        if sel is None:
            return list(range(n))
        if isinstance(sel, int):
            return [sel % n]
        if isinstance(sel, tuple):
            return list(range(sel[0] % n if sel[0] < 0 else sel[0], sel[1] % n if sel[1] < 0 else sel[1]))
        return [s % n for s in sel]

    red = {
        "average": lambda x: x.mean(0),
        "mean": lambda x: x.mean(0),
        "max": lambda x: x.max(0).values,
        "min": lambda x: x.min(0).values,
        "single": lambda x: x[0],
        "sum": lambda x: x.sum(0),
    }
    li, hi = idx(layers, n_layers), idx(heads, n_heads)
    per_head = torch.stack([red[agg_layers](torch.stack([raw[l, h] for l in li])) for h in hi])  # (h, steps, keys)
    return red[agg_heads](per_head).T  # (keys, steps)


CASES = [
    ({}, (-1, None, "average", "average")),
    ({"layers": (0, 5), "heads": [0, 2, 5, 7], "aggregate_heads_fn": "max"}, ((0, 5), [0, 2, 5, 7], "average", "max")),
    (
        {"layers": 2, "heads": 3, "aggregate_layers_fn": "single", "aggregate_heads_fn": "single"},
        (2, 3, "single", "single"),
    ),
    ({"layers": -2, "heads": (2, 6), "aggregate_heads_fn": "min"}, (-2, (2, 6), "average", "min")),
    ({"layers": [0, 3, -1], "heads": [-1], "aggregate_layers_fn": "max"}, ([0, 3, -1], [-1], "max", "average")),
    ({"layers": (1, -1), "aggregate_layers_fn": "min", "aggregate_heads_fn": "mean"}, ((1, -1), None, "min", "mean")),
    (
        {"layers": None, "heads": None, "aggregate_layers_fn": lambda x, dim: x.sum(dim)},
        (None, None, "sum", "average"),
    ),
]


@pytest.mark.parametrize(("kwargs", "ref_args"), CASES)
@pytest.mark.parametrize(("kind", "attribute_target"), [("gpt2", True), ("bart", False), ("bart", True)])
def test_attention_matches_raw_weights(attn_models, kind, attribute_target, kwargs, ref_args):
    am, eager = attn_models[kind]
    targets = ENC_TGT if am.is_encoder_decoder else DEC_TGT
    out = am.attribute(SRC, targets, attribute_target=attribute_target, show_progress=False, **kwargs)
    for i, (src, tgt) in enumerate(zip(SRC, targets)):
        seq = out[i]
        raw = raw_rows(am, eager, src, tgt, attribute_target)
        for name, r in raw.items():
            expected = reference(r, *ref_args)  # (keys, steps)
            got = getattr(seq, f"{name}_attributions")
            n_keys = expected.shape[0]
            if name == "target":  # rows past the step's query are NaN, as for gradient methods
                assert got[:n_keys].nan_to_num().shape == expected.shape
                mask = ~got.isnan()
                assert torch.allclose(got[mask], expected[mask[:n_keys]], atol=1e-6)
                # the causal weights of not-yet-generated positions are exactly 0 in the model
                assert expected[~mask[:n_keys]].abs().max() < 1e-6
            else:
                assert torch.allclose(got, expected, atol=1e-6)


def test_keep_all_then_select_at_aggregation_time(attn_models, tmp_path):
    am, _ = attn_models["bart"]
    sel = {"layers": (0, 5), "heads": [0, 2, 5, 7], "aggregate_heads_fn": "max"}
    seed_form = am.attribute(SRC, ENC_TGT, attribute_target=True, show_progress=False, **sel)
    full = am.attribute(SRC, ENC_TGT, attribute_target=True, keep_all=True, show_progress=False)
    assert full[0].source_attributions.shape[2:] == (6, 8)
    assert full[0].attribution_dims == ("layers", "heads")
    full.save(str(tmp_path / "attn.json"))
    back = inseq.FeatureAttributionOutput.load(str(tmp_path / "attn.json"))
    for out in (full, back):  # the reloaded output aggregates exactly like the original
        picked = out.aggregate(**sel)
        default = out.aggregate()
        plain = am.attribute(SRC, ENC_TGT, attribute_target=True, show_progress=False)
        for a, b, c, d in zip(picked, seed_form, default, plain):
            assert torch.allclose(a.source_attributions, b.source_attributions)
            assert torch.allclose(a.target_attributions.nan_to_num(), b.target_attributions.nan_to_num())
            assert torch.allclose(c.source_attributions, d.source_attributions)


def test_attention_step_scores_match_gradient_run(attn_models):
    am, _ = attn_models["gpt2"]
    a = am.attribute(SRC, DEC_TGT, step_scores=["probability", "entropy"], show_progress=False)
    g = am.attribute(SRC, DEC_TGT, method="saliency", step_scores=["probability", "entropy"], show_progress=False)
    for x, y in zip(a, g):
        for k in ("probability", "entropy"):
            assert torch.allclose(x.step_scores[k], y.step_scores[k], atol=1e-6)


def test_attention_restores_model_attention_kernel(attn_models):
    am, _ = attn_models["gpt2"]
    before = am.model.config._attn_implementation
    am.attribute(SRC[:1], DEC_TGT[:1], show_progress=False)
    assert am.model.config._attn_implementation == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": 6}, r"layers index 6 is out of range for a model with 6 layers"),
        ({"layers": (0, 7)}, r"layers range \(0, 7\) is invalid for a model with 6 layers"),
        ({"heads": [0, 8]}, r"heads index 8 is out of range for a model with 8 heads"),
        ({"heads": [0, 1], "aggregate_heads_fn": "single"}, r"'single' needs exactly one head"),
        ({"aggregate_layers_fn": "median"}, r"Unknown aggregate_layers_fn 'median'"),
    ],
)
def test_bad_selections_are_clear_errors(attn_models, kwargs, message):
    am, _ = attn_models["bart"]
    with pytest.raises(ValueError, match=message):
        am.attribute(SRC[:1], ENC_TGT[:1], show_progress=False, **kwargs)


def test_seed_attention_examples_verbatim(attn_models):
    """The release note's two attention calls, unchanged (the model stands for facebook/wmt19-en-de)."""
    model, eager = attn_models["bart"]
    text = "The developer argued with the designer because her idea cannot be implemented."
    out = model.attribute(text)
    seq = out[0]
    assert seq.source_attributions.shape == (len(seq.source), seq.n_steps) and seq.n_steps > 0
    with torch.no_grad():  # raw cross-attentions for exactly the generated ids: (layers, heads, steps, source)
        raw = eager(
            input_ids=torch.tensor([[t.id for t in seq.source]]),
            decoder_input_ids=torch.tensor([[t.id for t in seq.target]]),
            output_attentions=True,
        ).cross_attentions
    raw = torch.stack([layer[0, :, seq.attr_pos_start - 1 : seq.attr_pos_end - 1] for layer in raw])
    assert torch.allclose(seq.source_attributions, raw[-1].mean(0).T, atol=1e-6)  # last layer, mean of heads
    out = model.attribute(text, layers=(0, 5), heads=[0, 2, 5, 7], aggregate_heads_fn="max")
    expected = raw[0:5].mean(0)[[0, 2, 5, 7]].max(0).values.T
    assert torch.allclose(out[0].source_attributions, expected, atol=1e-6)
