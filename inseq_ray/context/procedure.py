"""The context-reliance procedure over a batch of examples: outputs (generated where not given), CTI in one
attribution call per metric, CCI in one call per attribution setting over every selected token of every example.

Positions follow Inseq 0.7.1 (``inseq/commands/attribute_context``) with one correction: leading special tokens
the tokenizer adds (BOS, an encoder-decoder's decoder start) are skipped when context scores are sliced, where
Inseq counts them as context (see the README's Differences table).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from inseq_ray.context.args import ContextArgs
from inseq_ray.context.output import AttributeContextOutput, CCIOutput
from inseq_ray.context.texts import Selected, concat_with_sep, format_template, select, split_generated
from inseq_ray.models.generation import generate_targets

if TYPE_CHECKING:
    from inseq_ray.attribution_model import AttributionModel
    from inseq_ray.output import FeatureAttributionSequenceOutput


@dataclass
class Example:
    """One example's texts and tokens, as both steps need them (special tokens filtered as Inseq does)."""

    args: ContextArgs
    input_full: str  # the input with its context
    output_context: str | None
    output_current: str
    output_full: str  # the output with its context (decoder-only: after the input, as the model reads it)
    contextless_input: str  # CTI's input without context (decoder-only: with the separator)
    contextless_output: str  # CTI's target without context (decoder-only: prompt included)
    tokens: dict[str, list[str]]  # input_context, output_context, output_current, input_full, output_full


def attribute_context(
    model: AttributionModel, examples: ContextArgs | Sequence[ContextArgs], batch_size: int | None = None
) -> AttributeContextOutput | list[AttributeContextOutput]:
    """PECoRe for one example (-> one output) or a batch (-> one output each, in order)."""
    single = isinstance(examples, ContextArgs)
    items: list[ContextArgs] = [examples] if isinstance(examples, ContextArgs) else list(examples)
    outputs = prepare_outputs(model, items)
    prepared = [_example(model, a, ctx, cur) for a, (ctx, cur) in zip(items, outputs, strict=True)]
    results = [_start(ex, *cti) for ex, cti in zip(prepared, _cti(model, prepared, batch_size), strict=True)]
    chosen = [
        (i, s)
        for i, out in enumerate(results)
        for s in select(out.output_current_tokens or [], out.cti_scores or [],
                        prepared[i].args.context_sensitivity_std_threshold, prepared[i].args.context_sensitivity_topk)[0]
    ]  # fmt: skip
    cues = [_cue(model, prepared[i], s, results[i].output_current_tokens or []) for i, s in chosen]
    for (i, _), cci in zip(chosen, _cci(model, cues, batch_size), strict=True):
        results[i].cci_scores.append(cci)
    return results[0] if single else results


def _start(ex: Example, tokens: list[str], scores: list[float]) -> AttributeContextOutput:
    return AttributeContextOutput(
        input_context=ex.args.input_context_text,
        input_context_tokens=ex.tokens.get("input_context"),
        output_context=ex.output_context,
        output_context_tokens=ex.tokens.get("output_context"),
        output_current=ex.output_current,
        output_current_tokens=tokens,
        cti_scores=scores,
        info=ex.args.to_dict() if ex.args.add_output_info else None,
    )


# ---- tokens and texts ---------------------------------------------------------------------------------------------
def tokens_of(am: AttributionModel, text: str, keep: Sequence[str], target: bool = False) -> list[str]:
    """The tokens of ``text`` (as a target on an encoder-decoder), special tokens dropped unless in ``keep``."""
    tok = am.tokenizer
    ids = tok(text_target=text)["input_ids"] if target and am.is_encoder_decoder else tok(text)["input_ids"]
    specials = set(tok.all_special_tokens)
    return [t for t in tok.convert_ids_to_tokens(ids) if t not in specials or t in keep]


def string_of(am: AttributionModel, tokens: list[str]) -> str:
    return am.tokenizer.convert_tokens_to_string(tokens)


