"""Public API: the seed's examples, outputs, aggregation, save/load, scores dicts, bad input."""

from __future__ import annotations

import gzip
import json
import math

import pandas as pd
import pytest
import torch

import inseq_ray as inseq
from inseq_ray.step_scores import STEP_FUNCTIONS

SRC = ["Hello ladies and badgers!", "This is a test input"]


def test_seed_examples_run(model_dir, tmp_path, monkeypatch):
    """The release note's saliency + save + get_scores_dicts examples, with a local model."""
    monkeypatch.chdir(tmp_path)
    model = inseq.load_model(model_dir["bart"], "saliency")
    out = model.attribute(
        ["sequence one", "sequence number two"],
        generation_args={"max_new_tokens": 5, "min_new_tokens": 3},
        show_progress=False,
    )
    written = out.save("out.json.gz", split_sequences=True, compress=True)
    assert sorted(p.split("/")[-1] for p in written) == ["out_0.json.gz", "out_1.json.gz"]
    assert not (tmp_path / "out.json.gz").exists()
    out = model.attribute(
        SRC,
        attribute_target=True,
        step_scores=["probability", "entropy"],
        generation_args={"max_new_tokens": 5, "min_new_tokens": 3},
        show_progress=False,
    )
    dicts = out.get_scores_dicts()
    for d, seq in zip(dicts, out):
        src_df = pd.DataFrame(d["source_attributions"])
        tgt_df = pd.DataFrame(d["target_attributions"])
        steps_df = pd.DataFrame(d["step_scores"])
        assert src_df.shape == (len(seq.source), seq.n_steps)
        assert tgt_df.shape == (len(seq.target), seq.n_steps)
        assert set(steps_df.index) == {"probability", "entropy"}
        # columns are the generated tokens; each step column sums to 1 over source + target
        col_sums = src_df.sum(axis=0).to_numpy() + tgt_df.sum(axis=0, skipna=True).to_numpy()
        assert col_sums == pytest.approx([1.0] * seq.n_steps, abs=1e-5)


def test_generation_is_used_when_no_targets(gpt2):
    out = gpt2.attribute("the cat", generation_args={"max_new_tokens": 4, "min_new_tokens": 4}, show_progress=False)
    seq = out[0]
    assert out.info["generated_texts"][0].startswith("the cat")
    assert seq.n_steps == 4
    assert seq.source_attributions is None
    assert [t.token for t in seq.source] == [t.token for t in seq.target[: seq.attr_pos_start]]


def test_shapes_and_nan_layout(bart):
    out = bart.attribute(SRC, ["one two", "a b c d"], attribute_target=True, show_progress=False)
    for seq in out:
        n = seq.n_steps
        assert seq.attr_pos_start == 1 and seq.attr_pos_end == len(seq.target)
        assert seq.source_attributions.shape[:2] == (len(seq.source), n)
        tgt = seq.target_attributions
        assert tgt.shape[:2] == (len(seq.target), n)
        for j in range(n):  # step j predicts target[1 + j]: rows >= 1 + j are not generated yet
            assert not tgt[: 1 + j, j].isnan().any()
            assert tgt[1 + j :, j].isnan().all()


def test_attr_pos_range_selects_steps(gpt2):
    full = gpt2.attribute(["the cat"], ["the cat sees a big tree today"], show_progress=False)[0]
    part = gpt2.attribute(
        ["the cat"], ["the cat sees a big tree today"], attr_pos_start=-3, attr_pos_end=-1, show_progress=False
    )[0]
    assert part.n_steps == 2 and part.attr_pos_end == len(full.target) - 1
    offset = part.attr_pos_start - full.attr_pos_start
    assert torch.allclose(
        part.target_attributions.nan_to_num(), full.target_attributions[:, offset : offset + 2].nan_to_num()
    )


def test_default_aggregation_is_l2_then_step_normalisation(bart):
    seq = bart.attribute(SRC[:1], ["one two"], attribute_target=True, show_progress=False)[0]
    agg = seq.aggregate()
    src = seq.source_attributions.norm(dim=-1)
    tgt = seq.target_attributions.norm(dim=-1)
    total = src.sum(0) + tgt.nansum(0)
    assert torch.allclose(agg.source_attributions, src / total)
    assert torch.allclose(agg.target_attributions.nan_to_num(), (tgt / total).nan_to_num())
    assert agg.attribution_dims == ()


