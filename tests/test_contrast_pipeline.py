"""A contrastive corpus end to end on the toy translator: contrast columns in, contrastive step scores in the
step_scores table equal to the in-process attribute() of the same records, bad contrast records as rows."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

import inseq_ray as inseq
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from tests.test_pipeline import check_complete, read_table

PAIRS = [
    ("the cat sees a bird", "lo gato vide un avo", "lo kane vide un avo"),
    ("a dog runs", "un kane ama un kane", "un gato ama un kane"),
    ("the bird sees the dog", "lo avo vide lo kane", "lo avo vide lo gato"),
]


def test_contrastive_corpus_end_to_end(tmp_path):
    lines = [{"source": s, "target": t, "contrast": c} for s, t, c in PAIRS]
    lines.append({"source": "a cat", "target": "un gato"})  # no contrast: an error row, nothing else lost
    lines.append({"source": "a bird", "target": "un avo", "contrast": "  "})  # empty contrast
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = PipelineConfig(
        input=str(tmp_path / "c.jsonl"),
        output=str(tmp_path / "run"),
        use_ray=False,
        contrast_column="contrast",
        attributed_fn="contrast_prob_diff",
        step_scores=["probability", "contrast_prob_diff", "pcxmi"],
    )
    run(cfg, progress=False)
    _, seqs, errs = check_complete(tmp_path / "run", len(lines))
    assert seqs.height == 3 and sorted(errs["reason"]) == ["empty", "missing_column"]
    assert seqs["contrast_text"].to_list() == [c for *_, c in PAIRS]
    assert any("kane → gato" in tokens for tokens in seqs["target_tokens"].to_list())
    steps = read_table(tmp_path / "run", "step_scores").join(seqs.select("seq_id", "source_text"), on="seq_id")
    model = inseq.load_model("toy:translator", "saliency")
    direct = model.attribute(
        [s for s, *_ in PAIRS],
        [t for _, t, _ in PAIRS],
        attributed_fn="contrast_prob_diff",
        contrast_targets=[c for *_, c in PAIRS],
        step_scores=["contrast_prob_diff", "pcxmi"],
        show_progress=False,
    )
    for (source, *_), seq in zip(PAIRS, direct, strict=True):
        rows = steps.filter(pl.col("source_text") == source).sort("step")
        for name in ("contrast_prob_diff", "pcxmi"):
            assert torch.allclose(torch.tensor(rows[name].to_list()), seq.step_scores[name], atol=1e-5)
    assert float(steps["contrast_prob_diff"].abs().max()) > 0.5  # the contrast changes the choice somewhere


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"step_scores": ["contrast_prob"]}, "--contrast-column"),
        ({"contrast_column": "contrast"}, "neither --attributed-fn nor --step-scores"),
        ({"contrast_column": "nope", "step_scores": ["contrast_prob"]}, "nope"),
    ],
)
def test_contrast_mistakes_fail_before_any_work(tmp_path, overrides, match):
    (tmp_path / "c.jsonl").write_text(json.dumps({"source": "a cat", "contrast": "un kane"}) + "\n")
    cfg = PipelineConfig(input=str(tmp_path / "c.jsonl"), output=str(tmp_path / "run"), use_ray=False, **overrides)
    with pytest.raises(ValueError, match=match):
        run(cfg, progress=False)
    assert not (tmp_path / "run" / "_run.json").exists()


def test_dry_run_with_contrast_columns_prices_records_that_have_their_contrast(tmp_path):
    """The estimate reads the same columns a run reads: with --contrast-column every sampled record is ok
    (read without the column, each would be a missing-contrast error and the estimate would be 0 ok)."""
    from inseq_ray.pipeline.estimate import estimate

    lines = [{"source": s, "target": t, "contrast": c, "id": f"r{i}"} for i, (s, t, c) in enumerate(PAIRS)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = PipelineConfig(
        input=str(tmp_path / "c.jsonl"), output=str(tmp_path / "run"), use_ray=False, contrast_column="contrast",
        step_scores=["contrast_prob_diff"], id_column="id",
    )  # fmt: skip
    e = estimate(cfg)
    assert e["sampled_records"] == len(PAIRS) and e["estimated_ok_records"] == len(PAIRS)
    assert e["target_tokens_per_record"] > 0 and e["bytes_per_record"]
    assert not (tmp_path / "run" / "_run.json").exists()  # a dry run claims nothing
