"""Contrastive step functions and attribution: hand computations on the model's own forwards, captum on the
per-step contrastive function (tests/naive.py), and the refusals that keep a contrastive run from meaning
something else."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import inseq_ray as inseq
from inseq_ray.step_scores import STEP_FUNCTIONS, StepFunctionArgs, is_contrastive, top_p_size_fn
from tests.naive import embed_pieces, naive_attribute, next_logits
from tests.test_engine_equivalence import _assert_close

GPT2_PROMPTS = ["the cat sees a bird near the river and", "a dog runs"]
BART_SOURCES = ["the cat sees a bird near the river", "a dog runs"]
CONTRASTIVE = [
    "contrast_logits",
    "contrast_prob",
    "contrast_logits_diff",
    "contrast_prob_diff",
    "pcxmi",
    "kl_divergence",
    "in_context_pvi",
]


def _targets(am, inputs):
    return am.generate(inputs, max_new_tokens=5, do_sample=False)


def _contrast_ids(am, text: str) -> torch.Tensor:
    """The contrast target's ids as the engine forms them (enc-dec: decoder start + ids)."""
    return embed_pieces(am, "x", text)[1]


def _expected(am, name: str, logits: torch.Tensor, target: int, c_logits: torch.Tensor, c_target: int) -> float:
    """Inseq's formula of ``name`` from one step's original and contrast next-token logits (float64)."""
    lp, lq = F.log_softmax(logits.double(), -1), F.log_softmax(c_logits.double(), -1)
    return {
        "contrast_logits": float(c_logits[c_target]),
        "contrast_prob": float(lq[c_target].exp()),
        "contrast_logits_diff": float(logits[target] - c_logits[c_target]),
        "contrast_prob_diff": float(lp[target].exp() - lq[c_target].exp()),
        "pcxmi": -math.log2(float(lp[target].exp() / lq[c_target].exp())),
        "kl_divergence": float((lp.exp() * (lp - lq)).sum()),
        "in_context_pvi": float(-lp[target] + lq[c_target]),
    }[name]


def _check_step_scores(am, sources, targets, out, contrast_sources, contrast_targets, js):
    """Every contrastive score of every step == the formula on the model's own prefix forwards."""
    checked = 0
    for i, seq in enumerate(out.sequence_attributions):
        src_ids, tgt_ids, _ = embed_pieces(am, sources[i], targets[i])
        c_src = src_ids if contrast_sources is None else embed_pieces(am, contrast_sources[i], "x")[0]
        c_ids = tgt_ids if contrast_targets is None else _contrast_ids(am, contrast_targets[i])
        for t, p in enumerate(range(seq.attr_pos_start, seq.attr_pos_end)):
            j = js(i, p, len(c_ids))
            logits = next_logits(am, src_ids, tgt_ids[:p])
            c_logits = next_logits(am, c_src, c_ids[:j])
            for name in CONTRASTIVE:
                want = _expected(am, name, logits, int(tgt_ids[p]), c_logits, int(c_ids[j]))
                got = float(seq.step_scores[name][t])
                assert got == pytest.approx(want, rel=1e-4, abs=1e-4), (name, i, p)
                checked += 1
    assert checked >= 7 * 5  # at least five steps compared


def test_step_scores_with_contrast_targets_right_aligned_on_a_decoder_only_model(gpt2):
    """Context-usage shape: the contrast is the prompt without its first words, aligned from the end."""
    targets = _targets(gpt2, GPT2_PROMPTS)
    contrast = [t.split(" ", 2)[-1] for t in targets]  # drop two words of context
    out = gpt2.attribute(GPT2_PROMPTS, targets, step_scores=CONTRASTIVE, contrast_targets=contrast, show_progress=False)
    ends = [s.attr_pos_end for s in out.sequence_attributions]
    _check_step_scores(gpt2, GPT2_PROMPTS, targets, out, None, contrast, lambda i, p, c_len: c_len - (ends[i] - p))


def test_step_scores_with_contrast_sources_on_an_encoder_decoder_model(bart):
    targets = _targets(bart, BART_SOURCES)
    contrast_sources = ["a bird sees the cat near the river", "the dog sleeps"]
    out = bart.attribute(
        BART_SOURCES, targets, step_scores=CONTRASTIVE, contrast_sources=contrast_sources, show_progress=False
    )
    _check_step_scores(bart, BART_SOURCES, targets, out, contrast_sources, None, lambda i, p, c_len: p)


