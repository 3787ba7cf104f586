"""The family conformance matrix: every family built tiny with its real checkpoints' flags.

For each family: (a) the probability step score equals the model's own forward from ids (the
attributed forward is the model's forward); (b) every gradient method equals the naive per-step
reference (captum on each prefix, ``tests/naive.py``); (c) attention equals ``output_attentions=True``
of an eager copy. Built once per test run, tiny, so the whole matrix takes about a minute.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

import inseq_ray as inseq
from inseq_ray.toy.families import FAMILIES
from tests.naive import naive_attribute, naive_lime, naive_sequential_ig, naive_value_zeroing
from tests.naive_alti import naive_alti
from tests.test_engine_equivalence import _assert_close, _draws_for, _record_shap_draws

SOURCES = ["the cat sees a bird near the river", "a dog"]
ENC_TARGETS = ["one fish likes bread today", "the child"]
DEC_TARGETS = [SOURCES[0] + " and the dog eats", SOURCES[1] + " holds a book"]
METHODS = {
    "saliency": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 4},
    "deeplift": {},
    "gradient_shap": {"n_samples": 2, "stdevs": 0.1},
    "occlusion": {"patterns_per_forward": 4},
}

NO_REFERENCE = {
    ("fsmt", "deeplift"): "captum's DeepLift splits activations on dim 0 and FSMT runs its layers time-first "
    "((T, B, H)), so captum fails there; the engine finds the batch axis (adapter.activation_batch_axis)",
}


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    """name -> loaded AttributionModel, built on first use (init_std 0.2: peaked outputs)."""
    from inseq_ray.toy import build_tiny_model

    root = tmp_path_factory.mktemp("families")
    cache: dict[str, inseq.AttributionModel] = {}

    def get(name: str) -> inseq.AttributionModel:
        if name not in cache:
            path = build_tiny_model(name, root / name, init_std=0.2)
            cache[name] = inseq.load_model(str(path), "saliency", device="cpu")
        return cache[name]

    return get


def prefix_log_probabilities(am, seq) -> torch.Tensor:
    """(n_steps,) log p(target_t | prefix) from the model's own forward from ids on each prefix alone.

    ``use_cache=False``: FSMT's multi-token forward with its default ``use_cache=True`` differs from
    its own incremental decoding (by up to 0.8 in logits on the tiny model; transformers 5.24).
    """
    tgt = torch.tensor([t.id for t in seq.target])
    src = torch.tensor([[t.id for t in seq.source]]) if am.is_encoder_decoder else None
    probs = []
    with torch.no_grad():
        for p in range(seq.attr_pos_start, seq.attr_pos_end):
            if src is not None:
                logits = am.model(input_ids=src, decoder_input_ids=tgt[None, :p], use_cache=False).logits[0, -1]
            else:
                logits = am.model(input_ids=tgt[None, :p], use_cache=False).logits[0, -1]
            probs.append(logits.log_softmax(-1)[tgt[p]])
    return torch.stack(probs)


def _texts(am):
    return SOURCES, ENC_TARGETS if am.is_encoder_decoder else DEC_TARGETS


def test_the_matrix_covers_the_families_users_run():
    want = {"fsmt", "marian", "bart", "mbart", "m2m100", "pegasus", "t5", "flan_t5", "led"}
    want |= {
        "gpt2",
        "gpt_neox",
        "opt",
        "bloom",
        "llama",
        "mistral",
        "qwen2",
        "gemma",
        "gemma2",
        "phi",
        "falcon",
        "olmo",
        "qwen3",
        "gemma3",
    }
    assert want <= set(FAMILIES) and len(FAMILIES) >= 23


@pytest.mark.parametrize("name", list(FAMILIES))
def test_probability_equals_the_models_own_forward_from_ids(family_models, name):
    am = family_models(name)
    sources, targets = _texts(am)
    out = am.attribute(
        sources,
        targets,
        step_scores=["probability"],
        step_scores_args={"probability": {"logprob": True}},
        attribute_target=True,
        show_progress=False,
    )
    for seq in out:
        ref = prefix_log_probabilities(am, seq)
        ours = seq.step_scores["probability"]
        assert torch.allclose(ours, ref, atol=1e-4), (name, ours, ref)  # log-probs here are about -3 to -8


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_gradient_methods_equal_the_naive_reference(family_models, monkeypatch, name, method):
    if (name, method) in NO_REFERENCE:
        pytest.skip(NO_REFERENCE[name, method])
    am = family_models(name)
    sources, targets = _texts(am)
    calls = _record_shap_draws(monkeypatch)
    out = am.attribute(sources, targets, method=method, attribute_target=True, show_progress=False, **METHODS[method])
    for i, (src, tgt) in enumerate(zip(sources, targets)):
        seq = out[i]
        draws = _draws_for(calls, am, torch.tensor([t.id for t in seq.target])) if method == "gradient_shap" else None
        kw = {"n_steps": 4} if method == "integrated_gradients" else {}
        ref_src, ref_tgt = naive_attribute(am, src, tgt, method, True, shap_draws=draws, **kw)
        _assert_close(seq.source_attributions, ref_src, f"{name} {method} seq {i} source")
        _assert_close(seq.target_attributions, ref_tgt, f"{name} {method} seq {i} target")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_attention_equals_output_attentions(family_models, name):
    am = family_models(name)
    sources, targets = _texts(am)
    path = am.model.config.name_or_path
    cls = AutoModelForSeq2SeqLM if am.is_encoder_decoder else AutoModelForCausalLM
    eager = cls.from_pretrained(path, attn_implementation="eager").eval()
    out = am.attribute(sources, targets, method="attention", attribute_target=True, show_progress=False)
    for seq in out:
        tgt = torch.tensor([[t.id for t in seq.target]])
        with torch.no_grad():
            if am.is_encoder_decoder:
                src = torch.tensor([[t.id for t in seq.source]])
                raw = eager(input_ids=src, decoder_input_ids=tgt, output_attentions=True, use_cache=False)
                maps = {"source": raw.cross_attentions[-1][0], "target": raw.decoder_attentions[-1][0]}
            else:
                maps = {"target": eager(input_ids=tgt, output_attentions=True, use_cache=False).attentions[-1][0]}
        rows = torch.arange(seq.attr_pos_start - 1, seq.attr_pos_end - 1)
        for side, ours in (("source", seq.source_attributions), ("target", seq.target_attributions)):
            if side not in maps:
                assert ours is None
                continue
            ref = maps[side].mean(0)[rows].T  # (keys, steps): last layer, mean over heads
            ours = ours[: ref.shape[0]]
            known = ~ours.isnan()
            assert known.any()
            assert torch.allclose(ours[known], ref[known], atol=1e-5), (name, side)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_value_zeroing_equals_the_naive_per_step_reference(family_models, name):
    """All layers zeroed in one forward with clean block outputs patched in == each layer zeroed alone on each
    prefix (HF's own hidden states), batched with padding, 3 tokens per forward; fused q/k/v layouts included."""
    am = family_models(name)
    sources, targets = _texts(am)
    out = am.attribute(
        sources, targets, method="value_zeroing", attribute_target=True, patterns_per_forward=3, show_progress=False
    )
    sides = ("source", "target") if am.is_encoder_decoder else ("target",)
    for i, (src, tgt) in enumerate(zip(sources, targets)):
        assert out[i].attribution_dims == ("layers",)
        for side in sides:
            ref = naive_value_zeroing(am, src, tgt, side)
            ours = getattr(out[i], f"{side}_attributions")
            assert ours.shape == ref.shape, (name, side)
            known = ~ref.isnan()
            assert ref[known].max() > 0.05, (name, side, "vacuous")
            assert torch.allclose(ours[known], ref[known], atol=1e-3), (name, i, side)


@pytest.mark.parametrize("name", [f for f in FAMILIES if f != "led"])
def test_alti_plus_equals_the_naive_per_layer_reference(family_models, name):
    """ALTI+ from one eager forward, batched with padding == each token's vector measured by zeroing its values
    one layer at a time on each prefix, norms linearised per family, rolled out in float64; each step's source
    and target shares sum to 1."""
    am = family_models(name)
    sources, targets = _texts(am)
    out = am.attribute(sources, targets, method="alti_plus", attribute_target=True, show_progress=False)
    for i, (src, tgt) in enumerate(zip(sources, targets)):
        ref = naive_alti(am, src, tgt)
        total = torch.zeros(out[i].target_attributions.shape[1])
        assert max(r.nan_to_num().max() for r in ref.values()) > 0.1, name  # far above the tolerance
        for side, expected in ref.items():
            ours = getattr(out[i], f"{side}_attributions")
            known = ~expected.isnan()
            assert ours.shape == expected.shape and expected[known].max() > 1e-3, (name, side)
            assert torch.allclose(ours[known], expected[known], atol=1e-5), (name, i, side)
            total += ours.nansum(0)
        assert torch.allclose(total, torch.ones_like(total), atol=1e-5), name


@pytest.mark.parametrize("name", list(FAMILIES))
def test_attnlrp_relevance_is_conserved_up_to_what_the_rules_absorb(family_models, name):
    """Input relevance = the explained logit - the softmaxes' Taylor remainders - biases - position embeddings
    (``tests/lrp_accounting.py``, each measured from its own tensors): every rule conserves the rest. Gemma 2's
    soft-capping (tanh on attention scores and logits) has no AttnLRP rule: off, it conserves too."""
    from inseq_ray.methods import lrp
    from inseq_ray.models.adapter import eager_attention
    from tests.lrp_accounting import relevance_account

    am = family_models(name)
    am.attribute(SOURCES[1], ENC_TARGETS[1] if am.is_encoder_decoder else DEC_TARGETS[1], method="attnlrp",
                 show_progress=False)  # fmt: skip
    ids = am.tokenizer(SOURCES[0], return_tensors="pt")["input_ids"]
    start = am.model.generation_config.decoder_start_token_id
    dec = torch.tensor([[start, *am.tokenizer(text_target=ENC_TARGETS[0])["input_ids"][:3]]]) if start is not None \
        and am.is_encoder_decoder else None  # fmt: skip
    caps = [(m, m.attn_logit_softcapping) for m in am.model.modules() if hasattr(m, "attn_logit_softcapping")]
    config = am.model.config

    def gap() -> tuple[float, dict]:
        with eager_attention(am.model):
            acc = relevance_account(am, lrp.rules_for(am.adapter), ids, dec)
        assert acc["n_softmax"] > 0 and acc["softmax"] != 0, acc  # the attention's share was measured
        return acc["logit"] - acc["tokens"] - acc["softmax"] - acc["biases"] - acc["positions"], acc

    missing, acc = gap()
    if name != "gemma2":
        assert abs(missing) <= 1e-5 * (1 + abs(acc["logit"])), (name, missing, acc)
        return
    assert abs(missing) > 1e-3, acc  # soft-capping: no rule
    final = config.final_logit_softcapping
    try:
        config.final_logit_softcapping = None
        for m, _ in caps:
            m.attn_logit_softcapping = None
        missing, acc = gap()
    finally:
        config.final_logit_softcapping = final
        for m, cap in caps:
            m.attn_logit_softcapping = cap
    assert abs(missing) <= 1e-5 * (1 + abs(acc["logit"])), (missing, acc)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_lime_and_sequential_ig_equal_their_references(family_models, monkeypatch, name):
    """LIME == sklearn's Ridge on the same masks per prefix; sequential IG == Inseq's own op per prefix (the
    batch's shorter, padded row)."""
    from tests.test_lime import _masks_for, _record_masks

    am = family_models(name)
    sources, targets = _texts(am)
    calls = _record_masks(monkeypatch)
    lime = am.attribute(sources, targets, method="lime", n_samples=8, show_progress=False)
    sig = None
    if importlib.util.find_spec("inseq") is not None:
        sig = am.attribute(sources, targets, method="sequential_integrated_gradients", n_steps=2, show_progress=False)
    i, src, tgt = 1, sources[1], targets[1]  # the shorter, padded row of the batch (the references are slow)
    ref = naive_lime(am, src, tgt, _masks_for(calls, am, lime[i]), False, am.tokenizer.unk_token_id)
    for ours, want in zip((lime[i].source_attributions, lime[i].target_attributions), ref):
        if want is not None:
            known = ~want.isnan()
            scale = want[known].abs().max()
            assert scale > 0 and torch.allclose(ours[known], want[known], atol=1e-3 * scale, rtol=1e-3), name
    if sig is not None:
        ref_src, ref_tgt = naive_sequential_ig(am, src, tgt, False, n_steps=2)
        _assert_close(sig[i].source_attributions, ref_src, f"{name} sig seq {i} source")
        _assert_close(sig[i].target_attributions, ref_tgt, f"{name} sig seq {i} target")


@pytest.mark.parametrize("name", ["marian", "pegasus", "fsmt"])
def test_the_inputs_embeds_path_differs_from_ids_for_these_families(family_models, name):
    """Why the engine forwards from ids: ``forward(inputs_embeds=embed(ids))`` is not ``forward(input_ids=ids)``."""
    am = family_models(name)
    src = torch.tensor([[t.id for t in am.attribute(SOURCES[:1], ENC_TARGETS[:1], show_progress=False)[0].source]])
    tgt = torch.tensor([[2, 30, 40, 50]])
    model = am.model
    with torch.no_grad():
        from_ids = model(input_ids=src, decoder_input_ids=tgt, use_cache=False).logits
        from_embeds = model(
            inputs_embeds=model.get_encoder().embed_tokens(src),
            decoder_inputs_embeds=model.get_decoder().embed_tokens(tgt),
            use_cache=False,
        ).logits
    assert (from_ids - from_embeds).abs().max() > 1e-3


def test_a_model_whose_forward_skips_the_embedding_module_is_refused(model_dir):
    """The load-time check fails loudly (naming the class) instead of attributing another forward."""
    model = AutoModelForCausalLM.from_pretrained(model_dir["gpt2"]).eval()
    stray = torch.nn.Embedding(model.config.vocab_size, model.config.n_embd)
    model.get_input_embeddings = lambda: stray  # what the adapter embeds is not what forward uses
    tok = inseq.load_model(model_dir["gpt2"], device="cpu").tokenizer
    with pytest.raises(inseq.ModelConformanceError, match="GPT2LMHeadModel"):
        inseq.AttributionModel(model, tok, "saliency")


def test_conformance_is_measured_and_logged(model_dir, caplog):
    with caplog.at_level("INFO", logger="inseq_ray.models.adapter"):
        am = inseq.load_model(model_dir["marian"], device="cpu")
    assert am.adapter.conformance["mode"] == "split"
    assert am.adapter.conformance["max_abs_logit_diff"] <= am.adapter.conformance["tolerance"]
    assert "MarianMTModel conformance" in caplog.text
