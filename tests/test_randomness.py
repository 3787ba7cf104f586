"""A record's random draws (LIME masks, GradientSHAP noise and alphas, MC-dropout masks) are its own: batch size,
token budget, input order, out-of-memory halving, shard layout and reruns never change its numbers."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from inseq_ray.attribution_model import AttributionModel
from inseq_ray.randomness import RowRandom, record_seed, seed_of

SOURCES = ["the cat sees a bird near the river", "a dog", "one fish likes bread and the child sees it", "the sun"]
METHODS = {
    "lime": {"method": "lime", "n_samples": 10, "patterns_per_forward": 4},
    "gradient_shap": {"method": "gradient_shap", "n_samples": 3, "stdevs": 0.1},
    "mc_dropout": {"method": "saliency", "step_scores": ["mc_dropout_prob_avg"], "n_mcd_steps": 3},
}


def _values(out) -> list[dict[str, torch.Tensor]]:
    """Per sequence: every tensor a random method can change (attributions and the MC-dropout score)."""
    rows = []
    for seq in out:
        vals = {
            k: v for k, v in (("source", seq.source_attributions), ("target", seq.target_attributions)) if v is not None
        }
        vals.update({f"score {k}": v for k, v in seq.step_scores.items()})
        rows.append(vals)
    return rows


def _max_diff(a: list[dict], b: list[dict]) -> float:
    """The largest difference of any tensor, relative to that tensor's scale in ``a`` (LIME's coefficients are
    ~1e-5, MC-dropout z-scores ~5: one absolute bar would be vacuous for one and too tight for the other)."""
    out = 0.0
    for x, y in zip(a, b, strict=True):
        for k in x:
            scale = float(x[k].nan_to_num().abs().max())
            assert scale > 0, k
            out = max(out, float((x[k] - y[k]).nan_to_num().abs().max()) / scale)
    return out


@pytest.mark.parametrize("model", ["gpt2", "bart"])
@pytest.mark.parametrize("name", list(METHODS))
def test_a_records_draws_do_not_depend_on_batching_order_or_budget(model, name, request):
    am = request.getfixturevalue(model)
    targets = list(am.attribute(SOURCES, show_progress=False).info["generated_texts"])
    kw = dict(METHODS[name])

    def attribute(sources, tgts, seed=0, **more):
        out = am.attribute(sources, tgts, generator=seed, show_progress=False, **kw, **more) if name != "mc_dropout" \
            else am.attribute(sources, tgts, seed=seed, show_progress=False, **kw, **more)  # fmt: skip
        return _values(out)

    ref = attribute(SOURCES, targets, batch_size=4)
    variants = {
        "batch 1": attribute(SOURCES, targets, batch_size=1),
        "batch 3": attribute(SOURCES, targets, batch_size=3),
        "token budget": attribute(SOURCES, targets, batch_size=4, max_batch_tokens=60),
        "reversed": attribute(SOURCES[::-1], targets[::-1], batch_size=2)[::-1],
        "alone": [attribute([s], [t])[0] for s, t in zip(SOURCES, targets, strict=True)],
    }
    for what, got in variants.items():  # equal up to float summation order (padding changes kernel shapes)
        assert _max_diff(ref, got) <= 1e-4, (what, _max_diff(ref, got))
    other_seed = attribute(SOURCES, targets, seed=1, batch_size=4)
    assert _max_diff(ref, other_seed) > 0.05  # the draws matter: the comparison above is not vacuous


def test_out_of_memory_halving_keeps_every_records_draws(gpt2, monkeypatch):
    targets = gpt2.attribute(SOURCES, show_progress=False).info["generated_texts"]
    kw = {"method": "lime", "n_samples": 10, "show_progress": False, "batch_size": 4}
    ref = _values(gpt2.attribute(SOURCES, targets, **kw))
    real = AttributionModel._attribute_batch

    def small_device(self, batch, settings, idx, keys):
        if len(idx) > 1:
            raise torch.OutOfMemoryError("injected: only one sequence fits")
        return real(self, batch, settings, idx, keys)

    monkeypatch.setattr(AttributionModel, "_attribute_batch", small_device)
    out = gpt2.attribute(SOURCES, targets, **kw)
    assert out.info["batch_sizes"] == [1, 1, 1, 1]  # every batch was halved down to one
    assert _max_diff(ref, _values(out)) <= 1e-4


def test_row_draws_are_per_record_and_padding_free():
    rows = RowRandom(7, ["a", "b"])
    u = rows.rand((3,), [2, 4], 5, "s")  # (3, 2, 5)
    alone = RowRandom(7, ["b"]).rand((3,), [4], 4, "s")  # "b" in another batch, less padding
    assert torch.equal(u[:, 1, :4], alone[:, 0]) and torch.equal(u[:, 0, 2:], torch.ones(3, 3))
    assert not torch.equal(rows.rand((3,), [4, 4], 4, "s")[:, 0], rows.rand((3,), [4, 4], 4, "t")[:, 0])  # streams
    assert seed_of(None) == 0 and seed_of(5) == 5 and seed_of(torch.Generator().manual_seed(9)) == 9
    assert record_seed(0, "a", "s") != record_seed(1, "a", "s")


def _scores(prefix) -> pl.DataFrame:
    src = pl.read_parquet(f"{prefix}/tables/source_attributions/*.parquet")
    return src.select("seq_id", "step", "attributed_pos", "score").sort("seq_id", "step", "attributed_pos")


def test_a_pipeline_rerun_with_other_batching_and_shards_gives_the_same_scores(tmp_path):
    from inseq_ray.pipeline.config import PipelineConfig
    from inseq_ray.pipeline.runner import run
    from inseq_ray.toy.tasks import translation_corpus

    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s, _, _ in translation_corpus(24, seed=41)))
    common = {"input": str(path), "use_ray": False, "method": "lime", "method_args": {"n_samples": 8}}
    run(PipelineConfig(output=str(tmp_path / "a"), batch_size=8, **common), progress=False)
    run(PipelineConfig(output=str(tmp_path / "b"), batch_size=1, shard_bytes=1024, **common), progress=False)
    a, b = _scores(tmp_path / "a"), _scores(tmp_path / "b")
    assert a.height > 100 and a.select("seq_id", "step", "attributed_pos").equals(
        b.select("seq_id", "step", "attributed_pos")
    )
    diff = (a["score"] - b["score"]).abs().max()  # normalised scores in [0, 1]; float summation order only
    assert diff <= 1e-5, diff
