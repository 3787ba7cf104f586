"""One ``attribute()`` call: settings -> targets -> length-sorted batches (halved on out-of-memory) -> each batch
through its method -> per-sequence outputs and ``info``. :class:`AttributionModel` keeps the model; this module
keeps the call."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from inseq_ray.baselines import batch_baselines
from inseq_ray.batching import AttributedBatch, fit, plan_batches, token_lengths
from inseq_ray.call_options import (
    apply_default_method,
    check_prefix_generation,
    clean_special_chars,
    on_device,
    pop_call_options,
    without_special_tokens,
)
from inseq_ray.engine import MethodContext, MethodResult
from inseq_ray.errors import InputError
from inseq_ray.models.encoding import EncodedBatch, check_texts
from inseq_ray.output import FeatureAttributionOutput, FeatureAttributionSequenceOutput
from inseq_ray.randomness import content_keys
from inseq_ray.sequences import build_sequences, normalize_on_device, reduce_hidden_on_device
from inseq_ray.settings import AttributeSettings, ModelFacts, resolve_settings
from inseq_ray.step_inputs import with_step_inputs
from inseq_ray.step_scores import step_function_name
from inseq_ray.tokens import TokenWithId

if TYPE_CHECKING:
    from inseq_ray.attribution_model import AttributionModel


@dataclass
class PreparedCall:
    """One ``attribute()`` call resolved before any attribution: its settings, texts and targets (with their ids
    when generated here), each record's key for its random draws, and the batch plan (input indices)."""

    settings: AttributeSettings
    inputs: list[str]
    targets: list[str]
    target_ids: list | None
    keys: list[str]
    batches: list[list[int]]
    generation_args: dict
    attr_pos: tuple[int | None, int | None]
    add_special_tokens: bool = True  # off with Inseq's skip_special_tokens=True


def prepare_call(am: AttributionModel, options: Mapping[str, Any], extra: dict) -> PreparedCall:
    """Check and resolve one call (targets generated here when not given) and plan its batches."""
    texts = options["input_texts"]
    inputs = [texts] if isinstance(texts, str) else list(texts)
    check_texts(inputs, "input_texts")
    facts = ModelFacts(am.is_encoder_decoder, am.device.type == "cuda", am.default_method)
    extra = dict(extra)
    from_prefix = bool(extra.pop("generate_from_target_prefix", False))
    check_prefix_generation(am.is_encoder_decoder, from_prefix, options["generated_texts"])
    settings = resolve_settings(facts, len(inputs), options, extra)
    generation_args = dict(options["generation_args"] or {})
    skip = bool(extra.get("skip_special_tokens", False))  # also the contrast inputs' (see contrast.ContrastSpec)
    inputs, given = without_special_tokens(am.tokenizer, inputs, options["generated_texts"], skip)
    targets, target_ids = am._targets(inputs, given, options["batch_size"], generation_args, not skip, from_prefix)
    keys = _record_keys(options["record_keys"], inputs, targets)
    lengths = token_lengths(am.tokenizer, am.is_encoder_decoder, inputs, targets, target_ids)
    batches = plan_batches(lengths, options["batch_size"] or len(inputs), settings.rows_per_batch(
        options["max_batch_tokens"]))  # fmt: skip
    attr_pos = (options["attr_pos_start"], options["attr_pos_end"])
    return PreparedCall(settings, inputs, targets, target_ids, keys, batches, generation_args, attr_pos, not skip)


def stream_call(am: AttributionModel, call: PreparedCall, show_progress: bool) -> Iterator[AttributedBatch]:
    """The call's batches, each as soon as it is attributed: (batch size it fitted in, input indices, outputs);
    a batch halved on out-of-memory comes as its halves."""
    progress = _progress(len(call.inputs), show_progress)
    for idx in call.batches:

        def attribute(group: list[int]) -> list[FeatureAttributionSequenceOutput]:
            ids = None if call.target_ids is None else [call.target_ids[i] for i in group]
            texts = [call.inputs[i] for i in group], [call.targets[i] for i in group]
            batch = am._encode(*texts, call.attr_pos, ids, call.add_special_tokens)
            return am._attribute_batch(batch, call.settings, group, [call.keys[i] for i in group])

        yield from fit(idx, attribute)
        progress.update(len(idx))
    progress.close()


def stream_texts(am: AttributionModel, args: tuple, kwargs: dict) -> Iterator[AttributedBatch]:
    """``attribute(*args, **kwargs)`` as a stream of attributed batches (see :func:`stream_call`); the call is
    checked and prepared (targets generated) before this returns."""
    bound = inspect.signature(type(am).attribute).bind(am, *args, **kwargs)
    bound.apply_defaults()
    options = dict(bound.arguments)
    del options["self"]
    extra = dict(options.pop("kwargs"))
    opts = pop_call_options(extra)
    if opts["device"] is not None or opts["clean_special_chars"] or opts["output_step_attributions"]:
        raise InputError(
            "device=, clean_special_chars= and output_step_attributions= are attribute()'s (a stream yields each "
            "batch's sequences as they come)."
        )
    apply_default_method(am, options["method"], opts["override_default_attribution"])
    return stream_call(am, prepare_call(am, options, extra), bool(options["show_progress"]))


