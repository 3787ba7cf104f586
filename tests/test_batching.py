"""Token-budget batches and out-of-memory retries: long records go alone, short ones pack, nothing is lost."""

from __future__ import annotations

import pytest
import torch

import inseq_ray as inseq
from inseq_ray.attribution_model import plan_batches
from inseq_ray.errors import Reason
from inseq_ray.methods import METHODS, method_copies
from inseq_ray.methods.gradient import saliency
from inseq_ray.pipeline.config import PipelineConfig
from inseq_ray.pipeline.runner import run
from tests.test_pipeline import check_complete, read_table

SHORT = ["a cat", "the dog", "one bird", "a big fish", "the old tree", "a red book"]
LONG = "every old farmer sees the small red cat near the big green tree under the blue river with a happy child"


def test_plan_packs_short_rows_and_sends_long_ones_alone():
    lengths = [4, 5, 4, 40, 6, 5]
    batches = plan_batches(lengths, batch_size=3, max_row_tokens=20)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert [3] in batches  # the 40-token row alone (over the budget even alone)
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 20)
    assert plan_batches(lengths, batch_size=100) == [sorted(range(6), key=lambda i: lengths[i])]


def test_method_copies_count_the_stacked_inputs():
    assert method_copies("saliency", {}) == 1 and method_copies("deeplift", {}) == 2
    assert method_copies("integrated_gradients", {"n_steps": 8}) == 8 and method_copies("gradient_shap", {}) == 5


def test_a_token_budget_bounds_every_batch_and_changes_no_result(bart):
    kw = {"method": "integrated_gradients", "n_steps": 4, "show_progress": False}
    whole = bart.attribute([*SHORT, LONG], **kw)
    budget = bart.attribute([*SHORT, LONG], max_batch_tokens=4 * 40, **kw)  # 40 padded tokens per forward
    sizes = budget.info["batch_sizes"]
    assert max(sizes) < len(SHORT) + 1 and sizes[-1] == 1  # the long record alone
    for a, b in zip(whole, budget):
        assert torch.allclose(a.source_attributions, b.source_attributions, atol=1e-5)


@pytest.mark.parametrize("name", ["bart", "gpt2"])
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_normalising_on_the_device_equals_aggregate_per_sequence(request, name, method):
    """The batched normalisation (padding, prompt and future cells excluded) == ``aggregate()`` per sequence."""
    model = request.getfixturevalue(name)
    texts = [*SHORT, LONG]
    kw = {"method": method, "attribute_target": True, "show_progress": False, "generation_args": {"max_new_tokens": 6}}
    if method == "integrated_gradients":
        kw["n_steps"] = 4
    plain = model.attribute(texts, **kw).aggregate()  # per sequence: vnorm, then each step sums to 1
    device = model.attribute(texts, aggregate_hidden_fn="vnorm", normalize=True, **kw)
    for a, b in zip(plain, device, strict=True):
        assert b.attribution_dims == ()
        for part in ("source_attributions", "target_attributions"):
            x, y = getattr(a, part), getattr(b, part)
            assert (x is None) == (y is None)
            if x is not None:
                assert torch.allclose(x, y, atol=1e-6, equal_nan=True)
        total = sum(p.abs().nansum(0) for p in (b.source_attributions, b.target_attributions) if p is not None)
        assert torch.allclose(total, torch.ones_like(total), atol=1e-5)  # not vacuous: each step sums to 1


def test_normalize_without_an_on_device_reduction_is_refused(bart):
    with pytest.raises(ValueError, match="aggregate_hidden_fn"):
        bart.attribute(SHORT[:1], normalize=True, show_progress=False)


@pytest.fixture
def oom_if_big():
    """A registered method that runs out of memory on batches of more than 2 rows or any row over 20 tokens."""

    def method(ctx, abs: bool = True):
        if ctx.batch.size > 2 or ctx.batch.source_mask.sum(1).max() > 20:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return saliency(ctx, abs)

    inseq.register_attribution_method(method, "oom_if_big")
    yield "oom_if_big"
    METHODS.pop("oom_if_big")