def _example(am: AttributionModel, a: ContextArgs, context: str | None, current: str) -> Example:
    keep, sep = a.special_tokens_to_keep, a.decoder_input_output_separator
    input_full = format_template(str(a.input_template), a.input_current_text, a.input_context_text)
    output_full = format_template(str(a.output_template), current, context)
    if not am.is_encoder_decoder:
        output_full = concat_with_sep(input_full, output_full, sep)
    contextless_input = str(a.contextless_input_current_text).format(current=a.input_current_text)
    contextless_output = str(a.contextless_output_current_text).format(current=current)
    if not am.is_encoder_decoder:
        contextless_input = concat_with_sep(contextless_input, "", sep)
        contextless_output = contextless_input + contextless_output
    tokens = {
        "output_current": tokens_of(am, current, keep, target=True),
        "input_full": tokens_of(am, input_full, keep),
        "output_full": tokens_of(am, output_full, keep, target=True),
    }
    if a.input_context_text is not None:
        tokens["input_context"] = tokens_of(am, a.input_context_text, keep)
    if context is not None:
        tokens["output_context"] = tokens_of(am, context, keep, target=True)
    return Example(a, input_full, context, current, output_full, contextless_input, contextless_output, tokens)


# ---- outputs (Inseq's settings 1-6, without prompts) ----------------------------------------------------------------
def prepare_outputs(am: AttributionModel, items: list[ContextArgs]) -> list[tuple[str | None, str]]:
    """(output context, output current text) per example: as given, else generated (batched per generation
    arguments) and split from the context where the template asks for one."""
    plans = [_generation_plan(am, a) for a in items]
    texts = _generate(am, [(i, p) for i, p in enumerate(plans) if p is not None])
    out: list[tuple[str | None, str]] = []
    for i, a in enumerate(items):
        if plans[i] is None:
            out.append((a.output_context_text, str(a.output_current_text)))
            continue
        generated = _strip_template(texts[i], str(a.output_template), a.output_context_text, am.is_encoder_decoder)
        if a.has_output_context and a.output_context_text is None:  # settings 5, 6
            context, current = split_generated(generated, str(a.output_template))
            out.append((context, a.output_current_text or current))
        else:  # settings 3, 4
            out.append((a.output_context_text, generated.strip()))
    return out


Plan = tuple[str, str | None, dict, tuple[str, ...]]  # model input, decoder prefix, generation args, tokens kept


def _generation_plan(am: AttributionModel, a: ContextArgs) -> Plan | None:
    """(model input, decoder prefix or None, generation arguments, special tokens kept), or None when nothing is
    generated."""
    given_context = a.output_context_text is not None
    if given_context == a.has_output_context and a.output_current_text is not None:
        return None
    sep, keep = a.decoder_input_output_separator, tuple(a.special_tokens_to_keep)
    input_full = format_template(str(a.input_template), a.input_current_text, a.input_context_text)
    if given_context and a.output_current_text is None:
        prefix = str(a.output_template).split("{current}")[0].strip().format(context=a.output_context_text)
        if am.is_encoder_decoder:
            return input_full, prefix, dict(a.generation_kwargs), keep
        return concat_with_sep(input_full, prefix, sep), None, dict(a.generation_kwargs), keep
    model_input = input_full if am.is_encoder_decoder else concat_with_sep(input_full, "", sep)
    return model_input, None, dict(a.generation_kwargs), keep


def _generate(am: AttributionModel, plans: list[tuple[int, Plan]]) -> dict[int, str]:
    """Generated continuations (special tokens dropped unless kept), one batched ``generate`` per (generation
    arguments, decoder prefix, kept tokens)."""
    out: dict[int, str] = {}
    specials = set(am.tokenizer.all_special_tokens)
    for group in _grouped(plans, lambda p: (json.dumps(p[1][2], sort_keys=True), p[1][1], p[1][3])).values():
        prompts, (_, prefix, kwargs, keep) = [p[0] for _, p in group], group[0][1]
        if prefix is not None:  # an encoder-decoder continuing a forced output context
            kwargs = {**kwargs, "decoder_input_ids": _decoder_prefix(am, prefix, len(prompts))}
        _, ids = generate_targets(am.model, am.tokenizer, prompts, None, kwargs)
        for (i, (prompt, *_)), row in zip(group, ids, strict=True):
            start = 0 if am.is_encoder_decoder else len(am.tokenizer(prompt)["input_ids"])
            tokens = [t for t in am.tokenizer.convert_ids_to_tokens(row[start:]) if t not in specials or t in keep]
            out[i] = string_of(am, tokens)
    return out