@pytest.mark.parametrize(
    ("fn", "ref"),
    [
        ("sum", lambda x: x.sum(-1)),
        ("mean", lambda x: x.mean(-1)),
        ("max", lambda x: x.amax(-1)),
        ("min", lambda x: x.amin(-1)),
        ("absmax", lambda x: torch.where(x.amax(-1) >= -x.amin(-1), x.amax(-1), x.amin(-1))),
        ("vnorm", lambda x: x.pow(2).sum(-1).sqrt()),
    ],
)
def test_aggregation_functions(bart, fn, ref):
    seq = bart.attribute(SRC[:1], ["one two"], method="input_x_gradient", show_progress=False)[0]
    raw = seq.aggregate(fn, normalize=False).source_attributions
    assert torch.allclose(raw, ref(seq.source_attributions), atol=1e-7)
    rescaled = seq.aggregate(fn, normalize=False, rescale=True).source_attributions
    assert rescaled.abs().max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Only one of normalize and rescale"):
        seq.aggregate(fn, normalize=True, rescale=True)


def test_step_scores_against_hand_computation(gpt2):
    out = gpt2.attribute(
        ["the cat"],
        ["the cat sees a tree"],
        show_progress=False,
        step_scores=["probability", "logit", "entropy", "crossentropy", "perplexity"],
    )
    seq = out[0]
    ids = torch.tensor([[t.id for t in seq.target]])
    with torch.no_grad():
        logits = gpt2.model(input_ids=ids).logits[0]
    for j, pos in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
        row, tgt = logits[pos - 1].double(), ids[0, pos]
        p = row.softmax(-1)
        scores = {k: float(v[j]) for k, v in seq.step_scores.items()}
        assert scores["probability"] == pytest.approx(float(p[tgt]), rel=1e-4)
        assert scores["logit"] == pytest.approx(float(row[tgt]), rel=1e-4)
        assert scores["entropy"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-4)
        assert scores["crossentropy"] == pytest.approx(-math.log(float(p[tgt])), rel=1e-4)
        assert scores["perplexity"] == pytest.approx(1 / float(p[tgt]), rel=1e-4)


def test_attributed_fn_and_custom_step_function(gpt2):
    def top_logit(args):
        return args.logits.max(-1).values

    inseq.register_step_function(top_logit, "top_logit_test")
    try:
        assert "top_logit_test" in inseq.list_step_functions()
        with pytest.raises(ValueError, match="already registered"):
            inseq.register_step_function(top_logit, "top_logit_test")
        out = gpt2.attribute(
            ["the cat"],
            ["the cat sees"],
            attributed_fn="top_logit_test",
            step_scores=["top_logit_test"],
            show_progress=False,
        )
        assert out.info["attributed_fn"] == "top_logit_test"
        assert out[0].step_scores["top_logit_test"].shape == (out[0].n_steps,)
        logprob = gpt2.attribute(
            ["the cat"], ["the cat sees"], attributed_fn="probability", logprob=True, show_progress=False
        )
        prob = gpt2.attribute(["the cat"], ["the cat sees"], attributed_fn="probability", show_progress=False)
        assert not torch.allclose(logprob[0].target_attributions.nan_to_num(), prob[0].target_attributions.nan_to_num())
    finally:
        STEP_FUNCTIONS.pop("top_logit_test", None)


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_save_load_round_trip(bart, tmp_path, precision):
    out = bart.attribute(
        SRC,
        ["one two", "a b c"],
        attribute_target=True,
        step_scores=["probability"],
        show_progress=False,
        method="integrated_gradients",
        n_steps=4,
        return_convergence_delta=True,
    )
    path = tmp_path / "out.json"
    out.save(str(path), scores_precision=precision)
    with pytest.raises(FileExistsError):
        out.save(str(path))
    back = inseq.FeatureAttributionOutput.load(str(path))
    assert back.info == json.loads(json.dumps(back.info))
    assert back.info["input_texts"] == out.info["input_texts"]
    assert back.info["attribution_args"] == {"n_steps": 4, "return_convergence_delta": True}
    tol = 0 if precision == "float32" else 2e-3
    for a, b in zip(out, back):
        assert a.source == b.source and a.target == b.target
        assert (a.attr_pos_start, a.attr_pos_end, a.attribution_dims) == (
            b.attr_pos_start,
            b.attr_pos_end,
            b.attribution_dims,
        )
        for name in ("source_attributions", "target_attributions"):
            x, y = getattr(a, name), getattr(b, name)
            assert torch.equal(x.isnan(), y.isnan())
            assert (x - y).nan_to_num().abs().max() <= tol * max(1.0, float(x.nan_to_num().abs().max()))
        assert a.step_scores.keys() == b.step_scores.keys()
        for k in a.step_scores:
            assert torch.equal(a.step_scores[k], b.step_scores[k])