def test_out_of_memory_halves_the_batch_and_equals_the_plain_result(bart, oom_if_big):
    out = bart.attribute(SHORT, method=oom_if_big, batch_size=6, show_progress=False)
    plain = bart.attribute(SHORT, method="saliency", batch_size=6, show_progress=False)
    assert max(out.info["batch_sizes"]) <= 2
    for a, b in zip(out, plain):
        assert torch.allclose(a.source_attributions, b.source_attributions, atol=1e-6)
    with pytest.raises(inseq.InputError, match="input_texts\\[0\\] does not fit in device memory even alone") as e:
        bart.attribute([LONG], method=oom_if_big, show_progress=False)
    assert e.value.code == Reason.OOM


def test_the_stream_yields_each_batch_as_attributed_and_equals_attribute(bart, oom_if_big, monkeypatch):
    """attribute_stream is lazy (a batch is attributed only when pulled), yields halves after out-of-memory,
    and its outputs are attribute()'s, index for index."""
    calls: list[list[int]] = []
    real = bart._attribute_batch
    monkeypatch.setattr(bart, "_attribute_batch", lambda b, s, idx, k: calls.append(idx) or real(b, s, idx, k))
    stream = bart.attribute_stream(SHORT, method=oom_if_big, batch_size=3, show_progress=False)
    assert calls == []
    size, idx, seqs = next(stream)
    first = {i for c in calls for i in c}  # only the first planned batch (3 rows, tried whole, then halved)
    assert len(first) == 3 and set(idx) <= first and size <= 2 and len(seqs) == len(idx)
    rest = list(stream)
    assert {i for c in calls for i in c} == set(range(len(SHORT)))  # the rest was attributed only when pulled
    got = {i: seq for _, group, out in [(size, idx, seqs), *rest] for i, seq in zip(group, out, strict=True)}
    plain = bart.attribute(SHORT, method="saliency", show_progress=False)
    assert sorted(got) == list(range(len(SHORT)))
    for i, seq in got.items():
        assert torch.allclose(seq.source_attributions, plain[i].source_attributions, atol=1e-6)


def test_in_the_pipeline_an_unfittable_record_is_one_oom_row(tmp_path, oom_if_big, model_dir):
    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in [*SHORT, LONG]))
    cfg = PipelineConfig(input=str(path), output=str(tmp_path / "run"), model=model_dir["bart"], method=oom_if_big)
    cfg.use_ray, cfg.generation_args = False, {"max_new_tokens": 4}
    run(cfg, progress=False)
    _, seqs, errs = check_complete(tmp_path / "run", 7)
    assert errs["reason"].to_list() == [Reason.OOM] and seqs.height == 6
    assert set(read_table(tmp_path / "run", "sequences")["batch_size"].to_list()) <= {1, 2}


def test_objects_are_written_while_the_next_batch_is_attributed(tmp_path, monkeypatch):
    """The first batch's write waits until the second batch has been attributed: with writes in line with
    attribution this could never happen (the write would time out); with the background writer it does."""
    import threading

    from inseq_ray.pipeline.runner import run_local
    from inseq_ray.pipeline.shards import plan_shards
    from inseq_ray.pipeline.storage import Storage

    path = tmp_path / "c.txt"
    path.write_text("".join(s + "\n" for s in SHORT * 2))  # 12 records, batches of 4 -> 3 batches
    second_batch_done = threading.Event()
    handed = []
    real = Storage.write_many
    overlapped = []

    def on_records(n: int) -> None:
        handed.append(n)
        if len([h for h in handed if h]) >= 2:
            second_batch_done.set()

    def slow_first_write(self, items):
        if not overlapped:
            overlapped.append(second_batch_done.wait(timeout=60))
        return real(self, items)

    monkeypatch.setattr(Storage, "write_many", slow_first_write)
    cfg = PipelineConfig(input=str(path), output=str(tmp_path / "run"), batch_size=4, use_ray=False)
    (summary,) = run_local(cfg, plan_shards(cfg.input), on_records=on_records)
    assert overlapped == [True] and summary["ok"] == 12
    assert len(list((tmp_path / "run" / "sequences").rglob("*.json.gz"))) == 12