def test_explicit_alignments_pick_the_contrast_step(bart):
    targets = _targets(bart, BART_SOURCES[:1])
    contrast = ["zz " + targets[0]]  # one extra word up front: explicit pairs say which step meets which
    c_len = len(_contrast_ids(bart, contrast[0]))
    n = len(embed_pieces(bart, BART_SOURCES[0], targets[0])[1])
    shift = c_len - n
    pairs = [(p, p + shift) for p in range(1, n)]
    out = bart.attribute(
        BART_SOURCES[:1],
        targets,
        step_scores=CONTRASTIVE,
        contrast_targets=contrast,
        contrast_targets_alignments=pairs,
        show_progress=False,
    )
    _check_step_scores(bart, BART_SOURCES[:1], targets, out, None, contrast, lambda i, p, c: p + shift)
    auto = bart.attribute(
        BART_SOURCES[:1],
        targets,
        step_scores=["contrast_prob"],
        contrast_targets=contrast,
        contrast_targets_alignments="auto",
        show_progress=False,
    )
    assert torch.allclose(auto[0].step_scores["contrast_prob"], out[0].step_scores["contrast_prob"])


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "input_x_gradient"])
@pytest.mark.parametrize("name", ["gpt2", "bart"])
def test_contrastive_attribution_equals_captum_on_the_per_step_contrastive_function(request, method, name):
    """attributed_fn=contrast_prob_diff, several sentences in one batch, expanding methods included."""
    am = request.getfixturevalue(name)
    inputs = GPT2_PROMPTS if name == "gpt2" else BART_SOURCES
    targets = _targets(am, inputs)
    contrast = [t[:-1] + ("a" if t[-1] != "a" else "e") for t in targets]  # same context, another ending
    kw = {"n_steps": 8} if method == "integrated_gradients" else {}
    out = am.attribute(
        inputs,
        targets,
        method=method,
        attributed_fn="contrast_prob_diff",
        contrast_targets=contrast,
        attribute_target=True,
        show_progress=False,
        **kw,
    )
    for i, seq in enumerate(out.sequence_attributions):
        c_ids = _contrast_ids(am, contrast[i])
        end = seq.attr_pos_end

        def fn_for_step(p, c_ids=c_ids, end=end):
            foil = int(c_ids[len(c_ids) - (end - p)])  # right-aligned contrast token, original context

            def fn(args: StepFunctionArgs) -> torch.Tensor:
                probs = args.logits.float().softmax(-1)
                return probs.gather(-1, args.target_ids[:, None]).squeeze(-1) - probs[:, foil]

            return fn

        src, tgt = naive_attribute(am, inputs[i], targets[i], method, True, fn_for_step=fn_for_step, **kw)
        _assert_close(seq.source_attributions, src, f"{name} {method} source {i}")
        _assert_close(seq.target_attributions, tgt, f"{name} {method} target {i}")
        assert any("→" in t.token for t in seq.generated)  # Inseq's "contrast → original" label


def test_forced_contrast_inputs_are_a_constant_of_the_attribution(bart):
    """contrast_force_inputs: the contrast forward's value is subtracted, its gradient is not taken."""
    targets = _targets(bart, BART_SOURCES)
    kw = {"show_progress": False, "attribute_target": True}
    plain = bart.attribute(BART_SOURCES, targets, attributed_fn="probability", **kw)
    forced = bart.attribute(
        BART_SOURCES,
        targets,
        attributed_fn="contrast_prob_diff",
        contrast_sources=["the dog sleeps", "a bird flies"],
        contrast_force_inputs=True,
        step_scores=["contrast_prob_diff"],
        **kw,
    )
    for a, b in zip(plain, forced, strict=True):
        assert torch.allclose(a.source_attributions, b.source_attributions, atol=1e-6)
        assert b.step_scores["contrast_prob_diff"].abs().max() > 1e-3  # the contrast did change the values


