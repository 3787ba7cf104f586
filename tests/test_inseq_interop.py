"""Files travel both ways with Inseq 0.7.1: ours saved with ``format="inseq"`` load in Inseq with equal values
(every output shape: granular, coarse, per layer, per layer and head), and Inseq's own files (plain, split,
gzip) load here without importing anything, equal to the outputs Inseq computed."""

from __future__ import annotations

import warnings

import pytest
import torch

import inseq_ray

inseq = pytest.importorskip("inseq")

PROMPT, TEXT = "the cat sees a bird", "the cat sees a bird and the dog"
OURS = {  # method -> (kwargs, the output's attribution_dims)
    "saliency": ({}, ("hidden",)),
    "occlusion": ({}, ()),
    "attention": ({"keep_all": True}, ("layers", "heads")),
    "value_zeroing": ({}, ("layers",)),
}


def _same_sequence(ours, theirs, what: str) -> None:
    assert [(t.token, t.id) for t in ours.source] == [(t.token, t.id) for t in theirs.source], what
    assert [(t.token, t.id) for t in ours.target] == [(t.token, t.id) for t in theirs.target], what
    assert (ours.attr_pos_start, ours.attr_pos_end) == (theirs.attr_pos_start, theirs.attr_pos_end), what
    for part in ("source_attributions", "target_attributions"):
        a, b = getattr(ours, part), getattr(theirs, part)
        assert (a is None) == (b is None), (what, part)
        if a is not None:
            assert a.shape == b.shape, (what, part)
            assert a.nan_to_num().abs().max() > 0, (what, part, "vacuous")
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.float().nan_to_num()), what
    assert list(ours.step_scores) == list(theirs.step_scores), what
    for name, values in ours.step_scores.items():
        assert torch.equal(values, theirs.step_scores[name].float()), (what, name)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("method", list(OURS))
@pytest.mark.parametrize("model", ["gpt2", "bart"])
def test_our_files_load_in_inseq_with_equal_values(model, method, compress, request, tmp_path):
    am = request.getfixturevalue(model)
    kw, dims = OURS[method]
    sources = [PROMPT, "a dog"]
    targets = [TEXT, "a dog runs home"] if not am.is_encoder_decoder else ["one fish likes bread", "the child"]
    out = am.attribute(sources, targets, method=method, step_scores=["probability"], attribute_target=True,
                       show_progress=False, **kw)  # fmt: skip
    assert out[0].attribution_dims == dims
    (path,) = out.save(str(tmp_path / f"out.json{'.gz' if compress else ''}"), format="inseq", compress=compress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inseq.FeatureAttributionOutput.load(path, decompress=compress)
    assert len(theirs.sequence_attributions) == 2
    for i in range(2):
        _same_sequence(out[i], theirs.sequence_attributions[i], f"{model} {method} seq {i}")
    assert theirs.info["attribution_method"] == method
    back = inseq_ray.FeatureAttributionOutput.load(path)  # and our own reader reads it back
    _same_sequence(back[0], out[0], "round trip")
    assert back[0].attribution_dims == dims


def test_inseq_aggregates_and_renders_our_granular_file(gpt2, tmp_path):
    out = gpt2.attribute(PROMPT, TEXT, show_progress=False)
    (path,) = out.save(str(tmp_path / "out.json"), format="inseq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = inseq.FeatureAttributionOutput.load(path)
        theirs = loaded.aggregate()
        html = loaded.show(display=False, return_html=True)
    ours = out.aggregate()[0].target_attributions
    assert torch.allclose(theirs.sequence_attributions[0].target_attributions.float(), ours, equal_nan=True, atol=1e-6)
    assert "the" in html


@pytest.fixture(scope="module")
def inseq_outputs(model_dir):
    """Inseq 0.7.1's own outputs on the tiny GPT-2 and BART (its methods that run on transformers 5 here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {}
        for model, method in (("gpt2", "saliency"), ("gpt2", "occlusion"), ("gpt2", "attention"), ("bart", "saliency")):
            m = inseq.load_model(model_dir[model], method)
            if model == "gpt2":
                args = ([PROMPT, "a dog"], [TEXT, "a dog runs home"])
            else:
                args = ([PROMPT, "a dog"], ["one fish likes bread", "the child"])
            kw = {"attribute_target": True} if model == "bart" else {}
            if method != "attention":  # Inseq refuses step scores with its final-step methods
                kw["step_scores"] = ["probability"]
            out[model, method] = m.attribute(*args, show_progress=False, **kw)
        return out


@pytest.mark.parametrize("layout", ["plain", "gzip", "split"])
@pytest.mark.parametrize(
    "key", [("gpt2", "saliency"), ("gpt2", "occlusion"), ("gpt2", "attention"), ("bart", "saliency")]
)
def test_inseq_files_load_here_with_equal_values(inseq_outputs, key, layout, tmp_path):
    theirs = inseq_outputs[key]
    path = tmp_path / ("out.json.gz" if layout == "gzip" else "out.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.save(str(path), compress=layout == "gzip", split_sequences=layout == "split")
    if layout == "split":
        loaded = [inseq_ray.FeatureAttributionOutput.load(str(tmp_path / f"out_{i}.json"))[0] for i in range(2)]
    else:
        loaded = list(inseq_ray.FeatureAttributionOutput.load(str(path)))
    for i, ours in enumerate(loaded):
        _same_sequence(ours, theirs.sequence_attributions[i], f"{key} {layout} seq {i}")
    expected = {"saliency": ("hidden",), "occlusion": (), "attention": ("layers", "heads")}[key[1]]
    assert loaded[0].attribution_dims == expected
    agg = loaded[0].aggregate()  # our aggregation runs on Inseq's data
    assert agg.attribution_dims == () and agg.target_attributions.shape[:2] == loaded[0].target_attributions.shape[:2]


def test_decode_tokens_and_per_sequence_scores_dicts_equal_inseqs(gpt2, tmp_path):
    """Inseq's ``decode_tokens`` (readable byte-level tokens, ids kept) and per-sequence ``get_scores_dicts`` on the
    same output (ours saved in Inseq's format and loaded by Inseq)."""
    out = gpt2.attribute([PROMPT, "a dog"], [TEXT, "a dog runs home"], step_scores=["probability"],
                         show_progress=False)  # fmt: skip
    (path,) = out.save(str(tmp_path / "out.json"), format="inseq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inseq.FeatureAttributionOutput.load(path)
    for i, seq in enumerate(out):
        ours_dicts, their_dicts = seq.get_scores_dicts(), theirs.sequence_attributions[i].get_scores_dicts()
        assert ours_dicts.keys() == their_dicts.keys()
        for name in ours_dicts:
            assert ours_dicts[name].keys() == their_dicts[name].keys(), name
            for col, cells in ours_dicts[name].items():
                assert cells == pytest.approx(their_dicts[name][col], rel=1e-5, abs=1e-7, nan_ok=True), (name, col)
    raw = [t.token for t in out[0].target]
    assert out.decode_tokens(gpt2.tokenizer) is out and theirs.decode_tokens(gpt2.tokenizer) is theirs
    for i, seq in enumerate(out):
        mine = [(t.token, t.id) for t in seq.source + seq.target]
        assert mine == [(t.token, t.id) for t in theirs[i].source + theirs[i].target]
    assert any(r.startswith("Ġ") for r in raw) and not any(t.token.startswith("Ġ") for t in out[0].target)