def test_compressed_split_files_are_gzip_json(bart, tmp_path):
    out = bart.attribute(SRC, ["one", "two"], show_progress=False)
    paths = out.save(str(tmp_path / "x.json.gz"), split_sequences=True, compress=True)
    for i, p in enumerate(paths):
        data = json.loads(gzip.decompress(open(p, "rb").read()))
        assert data["format"] == "inseq_ray.feature_attribution"
        one = inseq.FeatureAttributionOutput.load(p)
        assert len(one) == 1 and one.info["input_texts"] == [SRC[i]]
        assert torch.equal(one[0].source_attributions, out[i].source_attributions)


def test_load_never_imports_code(tmp_path):
    evil = {
        "format": "inseq_ray.feature_attribution",
        "version": 1,
        "info": {},
        "sequence_attributions": [
            {
                "__instance_type__": ["os", "system"],
                "source": [],
                "target": [["a", 1], ["b", 2]],
                "source_attributions": None,
                "target_attributions": None,
                "step_scores": {},
                "attr_pos_start": 1,
                "attr_pos_end": 2,
            }
        ],
    }
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(evil))
    out = inseq.FeatureAttributionOutput.load(str(path))
    assert out[0].target[0].token == "a"
    path.write_text(json.dumps({"__instance_type__": ["os", "system"], "attributes": {"command": "touch pwned"}}))
    with pytest.raises(ValueError, match="unexpected object \\['os', 'system'\\]"):  # Inseq-style, never imported
        inseq.FeatureAttributionOutput.load(str(path))
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="Neither an inseq_ray nor an Inseq attribution file"):
        inseq.FeatureAttributionOutput.load(str(path))


def test_merge_outputs(bart):
    a = bart.attribute(SRC[:1], ["one"], show_progress=False)
    b = bart.attribute(SRC[1:], ["two"], show_progress=False)
    merged = a + b
    assert len(merged) == 2 and merged.info["input_texts"] == SRC


def test_batched_equals_unbatched_and_order_kept(gpt2):
    src = ["the cat", "a big old farmer reads", "one"]
    tgt = [s + " sees a tree" for s in src]
    together = gpt2.attribute(src, tgt, show_progress=False, method="input_x_gradient")
    alone = [gpt2.attribute([s], [t], show_progress=False, method="input_x_gradient")[0] for s, t in zip(src, tgt)]
    for x, y in zip(together, alone):
        assert x.target == y.target
        assert (x.target_attributions - y.target_attributions).nan_to_num().abs().max() < 1e-6


def test_bf16_runs_with_fp32_results(model_dir):
    am = inseq.load_model(model_dir["gpt2"], "saliency", dtype="bf16", device="cpu")
    ref = inseq.load_model(model_dir["gpt2"], "saliency", device="cpu")
    kw = {"show_progress": False}
    half = am.attribute(["the cat"], ["the cat sees a tree"], **kw)[0]
    full = ref.attribute(["the cat"], ["the cat sees a tree"], **kw)[0]
    assert half.target_attributions.dtype == torch.float32
    assert half.target_attributions.nan_to_num().isfinite().all()
    cos = torch.nn.functional.cosine_similarity(
        half.target_attributions.nan_to_num().flatten(), full.target_attributions.nan_to_num().flatten(), dim=0
    )
    assert cos > 0.9


# ---- bad input -------------------------------------------------------------------------------
def test_empty_input_is_a_clear_error(bart):
    with pytest.raises(inseq.InputError, match=r"input_texts\[1\] is empty"):
        bart.attribute(["fine", "  "], ["a", "b"], show_progress=False)


def test_too_long_input_is_a_clear_error(bart):
    long_text = " ".join(["teacher"] * 400)
    with pytest.raises(inseq.InputError, match=r"input_texts\[0\] is \d+ tokens long, over the model's limit of 128"):
        bart.attribute([long_text], ["a"], show_progress=False)


def test_unknown_method_and_step_score_list_valid_ids(bart):
    with pytest.raises(inseq.UnknownIdError, match="Unknown attribution method 'salincy'.*saliency"):
        bart.attribute(["a cat"], ["b"], method="salincy", show_progress=False)
    with pytest.raises(inseq.UnknownIdError, match="Unknown step function 'probabilty'.*probability"):
        bart.attribute(["a cat"], ["b"], step_scores=["probabilty"], show_progress=False)
    with pytest.raises(inseq.UnknownIdError, match="Unknown attribution method"):
        inseq.load_model(bart.model, "nope", tokenizer=bart.tokenizer)


