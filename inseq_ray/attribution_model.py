"""``AttributionModel``: the public ``attribute()`` over a Hugging Face model.

The model keeps what is loaded (model, tokenizer, adapter, default method); one call's work lives beside it:
settings in :mod:`inseq_ray.settings`, the call (targets, batches, info) in :mod:`inseq_ray.attribution_call`,
batching and out-of-memory halving in :mod:`inseq_ray.batching`, baselines in :mod:`inseq_ray.baselines`, the
step functions' per-batch inputs in :mod:`inseq_ray.step_inputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from inseq_ray.attribution_call import attribute_batch, attribute_texts, stream_texts
from inseq_ray.baselines import baseline_ids
from inseq_ray.batching import plan_batches
from inseq_ray.errors import InputError, NonFiniteAttributionError
from inseq_ray.methods import get_method_spec
from inseq_ray.model_tokens import TokenHelpers
from inseq_ray.models import loading, placement
from inseq_ray.models.adapter import ModelAdapter
from inseq_ray.models.encoding import (
    EncodedBatch,
    check_length,
    check_texts,
    encode_decoder_only,
    encode_encoder_decoder,
)
from inseq_ray.models.generation import generate_from_prefixes, generate_targets
from inseq_ray.output import FeatureAttributionOutput, FeatureAttributionSequenceOutput
from inseq_ray.settings import AttributeSettings

__all__ = ["AttributeSettings", "AttributionModel", "NonFiniteAttributionError", "load_model", "plan_batches"]


class AttributionModel(TokenHelpers):
    """A loaded model plus its tokenizer and default attribution method (Inseq's token helpers: the mixin)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, method: str | None) -> None:
        if method is not None:
            get_method_spec(method)
        self.model, self.tokenizer, self.default_method = model, tokenizer, method
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self.adapter = ModelAdapter(model)
        self.is_encoder_decoder = self.adapter.is_encoder_decoder
        self.max_length = loading.max_input_length(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    def generate(self, texts: Sequence[str], batch_size: int | None = None, **generation_args: Any) -> list[str]:
        """Batched ``model.generate``; decoder-only results include the prompt, as in Inseq."""
        return generate_targets(self.model, self.tokenizer, list(texts), batch_size, generation_args)[0]

    def attribute(
        self,
        input_texts: str | Sequence[str],
        generated_texts: str | Sequence[str] | None = None,
        *,
        method: str | None = None,
        attribute_target: bool = False,
        step_scores: Sequence[str] = (),
        attributed_fn: str | Any = "probability",
        attr_pos_start: int | None = None,
        attr_pos_end: int | None = None,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        generation_args: dict | None = None,
        include_eos_baseline: bool = False,
        show_progress: bool = True,
        vjp: str = "loop",
        aggregate_hidden_fn: str | None = None,
        normalize: bool = False,
        step_blocks: int | None = None,
        attribution_args: dict | None = None,
        attributed_fn_args: dict | None = None,
        step_scores_args: dict | None = None,
        batch_callback: Callable[[list[int], list[FeatureAttributionSequenceOutput]], None] | None = None,
        record_keys: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> FeatureAttributionOutput:
        """Attribute each generated token of each text; see the README for every argument.

        ``batch_callback(indices, outputs)`` is called after each batch with the batch's input indices and
        their outputs (for progress, or to write results while the next batch is attributed).
        ``record_keys`` (one per input; default: its source and target text) seed each record's random draws.
        """
        options = dict(locals())  # every named argument, by name: the call resolves them once (settings)
        del options["self"], options["kwargs"]
        return attribute_texts(self, options, kwargs)

    def attribute_stream(self, *args: Any, **kwargs: Any) -> Iterator[tuple[int, list[int], list]]:
        """:meth:`attribute`'s arguments; yields each batch as soon as it is attributed: (the batch size it fitted
        in, its input indices, their ``FeatureAttributionSequenceOutput``s). Checked, and targets generated, first."""
        return stream_texts(self, args, kwargs)

    def _targets(
        self, inputs: list[str], generated, batch_size: int | None, generation_args: dict, add=True, prefix=False
    ) -> tuple:
        """(target texts, target ids or None): forced targets as given, else generated ones with their ids
        (``add``: the tokenizer's special tokens added; ``prefix``: the given targets are prefixes to continue)."""
        for i, ids in enumerate(self.tokenizer(inputs, add_special_tokens=add)["input_ids"]):  # before generate()
            check_length(ids, self.max_length, "input_texts", i)
        if generated is None:
            return generate_targets(self.model, self.tokenizer, inputs, batch_size, generation_args, add)
        targets = [generated] if isinstance(generated, str) else list(generated)
        if len(targets) != len(inputs):
            raise InputError(
                f"{len(inputs)} input_texts but {len(targets)} generated_texts: give one target per input."
            )
        check_texts(targets, "generated_texts")
        if prefix:
            start = int(self.decoder_start() or 0)
            return generate_from_prefixes(self.model, self.tokenizer, inputs, targets, start, generation_args, add)
        return targets, None

    def decoder_start(self) -> int | None:
        """The decoder start token of an encoder-decoder (None for decoder-only models)."""
        if not self.is_encoder_decoder:
            return None
        start = self.adapter.family.decoder_start_token_id
        for source in (self.model.generation_config, self.model.config):
            start = start if start is not None else source.decoder_start_token_id
        if start is None:
            raise ValueError(
                f"{self.model_name} names no decoder_start_token_id (generation config or config): give one with "
                "inseq_ray.register_model_config(..., {'decoder_start_token_id': ...}, allow_partial=True)."
            )
        return int(start)

    def _encode(
        self, inputs: list[str], targets: list[str], attr_pos: tuple, ids: list | None, add=True
    ) -> EncodedBatch:
        if self.is_encoder_decoder:
            start = int(self.decoder_start() or 0)  # an encoder-decoder's start: never None (see decoder_start)
            return encode_encoder_decoder(self.tokenizer, inputs, targets, start, self.max_length, attr_pos, ids, add)
        return encode_decoder_only(self.tokenizer, inputs, targets, self.max_length, attr_pos, ids, add)

    def baseline_ids(self, ids: torch.Tensor, include_eos_baseline: bool) -> torch.Tensor:
        """(B, L) ids -> baseline ids: UNK everywhere, EOS kept unless ``include_eos_baseline``."""
        return baseline_ids(self.tokenizer, ids, include_eos_baseline)

    def _attribute_batch(
        self, batch: EncodedBatch, settings: AttributeSettings, idx: list[int], keys: list[str]
    ) -> list[FeatureAttributionSequenceOutput]:
        """One encoded batch -> its sequences (see :func:`inseq_ray.attribution_call.attribute_batch`)."""
        return attribute_batch(self, batch, settings, idx, keys)


def load_model(
    model: str | PreTrainedModel,
    method: str | None = None,
    *,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    **model_kwargs: Any,
) -> AttributionModel:
    """Load a seq2seq or causal LM (hub id, local path, ``toy:<name>`` or model object) for attribution.

    ``dtype="bf16"``/``"fp16"`` runs the model in half precision; attributions accumulate in float32 (float16
    gradients are scaled so that small probabilities do not underflow). ``device_map``/``max_memory`` spread a
    model over several devices (or offload layers) through accelerate, as ``from_pretrained`` takes them;
    ``load_in_8bit``/``load_in_4bit``/``quantization_config`` load bitsandbytes-quantized weights (CUDA only).
    The adapter's conformance check runs here (see :mod:`inseq_ray.models.adapter`).
    """
    if device is not None and device_map is not None:
        raise InputError(
            f"device={device!r} and device_map={device_map!r}: give one (a device_map places every module)."
        )
    model = loading.resolve_model_ref(model)
    hf_model = loading.load_hf_model(
        model,
        device=loading.resolve_device(device),
        dtype=loading.resolve_dtype(dtype),
        trust_remote_code=trust_remote_code,
        **placement.device_map_kwargs(device_map, max_memory),
        **model_kwargs,
    )
    tok = loading.load_tokenizer(model, tokenizer, trust_remote_code)
    return AttributionModel(hf_model, tok, method)