def test_top_p_size_and_kl_filters_by_hand():
    logits = torch.tensor([[3.0, 2.0, 1.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    probs = logits.softmax(-1)
    sizes = top_p_size_fn(StepFunctionArgs(logits, torch.zeros(2, dtype=torch.long)), top_p=0.9)
    for row, size in zip(probs, sizes, strict=True):  # smallest top set reaching 0.9 (ties keep all above 0.1)
        cum = row.sort(descending=True).values.cumsum(0)
        assert int(size) == int((cum - row.sort(descending=True).values < 0.9).sum())
    from inseq_ray.step_scores import ContrastRows, kl_divergence_fn

    c_logits = torch.tensor([[1.0, 3.0, 0.0, 0.0], [1.0, 0.5, 0.2, 0.1]])  # no ties in the summed logits
    args = StepFunctionArgs(logits, torch.zeros(2, dtype=torch.long), ContrastRows(torch.zeros(2).long(), c_logits))
    kl = kl_divergence_fn(args, top_k=2)
    for r in range(2):
        keep = (logits[r] + c_logits[r]).topk(2).indices
        p, q = logits[r, keep].log_softmax(-1), c_logits[r, keep].log_softmax(-1)
        assert float(kl[r]) == pytest.approx(float((p.exp() * (p - q)).sum()), abs=1e-6)
    assert torch.isfinite(kl).all()


def test_mc_dropout_restores_eval_mode_also_on_error(bart, model_dir, monkeypatch):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(model_dir["bart"]).dropout > 0  # the toy BART carries dropout
    src = BART_SOURCES[:1]
    out = bart.attribute(src, step_scores=["mc_dropout_prob_avg"], n_mcd_steps=4, show_progress=False)
    assert torch.isfinite(out[0].step_scores["mc_dropout_prob_avg"]).all()
    assert not any(m.training for m in bart.model.modules())
    calls = {"n": 0}
    real = bart.adapter.states

    def failing(inputs):
        calls["n"] += 1
        if bart.model.training and calls["n"] > 2:
            raise RuntimeError("injected failure in a dropout forward")
        return real(inputs)

    monkeypatch.setattr(bart.adapter, "states", failing)
    with pytest.raises(RuntimeError, match="injected"):
        bart.attribute(src, step_scores=["mc_dropout_prob_avg"], show_progress=False)
    assert not any(m.training for m in bart.model.modules())


def test_mc_dropout_without_dropout_is_refused(llama, model_dir):
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(model_dir["llama"]).attention_dropout == 0  # Llama checkpoints: no dropout
    with pytest.raises(ValueError, match="no active dropout"):
        llama.attribute(["the cat sees"], step_scores=["mc_dropout_prob_avg"], show_progress=False)
    assert not any(m.training for m in llama.model.modules())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step_scores": ["contrast_prob"]}, "pass contrast_targets"),
        ({"contrast_targets": ["a b c"]}, "neither attributed_fn nor step_scores"),
        ({"attributed_fn": "kl_divergence", "contrast_targets": ["a b c"]}, "contrast_force_inputs=True"),
        ({"step_scores": ["contrast_prob"], "contrast_sources": ["x"]}, "encoder-decoder"),
        ({"step_scores": ["contrast_prob"], "contrast_targets": ["a", "b"]}, "2 entries for 1 input"),
        ({"step_scores": ["contrast_prob"], "contrast_targets_alignments": [(1, 1)]}, "needs contrast_targets"),
    ],
)
def test_contrast_mistakes_are_refused_in_one_line(gpt2, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpt2.attribute(GPT2_PROMPTS[:1], show_progress=False, **kwargs)


def test_every_inseq_step_function_is_registered():
    inseq_ids = {
        "logit", "probability", "entropy", "crossentropy", "perplexity", "contrast_logits", "contrast_prob",
        "contrast_logits_diff", "contrast_prob_diff", "pcxmi", "kl_divergence", "in_context_pvi",
        "mc_dropout_prob_avg", "top_p_size",
    }  # fmt: skip
    assert inseq_ids <= set(inseq.list_step_functions())
    assert {n for n, f in STEP_FUNCTIONS.items() if is_contrastive(f)} == set(CONTRASTIVE)


def test_mc_dropout_equals_the_z_score_of_seeded_dropout_forwards(bart):
    """Same seed, same forwards: (p - mean p~) / std p~ from the model's own forward in train mode, with torch
    seeded as the record's own dropout stream (its key is its source and target text; seed 0 by default)."""
    from inseq_ray.randomness import record_seed

    source = BART_SOURCES[0]
    target = _targets(bart, [source])[0]
    out = bart.attribute([source], [target], step_scores=["mc_dropout_prob_avg", "probability"], n_mcd_steps=3,
                         show_progress=False)[0]  # fmt: skip
    src_ids, tgt_ids, start = embed_pieces(bart, source, target)
    torch.manual_seed(record_seed(0, f"{source}\x00{target}", "mc_dropout"))
    bart.model.train()
    try:
        with torch.no_grad():
            runs = [
                bart.model(input_ids=src_ids[None], decoder_input_ids=tgt_ids[None], use_cache=False).logits[0]
                for _ in range(3)
            ]
    finally:
        bart.model.eval()
    positions = torch.arange(start, len(tgt_ids))
    noisy = torch.stack([r.float().softmax(-1)[positions - 1, tgt_ids[positions]] for r in runs])  # (3, steps)
    want = (out.step_scores["probability"] - noisy.mean(0)) / noisy.std(0)
    assert noisy.std(0).min() > 0  # dropout really varied the forwards
    assert torch.allclose(out.step_scores["mc_dropout_prob_avg"], want, rtol=1e-3, atol=1e-3)


def test_mc_dropout_as_attributed_fn_gives_finite_attributions(bart):
    out = bart.attribute(BART_SOURCES, attributed_fn="mc_dropout_prob_avg", n_mcd_steps=3, show_progress=False)
    assert all(torch.isfinite(s.source_attributions).all() for s in out)
    assert not any(m.training for m in bart.model.modules())
