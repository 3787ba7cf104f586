"""Occlusion beyond the naive equivalence (tests/test_engine_equivalence.py, tests/test_families.py): the
pipeline runs it, the forward count is one per occluded token plus one, and bad arguments are refused."""

from __future__ import annotations

import pytest

from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from tests.faults import count_forwards
from tests.test_pipeline import check_complete, read_table


def test_occlusion_forward_budget_is_one_per_token_for_all_steps(bart, monkeypatch):
    calls = count_forwards(monkeypatch, bart.adapter)
    sources = ["the cat sees a bird near the river", "a dog runs"]
    out = bart.attribute(
        sources, ["one fish likes bread today", "the child"], method="occlusion", patterns_per_forward=4,
        show_progress=False,
    )  # fmt: skip
    length = out[0].source_attributions.shape[0]  # the longest source (tokens, padded batch width)
    assert len(calls) == 1 + -(-length // 4)  # reference + ceil(L / 4) stacked forwards, whatever the steps
    assert calls[1] == 4 * len(sources)
    assert out[0].n_steps > 3 and out[0].attribution_dims == ()


def test_occlusion_runs_in_the_pipeline(tmp_path):
    (tmp_path / "c.txt").write_text("the cat sees a bird\na dog runs\nthe old farmer reads a book\n")
    cfg = PipelineConfig(input=str(tmp_path / "c.txt"), output=str(tmp_path / "run"), use_ray=False, method="occlusion")
    run(cfg, progress=False)
    check_complete(tmp_path / "run", 3)
    src = read_table(tmp_path / "run", "source_attributions")
    assert src.height > 0 and float(src["score"].min()) >= 0  # Inseq's absolute differences


def test_occlusion_arguments_are_checked(bart):
    with pytest.raises(ValueError, match="patterns_per_forward"):
        bart.attribute(["a dog"], ["the child"], method="occlusion", patterns_per_forward=0, show_progress=False)
