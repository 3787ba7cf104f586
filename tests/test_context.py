"""Context reliance (inseq_ray.context, ``inseq-ray attribute-context``): against Inseq 0.7.1's own command, against
hand-computed CTI metrics from the model's forwards, against our own per-step attribution for the cue positions,
batched equal to one by one, and the CLI's JSON readable by Inseq."""

from __future__ import annotations

import json

import pytest
import torch

from inseq_ray.cli import main
from inseq_ray.context import ContextArgs, attribute_context

inseq = pytest.importorskip("inseq")
CTX, CUR, OUT = "the cat sees a bird", "the dog eats", "the fish likes bread"


def _inseq(model, path, **kw):
    from inseq.commands.attribute_context.attribute_context import attribute_context_with_model
    from inseq.commands.attribute_context.attribute_context_args import AttributeContextArgs

    args = AttributeContextArgs(model_name_or_path=path, show_viz=False, **json.loads(json.dumps(kw)))
    return attribute_context_with_model(args, model).to_dict()


@pytest.fixture(scope="module")
def theirs(model_dir):
    return {name: inseq.load_model(model_dir[name], "saliency") for name in ("gpt2", "t5", "llama")}


def _close(a, b, what, tol=1e-4):
    assert len(a) == len(b), (what, a, b)
    scale = max(1e-12, *(abs(x) for x in a))
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tol * scale, (what, a, b)