def _decoder_prefix(am: AttributionModel, prefix: str, rows: int) -> torch.Tensor:
    """(rows, 1 + P) decoder inputs: the decoder start, then ``prefix``'s target tokens (no EOS)."""
    ids = am.tokenizer(text_target=prefix, add_special_tokens=False)["input_ids"]
    start = am.decoder_start()
    return torch.tensor([[start, *ids]] * rows, device=am.device)


def _strip_template(generated: str, template: str, context: str | None, is_enc_dec: bool) -> str:
    """The generation without the template's prefix and suffix around the current text (checked, as Inseq)."""
    head, suffix = template.split("{current}")
    prefix = head.split("{context}")[0] if "{context}" in head else head
    if context is not None and not is_enc_dec:
        prefix = ""  # the prompt already holds the context and its prefix
    if context is not None and is_enc_dec:
        prefix = head.strip().format(context=context)
    if prefix and not generated.startswith(prefix):
        raise ValueError(
            f"output_template {template!r} starts with {prefix!r} but the generation {generated!r} does not"
        )
    generated = generated[len(prefix) :] if prefix else generated
    if suffix and not generated.endswith(suffix):
        raise ValueError(f"output_template {template!r} ends with {suffix!r} but the generation {generated!r} does not")
    return generated[: -len(suffix)] if suffix else generated


