"""Inseq's show_attributions, show_granular_attributions and show_token_attributions (issue #26): the views hold
the scores they claim (checked against the tensors), name the same generated tokens as Inseq 0.7.1's own views on
the same file, refuse what they cannot show, and print in a terminal (where Inseq refuses)."""

from __future__ import annotations

import warnings

import pytest
import torch

import inseq_ray
from inseq_ray.viz_views import _granular

inseq = pytest.importorskip("inseq")

PROMPT, TEXT = "the cat sees a bird", "the cat sees a bird and the dog"


def test_token_view_names_inseqs_tokens_and_highlights(gpt2, tmp_path, capsys):
    out = gpt2.attribute(PROMPT, TEXT, step_scores=["probability"], show_progress=False)
    page = inseq_ray.show_token_attributions(out, return_html=True, step_score_highlight="probability")
    seq = out.aggregate()[0]
    for tok in seq.generated:
        assert f">{tok.token}</span>" in page  # each generated token, highlighted by its probability
    assert page.count("<details") == seq.n_steps and "Target attributions for" in page
    (path,) = out.save(str(tmp_path / "o.json"), format="inseq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = inseq.show_token_attributions(inseq.FeatureAttributionOutput.load(path).aggregate()[0], display=False,
                                               return_html=True)  # fmt: skip
    assert all(tok.token in theirs for tok in seq.generated)  # the same tokens in Inseq's own view
    with pytest.raises(ValueError, match="step_score_highlight='entropy'"):
        out.show_tokens(step_score_highlight="entropy", return_html=True)
    out[0].show_tokens(wrap_after=2)  # the terminal view
    printed = capsys.readouterr().out
    assert "Generated text" in printed and repr(seq.generated[0].token) in printed


def test_granular_view_shows_the_selected_slices(gpt2):
    out = gpt2.attribute(PROMPT, TEXT, show_progress=False)  # (L, T, hidden)
    hidden = out[0].target_attributions.shape[-1]
    page = out.show_granular(return_html=True, max_show_size=5)
    assert f"hidden: 5 of {hidden} shown" in page and page.count("<details>") == out[0].n_steps
    att = gpt2.attribute(PROMPT, TEXT, method="attention", attribution_args={"keep_all": True}, show_progress=False)
    m, dims = att[0].target_attributions, att[0].attribution_dims  # (L, T, layers, heads)
    grid, caption = _granular(m, dims, "heads", {"layers": (1, 2)}, 20)
    assert torch.equal(grid.nan_to_num(), m[:, :, 1, :].nan_to_num()) and caption.startswith("heads: ")
    grid, caption = _granular(m, dims, "layers", {}, 20)
    assert torch.allclose(grid.nan_to_num(), m.nanmean(-1).nan_to_num()) and "averaged" in caption
    with pytest.raises(ValueError, match="granular"):
        out.aggregate().show_granular(return_html=True)


def test_show_attributions_is_the_heatmap(gpt2):
    out = gpt2.attribute(PROMPT, TEXT, show_progress=False)
    assert inseq_ray.show_attributions(out[0], return_html=True, display=False) == out.show(return_html=True)