def test_unknown_method_argument_is_an_error(bart):
    with pytest.raises(TypeError, match="n_step.*accepts: internal_batch_size, method, n_steps"):
        bart.attribute(["a cat"], ["b"], method="integrated_gradients", n_step=3, show_progress=False)


def test_decoder_only_target_must_start_with_prompt(gpt2):
    with pytest.raises(inseq.InputError, match=r"generated_texts\[0\] does not start with input_texts\[0\].*prepend"):
        gpt2.attribute(["the cat"], ["a dog sees"], show_progress=False)


def test_step_function_registry_ids():
    assert {"probability", "logit", "entropy", "crossentropy", "perplexity"} <= set(inseq.list_step_functions())
    assert set(inseq.list_feature_attribution_methods()) >= {
        "saliency",
        "input_x_gradient",
        "integrated_gradients",
        "deeplift",
        "gradient_shap",
    }


def test_pickled_weights_need_an_explicit_opt_in(tmp_path):
    import os

    from transformers import GPT2Config, GPT2LMHeadModel

    from inseq_ray.toy import train_tokenizer

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=500, bos_token_id=1, eos_token_id=2))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), os.path.join(tmp_path, "pytorch_model.bin"))
    train_tokenizer(500).save_pretrained(tmp_path)
    with pytest.raises(OSError, match="no safetensors weights.*use_safetensors=False"):
        inseq.load_model(str(tmp_path))
    assert inseq.load_model(str(tmp_path), use_safetensors=False).model.config.n_layer == 1


def test_register_a_custom_method(bart):
    from inseq_ray.engine import MethodResult
    from inseq_ray.methods import METHODS

    def signed_grad(ctx, scale: float = 1.0):  # a new method in five lines, on the same one-forward schedule
        grads = ctx.run(ctx.attributed_embeds(), 1, lambda name, g: g, at_input=True)
        return MethodResult({k: scale * g for k, g in grads.items()})

    inseq.register_attribution_method(signed_grad, "signed_grad_test")
    try:
        with pytest.raises(ValueError, match="already registered"):
            inseq.register_attribution_method(signed_grad, "signed_grad_test")
        ours = bart.attribute(SRC[:1], ["one two"], method="signed_grad_test", scale=2.0, show_progress=False)[0]
        sal = bart.attribute(SRC[:1], ["one two"], method="saliency", show_progress=False)[0]
        assert torch.allclose(ours.source_attributions.abs(), 2 * sal.source_attributions, atol=1e-7)
    finally:
        METHODS.pop("signed_grad_test", None)


def test_explain_prints_each_registrys_own_documentation_and_every_aggregator_works(gpt2, capsys):
    from inseq_ray.aggregation import AGGREGATION_FUNCTIONS
    from inseq_ray.errors import UnknownIdError
    from inseq_ray.methods import METHODS
    from inseq_ray.step_scores import STEP_FUNCTIONS

    for id_, obj in (("integrated_gradients", METHODS["integrated_gradients"].fn),
                     ("pcxmi", STEP_FUNCTIONS["pcxmi"]), ("absmax", AGGREGATION_FUNCTIONS["absmax"])):  # fmt: skip
        inseq.explain(id_)
        assert capsys.readouterr().out.strip() == obj.__doc__.strip(), id_
    with pytest.raises(UnknownIdError, match="Unknown identifier 'bogus'. Valid ids: .*saliency.*subwords"):
        inseq.explain("bogus")
    out = gpt2.attribute("the cat sees a bird", "the cat sees a bird and the dog", show_progress=False)
    kwargs = {"spans": {"source_spans": (0, 2)}, "split": {"split_pattern": "Ġ"}, "slices": {"target_spans": (0, 2)},
              "pair": {"paired_attr": out}}  # fmt: skip
    for name in inseq.list_aggregators():
        inseq.explain(name)
        assert capsys.readouterr().out.strip()
        kept = name in ("pair", "slices")  # Inseq's: they act on the scores as they are (granular stays granular)
        assert out.aggregate(name, **kwargs.get(name, {}))[0].attribution_dims == (("hidden",) if kept else ())
    assert torch.equal(out.aggregate("scores")[0].target_attributions.nan_to_num(),
                       out.aggregate()[0].target_attributions.nan_to_num())  # fmt: skip