def attribute_texts(am: AttributionModel, options: Mapping[str, Any], extra: dict) -> FeatureAttributionOutput:
    """``attribute()`` with its arguments by name (``options``) and its extra keyword arguments (``extra``; Inseq's
    call options among them: :mod:`inseq_ray.call_options`)."""
    extra = dict(extra)
    opts = pop_call_options(extra)
    apply_default_method(am, options["method"], opts["override_default_attribution"])
    with on_device(am, opts["device"]):
        out = _attribute_texts(am, options, extra)
    if opts["clean_special_chars"]:
        clean_special_chars(out.sequence_attributions, am.tokenizer)
    if opts["output_step_attributions"]:
        from inseq_ray.step_outputs import step_outputs

        out.step_attributions = step_outputs(out.sequence_attributions)
    return out


def _attribute_texts(am: AttributionModel, options: Mapping[str, Any], extra: dict) -> FeatureAttributionOutput:
    start = time.perf_counter()
    call = prepare_call(am, options, extra)
    outputs: dict[int, FeatureAttributionSequenceOutput] = {}
    fitted: dict[int, int] = {}  # input index -> size of the batch it was attributed in
    for size, group, seqs in stream_call(am, call, options["show_progress"]):
        outputs.update(zip(group, seqs, strict=True))
        fitted.update(dict.fromkeys(group, size))
        if options["batch_callback"] is not None:
            options["batch_callback"](group, seqs)
    texts = (call.inputs, call.targets, call.generation_args)
    info = call_info(am, options, call.settings, texts, [fitted[i] for i in range(len(call.inputs))])
    info["exec_time"] = time.perf_counter() - start
    return FeatureAttributionOutput([outputs[i] for i in range(len(call.inputs))], info)


def _record_keys(given, inputs: list[str], targets: list[str]) -> list[str]:
    keys = list(given) if given is not None else content_keys(inputs, targets)
    if len(keys) != len(inputs):
        raise InputError(f"{len(inputs)} input_texts but {len(keys)} record_keys: give one key per input.")
    return keys


def attribute_batch(
    am: AttributionModel, batch: EncodedBatch, settings: AttributeSettings, idx: list[int], keys: list[str]
) -> list[FeatureAttributionSequenceOutput]:
    """One encoded batch through the method and the step scores -> its sequences (input indices ``idx``)."""
    batch = batch.to(am.device)
    attributed = ("source", "target") if settings.attribute_target else ("source",)
    tok = am.tokenizer
    ctx = MethodContext.for_batch(
        am.adapter, batch, attributed if am.is_encoder_decoder else ("target",), settings.fn, settings.fn_kw,
        batch_baselines(tok, batch, settings.include_eos_baseline), vjp=settings.vjp, blocks=settings.step_blocks,
        row_keys=keys, token_ids={"unk": tok.unk_token_id, "pad": tok.pad_token_id},
    )  # fmt: skip
    ctx, labels = with_step_inputs(ctx, tok, settings, idx, am.decoder_start())
    result: MethodResult = settings.method.fn(ctx, **settings.method_call_kw)
    scores = {name: ctx.step_values(f, settings.scores_kw.get(name, {})) for name, f in settings.score_fns.items()}
    scores.update(result.step_scores)
    if settings.aggregate_hidden_fn is not None and result.dims == ("hidden",):
        result = reduce_hidden_on_device(result, settings.aggregate_hidden_fn)
        if settings.normalize:
            result = normalize_on_device(result, batch)
    seqs = build_sequences(batch, result, scores, idx, ctx.plan.valid)
    for seq, relabel in zip(seqs, labels or [], strict=False):
        seq.target = [TokenWithId(relabel[p], t.id) if p in relabel else t for p, t in enumerate(seq.target)]
    return seqs


def call_info(am: AttributionModel, options: Mapping[str, Any], settings: AttributeSettings, texts, sizes) -> dict:
    """The ``info`` of the output (Inseq's keys plus ours: batch sizes, device, dtype)."""
    inputs, targets, generation_args = texts
    return {
        "model_name": am.model_name,
        "model_class": type(am.model).__name__,
        "tokenizer_name": am.tokenizer.name_or_path,
        "tokenizer_class": type(am.tokenizer).__name__,
        "attribution_method": settings.method_id,
        "attributed_fn": step_function_name(options["attributed_fn"]),
        "attribution_args": settings.method_kw,
        "attributed_fn_args": settings.fn_kw,
        "step_scores": list(options["step_scores"]),
        "step_scores_args": settings.scores_kw,
        "attribute_target": settings.attribute_target,
        "include_eos_baseline": options["include_eos_baseline"],
        "constrained_decoding": options["generated_texts"] is not None,
        "generation_args": generation_args,
        "input_texts": inputs,
        "generated_texts": targets,
        "attr_pos_start": options["attr_pos_start"],
        "attr_pos_end": options["attr_pos_end"],
        "batch_size": options["batch_size"],
        "max_batch_tokens": options["max_batch_tokens"],
        "batch_sizes": sizes,  # the batch size each input succeeded in
        "device": str(am.device),
        "dtype": str(am.adapter.dtype).removeprefix("torch."),
    }


class _NoProgress:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, show: bool):
    if not show:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="Attributing", unit="seq")