CASES = {
    "forced": {"output_current_text": OUT},
    "contrastive": {"output_current_text": OUT, "attributed_fn": "contrast_prob_diff"},
    "ig, all tokens": {
        "output_current_text": OUT,
        "attribution_method": "integrated_gradients",
        "attribution_kwargs": {"n_steps": 5},
        "context_sensitivity_std_threshold": 0,
    },
    "template, top-2": {
        "output_current_text": OUT,
        "input_template": "{context} . {current}",
        "context_sensitivity_std_threshold": None,
        "context_sensitivity_topk": 2,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_decoder_only_equals_inseqs_command(case, gpt2, theirs, model_dir):
    kw = {"input_context_text": CTX, "input_current_text": CUR, **CASES[case]}
    ours = attribute_context(gpt2, ContextArgs(**kw)).to_dict()
    ref = _inseq(theirs["gpt2"], model_dir["gpt2"], **kw)
    assert ours["output_current"] == ref["output_current"]
    assert ours["output_current_tokens"] == ref["output_current_tokens"]
    _close(ours["cti_scores"], ref["cti_scores"], "cti")
    assert [c["cti_idx"] for c in ours["cci_scores"]] == [c["cti_idx"] for c in ref["cci_scores"]]
    assert ours["cci_scores"], "the case must select a token"
    for a, b in zip(ours["cci_scores"], ref["cci_scores"], strict=True):
        for key in ("cti_token", "contextual_output", "contrast_token", "contextless_output"):
            assert a[key] == b[key], key
        _close(a["input_context_scores"], b["input_context_scores"], "cci", tol=1e-3)


def test_a_generated_output_on_a_bos_model_equals_inseq_but_for_its_bos_offset(llama, theirs, model_dir):
    """Llama adds BOS: the generation, tokens, CTI and selection equal Inseq's; Inseq slices the context scores
    from the BOS position (its first score is BOS's, its last context token is dropped), ours from the context's
    first token, so ours[:-1] == Inseq's[1:] (the README's Differences table)."""
    kw = {
        "input_context_text": CTX,
        "input_current_text": "the dog eats the",
        "generation_kwargs": {"max_new_tokens": 5},
    }
    ours = attribute_context(llama, ContextArgs(**kw)).to_dict()
    ref = _inseq(theirs["llama"], model_dir["llama"], **kw)
    assert (
        ours["output_current"] == ref["output_current"]
        and ours["output_current_tokens"] == ref["output_current_tokens"]
    )
    _close(ours["cti_scores"], ref["cti_scores"], "cti")
    assert [c["cti_idx"] for c in ours["cci_scores"]] == [c["cti_idx"] for c in ref["cci_scores"]]
    for a, b in zip(ours["cci_scores"], ref["cci_scores"], strict=True):
        assert a["contextual_output"] == b["contextual_output"]
        _close(a["input_context_scores"][:-1], b["input_context_scores"][1:], "cci shifted", tol=1e-3)


def _kl(model, src_without, src_with, target):
    """Hand CTI for an encoder-decoder: KL(P(. | no context) || P(. | context)) per target step."""
    tok, m = model.tokenizer, model.model
    tgt = tok(text_target=target)["input_ids"]
    dec = torch.tensor([[model.decoder_start(), *tgt]])
    with torch.no_grad():
        p, q = (m(input_ids=torch.tensor([tok(s)["input_ids"]]), decoder_input_ids=dec).logits[0].log_softmax(-1)
                for s in (src_without, src_with))  # fmt: skip
    return (p.exp() * (p - q)).sum(-1)[: len(tgt) - 1].tolist()  # the EOS step is not a token of the output


def test_encoder_decoder_cti_equals_the_hand_computed_metric_and_cci_equals_inseq(t5, theirs, model_dir):
    """CTI: KL from the model's own two forwards, and Inseq's; CCI of every token (no threshold) equals Inseq's
    command, per token (T5: no BOS, no embedding scale, so Inseq's offsets and forward path are ours)."""
    kw = {"input_context_text": CTX, "input_current_text": CUR, "output_current_text": OUT,
          "context_sensitivity_std_threshold": None}  # fmt: skip
    ours = attribute_context(t5, ContextArgs(**kw)).to_dict()
    _close(ours["cti_scores"], _kl(t5, CUR, f"{CTX} {CUR}", OUT), "hand cti", tol=1e-4)
    ref = _inseq(theirs["t5"], model_dir["t5"], **kw)
    _close(ours["cti_scores"], ref["cti_scores"], "inseq cti")
    by_idx = {c["cti_idx"]: c for c in ref["cci_scores"]}
    assert sorted(by_idx) == sorted(c["cti_idx"] for c in ours["cci_scores"]) == list(range(len(OUT.split())))
    for c in ours["cci_scores"]:
        _close(c["input_context_scores"], by_idx[c["cti_idx"]]["input_context_scores"], "cci", tol=1e-3)


@pytest.mark.parametrize("name", ["gpt2", "llama", "bart", "t5"])
def test_cue_scores_are_the_context_tokens_of_the_attributed_step(request, name):
    """Independent of Inseq's offsets: the input-context scores are the attributed step's scores at the positions
    of the context tokens (found by tokenising the input up to and with the context), on families with and
    without BOS; output-context scores likewise on the encoder-decoder."""
    am = request.getfixturevalue(name)
    kw = {"input_context_text": CTX, "input_current_text": CUR, "output_current_text": OUT,
          "context_sensitivity_std_threshold": None}  # fmt: skip
    if am.is_encoder_decoder:
        kw.update(output_context_text="a cat", output_template="{context} {current}")
    out = attribute_context(am, ContextArgs(**kw))
    tok = am.tokenizer
    ids = tok(f"{CTX} {CUR}")["input_ids"]
    lead = next(i for i, t in enumerate(ids) if t not in tok.all_special_ids)
    context = len(tok(CTX, add_special_tokens=False)["input_ids"])
    for cci in out.cci_scores:
        ref = am.attribute(f"{CTX} {CUR}", cci.contextual_output, attribute_target=am.is_encoder_decoder,
                           show_progress=False).aggregate(normalize=False)[0]  # fmt: skip
        side = ref.source_attributions if am.is_encoder_decoder else ref.target_attributions
        step = ref.attr_pos_end - ref.attr_pos_start - (2 if am.is_encoder_decoder else 1)  # the token's step
        _close(cci.input_context_scores, side[lead : lead + context, step].tolist(), f"{name} input", tol=1e-4)
        if am.is_encoder_decoder:
            n_out = len(tok(text_target="a cat", add_special_tokens=False)["input_ids"])
            _close(cci.output_context_scores, ref.target_attributions[1 : 1 + n_out, step].tolist(), "output")


def test_a_batch_equals_its_examples_one_by_one(gpt2):
    examples = [
        ContextArgs(input_context_text=CTX, input_current_text=CUR, output_current_text=OUT),
        ContextArgs(
            input_context_text="a dog runs home", input_current_text="the cat", generation_kwargs={"max_new_tokens": 4}
        ),
        ContextArgs(
            input_context_text=CTX,
            input_current_text="one fish",
            output_current_text="likes the old tree",
            attributed_fn="contrast_prob_diff",
            context_sensitivity_std_threshold=0,
        ),
    ]
    batch = attribute_context(gpt2, examples, batch_size=2)
    for example, got in zip(examples, batch, strict=True):
        alone = attribute_context(gpt2, example)
        assert got.output_current_tokens == alone.output_current_tokens
        _close(got.cti_scores, alone.cti_scores, "cti", tol=1e-5)
        assert [c.cti_idx for c in got.cci_scores] == [c.cti_idx for c in alone.cci_scores]
        for a, b in zip(got.cci_scores, alone.cci_scores, strict=True):
            _close(a.input_context_scores, b.input_context_scores, "cci", tol=1e-5)


def test_the_cli_saves_inseqs_structure(tmp_path, model_dir, capsys):
    from inseq.commands.attribute_context.attribute_context_helpers import AttributeContextOutput

    path, page = tmp_path / "out.json", tmp_path / "out.html"
    code = main(["attribute-context", "--model_name_or_path", model_dir["gpt2"], "--input_context_text", CTX,
                 "--input_current_text", CUR, "--output_current_text", OUT, "--save_path", str(path),
                 "--viz_path", str(page)])  # fmt: skip
    assert code == 0 and "context-sensitive tokens" in capsys.readouterr().out
    saved = json.loads(path.read_text())
    theirs = AttributeContextOutput.from_dict(saved)
    assert theirs.output_current_tokens == saved["output_current_tokens"] and theirs.cci_scores
    assert saved["info"]["model_name_or_path"] == model_dir["gpt2"] and "<script" not in page.read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input_current_text", ""], "input_current_text must be a non-empty"),
        (["--input_current_text", "x", "--input_template", "{context} {current}"], "no input_context_text"),
        (["--input_current_text", "x", "--output_template", "{context} {current}"], "never prompts"),
    ],
)
def test_argument_errors_are_one_line_before_the_model_loads(argv, message, capsys):
    assert main(["attribute-context", "-m", "/nonexistent", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_rescaled_cues_are_the_raw_ones_over_the_steps_largest_score(gpt2):
    kw = {"input_context_text": CTX, "input_current_text": CUR, "output_current_text": OUT}
    raw = attribute_context(gpt2, ContextArgs(**kw)).cci_scores
    rescaled = attribute_context(gpt2, ContextArgs(**kw, rescale_attributions=True)).cci_scores
    assert raw and [c.cti_idx for c in raw] == [c.cti_idx for c in rescaled]
    for a, b in zip(raw, rescaled, strict=True):
        ratios = [y / x for x, y in zip(a.input_context_scores, b.input_context_scores, strict=True)]
        assert max(ratios) == pytest.approx(min(ratios), rel=1e-4) and max(ratios) > 1  # one factor per step
        assert max(abs(v) for v in b.input_context_scores) <= 1 + 1e-6
