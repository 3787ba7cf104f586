"""Sequential integrated gradients: equal to Inseq's own op on each step's prefix forward (per side, the other
side at its input), token paths chunked or not; the convergence delta; the forward budget."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("inseq")

from tests.faults import count_forwards
from tests.naive import naive_sequential_ig
from tests.test_engine_equivalence import _assert_close

CASES = {
    "gpt2": (["the cat sees a bird", "a dog"], ["the cat sees a bird and the dog", "a dog holds a book"], False),
    "llama": (["the cat sees a bird"], ["the cat sees a bird and the dog eats"], False),
    "bart+target": (["the cat sees a bird near the river", "a dog"], ["one fish likes bread", "the child"], True),
    "t5": (["the cat sees a bird"], ["one fish likes bread"], False),
}


@pytest.mark.parametrize("chunk", [None, 7])
@pytest.mark.parametrize("case", list(CASES))
def test_sequential_ig_equals_inseqs_op_per_step(case, chunk, request):
    am = request.getfixturevalue(case.split("+")[0])
    sources, targets, attribute_target = CASES[case]
    out = am.attribute(
        sources, targets, method="sequential_integrated_gradients", n_steps=4, attribute_target=attribute_target,
        internal_batch_size=None if chunk is None else chunk * len(sources), show_progress=False,
    )  # fmt: skip
    for i, (src, tgt) in enumerate(zip(sources, targets)):
        ref_src, ref_tgt = naive_sequential_ig(am, src, tgt, attribute_target, n_steps=4)
        _assert_close(out[i].source_attributions, ref_src, f"{case} seq {i} source")
        _assert_close(out[i].target_attributions, ref_tgt, f"{case} seq {i} target")


def test_sequential_ig_differs_from_ig_and_reports_its_delta(gpt2):
    """Both deltas measure sum(attributions) against the same f(x) - f(baseline)."""
    args = ("the cat sees a bird", "the cat sees a bird and the dog")
    kw = {"n_steps": 8, "return_convergence_delta": True, "show_progress": False}
    sig = gpt2.attribute(*args, method="sequential_integrated_gradients", **kw)[0]
    ig = gpt2.attribute(*args, method="integrated_gradients", **kw)[0]
    assert (sig.target_attributions - ig.target_attributions).nan_to_num().abs().max() > 1e-4
    gap = ig.target_attributions.nan_to_num().sum(dim=(0, 2)) - ig.step_scores["deltas"]  # f(x) - f(b) per step
    expected = sig.target_attributions.nan_to_num().sum(dim=(0, 2)) - gap
    assert torch.allclose(sig.step_scores["deltas"], expected, atol=1e-5)


def test_sequential_ig_forward_budget(gpt2, monkeypatch):
    rows = count_forwards(monkeypatch, gpt2.adapter)
    out = gpt2.attribute(
        ["the cat sees a bird"], ["the cat sees a bird and the dog"], method="sequential_integrated_gradients",
        n_steps=5, step_blocks=1, show_progress=False,
    )[0]  # fmt: skip
    inputs = len(out.target) - 1  # the last token is never an input
    assert rows == [5] * inputs  # one token's path (n_steps copies) per forward, all steps at once


def test_sequential_ig_runs_in_the_pipeline(tmp_path):
    from inseq_ray.pipeline.config import PipelineConfig
    from inseq_ray.pipeline.runner import run
    from tests.test_pipeline import check_complete, read_table

    (tmp_path / "c.txt").write_text("the cat sees a bird\na dog runs\nthe old farmer reads a book\n")
    cfg = PipelineConfig(
        input=str(tmp_path / "c.txt"), output=str(tmp_path / "run"), use_ray=False,
        method="sequential_integrated_gradients", method_args={"n_steps": 8},
    )  # fmt: skip
    run(cfg, progress=False)
    check_complete(tmp_path / "run", 3)
    assert read_table(tmp_path / "run", "source_attributions").height > 0