def _grouped(items: list, key: Callable) -> dict[Any, list]:
    groups: dict[Any, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


# ---- CTI: context-sensitive token identification --------------------------------------------------------------------
def _cti(am: AttributionModel, examples: list[Example], batch_size: int | None) -> list[tuple[list[str], list[float]]]:
    """Per example, the output current tokens and their context-sensitivity scores: the metric (a contrastive step
    function) of the contextless forward against the contextual one, one ``dummy`` attribution per metric."""
    out: dict[int, tuple[list[str], list[float]]] = {}
    for metric, group in _grouped(list(enumerate(examples)), lambda e: e[1].args.context_sensitivity_metric).items():
        exs = [ex for _, ex in group]
        contrast: dict[str, Any] = {"contrast_targets": [ex.output_full for ex in exs]}
        if am.is_encoder_decoder:
            contrast["contrast_sources"] = [ex.input_full for ex in exs]
        seqs = am.attribute(
            [ex.contextless_input.rstrip(" ") for ex in exs],
            [ex.contextless_output for ex in exs],
            method="dummy",
            attribute_target=am.is_encoder_decoder,
            step_scores=[metric],
            show_progress=False,
            batch_size=batch_size,
            **contrast,
        ).sequence_attributions
        for (i, ex), seq in zip(group, seqs, strict=True):
            out[i] = _cti_of(am, ex, seq, metric)
    return [out[i] for i in range(len(examples))]


def _cti_of(am: AttributionModel, ex: Example, seq: FeatureAttributionSequenceOutput, metric: str) -> tuple:
    """The current text's steps of one CTI output: after the contextless output prefix, the EOS step dropped."""
    prefix = str(ex.args.contextless_output_current_text).split("{current}")[0]
    start = len(tokens_of(am, prefix, ex.args.special_tokens_to_keep, target=True))
    scores = seq.step_scores[metric][start:].tolist()
    tokens = [t.token for t in seq.target][start + seq.attr_pos_start :]
    if am.is_encoder_decoder:
        scores, tokens = scores[:-1], tokens[:-1]
    return tokens, scores


# ---- CCI: contextual cues imputation --------------------------------------------------------------------------------
@dataclass
class Cue:
    """One selected token of one example, ready to attribute."""

    example: Example
    selected: Selected
    contextual_output: str
    contextless_output: str | None = None
    contrast_token: str | None = None
    force: bool = False


def _cci(am: AttributionModel, cues: list[Cue], batch_size: int | None) -> list[CCIOutput]:
    """One CCIOutput per cue, attributed in one call per attribution setting."""
    out: dict[int, CCIOutput] = {}
    for group in _grouped(list(enumerate(cues)), _setting).values():
        seqs = _attribute_cues(am, [c for _, c in group], batch_size)
        for (k, cue), seq in zip(group, seqs, strict=True):
            inputs, outputs = context_scores(am, cue.example, seq)
            idx, score, token = cue.selected
            out[k] = CCIOutput(idx, token, score, cue.contextual_output, cue.contrast_token, cue.contextless_output,
                               inputs, outputs, step_total(seq))  # fmt: skip
    return [out[k] for k in range(len(cues))]


def _setting(item: tuple[int, Cue]) -> tuple:
    a = item[1].example.args
    return a.attribution_method, a.attributed_fn, json.dumps(a.attribution_kwargs, sort_keys=True), \
        a.normalize_attributions, a.rescale_attributions, a.has_output_context, item[1].force, item[1].contextless_output is None  # fmt: skip


def _cue(am: AttributionModel, ex: Example, selected: Selected, current: list[str]) -> Cue:
    """The contextual output up to the selected token (and its contextless counterpart for a contrastive
    attributed function: the contextless input, the contextual prefix and the model's own next token).
    ``current``: the output current tokens as CTI scored them (in context): positions count in those, not in the
    current text tokenised alone as Inseq counts them (they differ when the text starts with a lone space token)."""
    from inseq_ray.step_scores import get_step_function, is_contrastive

    idx = selected[0]
    offset = len(ex.tokens["output_full"]) - len(current)
    contextual = string_of(am, ex.tokens["output_full"][: offset + idx + 1]).lstrip(" ")
    if not contextual:
        raise ValueError(f"the output up to context-sensitive token {idx} is empty: nothing to attribute")
    cue = Cue(ex, selected, contextual)
    fn = ex.args.attributed_fn
    if fn is not None and is_contrastive(get_step_function(fn)):
        cue.contextless_output = _contextless(am, ex, idx, current)
        mine = tokens_of(am, contextual, (), target=True) or [""]
        theirs = tokens_of(am, cue.contextless_output, (), target=True) or [""]
        cue.contrast_token = theirs[-1]  # the last content token (Inseq: -1, or -2 before an encoder-decoder's EOS)
        cue.force = fn == "kl_divergence" or mine[-1] == theirs[-1]
    return cue


def _contextless(am: AttributionModel, ex: Example, idx: int, current: list[str]) -> str:
    """What the model says next without context after the contextual prefix of token ``idx`` (the next token of
    ``contextless_output_next_tokens`` when given): the contrast of a contrastive attributed function."""
    a = ex.args
    prefix = string_of(am, current[:idx]).lstrip(" ")  # the text before the token (in context it may start spaced)
    given = a.contextless_output_next_tokens
    if given:
        next_token = tokens_of(am, given[idx] if idx < len(given) else given[-1], (), target=True)[0]
        return string_of(am, [*current[:idx], next_token]).lstrip(" ")
    contextless_prefix = str(a.contextless_output_current_text).split("{current}")[0]
    keep = tuple(a.special_tokens_to_keep)
    if am.is_encoder_decoder:
        kwargs = {**a.generation_kwargs, "max_new_tokens": 2}
        plan: Plan = (ex.contextless_input, prefix, kwargs, keep)
        return _generate(am, [(0, plan)])[0]
    prompt = concat_with_sep(ex.contextless_input, contextless_prefix, a.decoder_input_output_separator)
    prompt = concat_with_sep(prompt, prefix, a.decoder_input_output_separator)
    generated = _generate(am, [(0, (prompt, None, {**a.generation_kwargs, "max_new_tokens": 1}, keep))])[0]
    return string_of(am, tokens_of(am, prompt, keep)) + generated


def _attribute_cues(am: AttributionModel, cues: list[Cue], batch_size: int | None) -> list:
    """One attribution over ``cues`` (one setting): each row attributes only its selected token's step (the last
    before an encoder-decoder's EOS), aggregated as Inseq's command does (default aggregator)."""
    a = cues[0].example.args
    kwargs: dict[str, Any] = {}
    if cues[0].contextless_output is not None:
        kwargs["contrast_targets"] = [c.contextless_output for c in cues]
        if am.is_encoder_decoder:
            kwargs["contrast_sources"] = [c.example.contextless_input for c in cues]
        kwargs["contrast_force_inputs"] = cues[0].force
    out = am.attribute(
        [c.example.input_full.lstrip(" ") for c in cues],  # Inseq: its filtered tokens as text (drops UNKs)
        [c.contextual_output for c in cues],
        method=a.attribution_method,
        attributed_fn=a.attributed_fn or "probability",
        attribute_target=am.is_encoder_decoder and a.has_output_context,
        attr_pos_start=-2 if am.is_encoder_decoder else -1,
        attr_pos_end=-1 if am.is_encoder_decoder else None,
        show_progress=False,
        batch_size=batch_size,
        **kwargs,
        **a.attribution_kwargs,
    )
    return out.aggregate(normalize=a.normalize_attributions, rescale=a.rescale_attributions).sequence_attributions


def context_scores(
    am: AttributionModel, ex: Example, seq: FeatureAttributionSequenceOutput
) -> tuple[list[float] | None, list[float] | None]:
    """The attributed step's scores of the input-context and output-context tokens (None without that context)."""
    a, keep = ex.args, ex.args.special_tokens_to_keep
    inputs = outputs = None
    if a.has_input_context:
        side, tokens = (seq.source_attributions, seq.source) if am.is_encoder_decoder else \
            (seq.target_attributions, seq.target)  # fmt: skip
        prefix = str(a.input_template).partition("{context}")[0]
        prefix = prefix.format(current=a.input_current_text) if "{current}" in prefix else prefix
        start = _leading_specials(am, tokens, keep) + len(tokens_of(am, prefix, keep))
        inputs = _column(side, start, len(ex.tokens["input_context"]))
    if a.has_output_context:
        prefix = str(a.output_template).partition("{context}")[0]
        if not am.is_encoder_decoder and prefix:
            prefix = a.decoder_input_output_separator + prefix
        start = _leading_specials(am, seq.target, keep) + len(tokens_of(am, prefix, keep, target=True))
        if not am.is_encoder_decoder:
            start += len(ex.tokens["input_full"])
        outputs = _column(seq.target_attributions, start, len(ex.tokens.get("output_context", [])))
    return inputs, outputs


def step_total(seq: FeatureAttributionSequenceOutput) -> float:
    """Sum of |scores| of the attributed step over every attributed token (source and target)."""
    sides = [m[:, 0] for m in (seq.source_attributions, seq.target_attributions) if m is not None]
    return float(sum(float(m.abs().nansum()) for m in sides))


def _leading_specials(am: AttributionModel, tokens: list, keep: Sequence[str]) -> int:
    """How many special tokens the tokenizer put before the text (BOS, a decoder start): not context."""
    specials = set(am.tokenizer.all_special_tokens) - set(keep)
    n = 0
    while n < len(tokens) and tokens[n].token in specials:
        n += 1
    return n


def _column(scores, start: int, n: int) -> list[float]:
    """The attributed step's scores (column 0 of a [tokens, steps] matrix) of tokens start .. start + n."""
    if scores is None:
        raise ValueError("the attribution method gave no scores for the context side")
    return [float(v) for v in scores[start : start + n, 0].tolist()]
