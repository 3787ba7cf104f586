"""Inseq's per-call options of ``attribute()`` that are not about the attribution itself: where the call runs
(``device``), whether its method becomes the model's default (``override_default_attribution``), how tokens are
shown (``clean_special_chars``), the progress bar's style (``pretty_progress``), and the texts without special
tokens (``skip_special_tokens``). Taken from the call's keyword arguments before the settings are resolved."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from inseq_ray.errors import InputError
from inseq_ray.tokens import TokenWithId

if TYPE_CHECKING:
    from inseq_ray.attribution_model import AttributionModel
    from inseq_ray.output import FeatureAttributionSequenceOutput

CALL_OPTIONS: dict[str, Any] = {
    "device": None,
    "override_default_attribution": False,
    "clean_special_chars": False,
    "pretty_progress": True,  # accepted for Inseq's signature: inseq_ray's bar is tqdm's in every style
    "output_step_attributions": False,
}


def pop_call_options(extra: dict) -> dict[str, Any]:
    """The call options in ``extra`` (removed from it), defaults filled in."""
    return {name: extra.pop(name, default) for name, default in CALL_OPTIONS.items()}


def apply_default_method(am: AttributionModel, method: str | None, override: bool) -> None:
    """``override_default_attribution=True``: the call's ``method`` becomes the model's default, as in Inseq."""
    if override and method is not None:
        from inseq_ray.methods import get_method_spec

        get_method_spec(method)
        am.default_method = method


@contextlib.contextmanager
def on_device(am: AttributionModel, device: str | torch.device | None) -> Iterator[None]:
    """The model on ``device`` for the call, moved back after it (also on error); a dispatched model
    (``device_map``) is refused: its modules are placed already."""
    if device is None or torch.device(device) == am.device:
        yield
        return
    if getattr(am.model, "hf_device_map", None):
        raise InputError(f"device={device!r}: this model is spread by a device_map; load it again to move it.")
    before = am.device
    am.model.to(torch.device(device))  # type: ignore[arg-type]  # transformers types .to for its own wrapper
    try:
        yield
    finally:
        am.model.to(before)  # type: ignore[arg-type]


def clean_special_chars(seqs: list[FeatureAttributionSequenceOutput], tokenizer: Any) -> None:
    """Each token's text as the tokenizer writes it (``Ġcat`` -> `` cat``, ``▁the`` -> ``the``), ids kept, in
    place: Inseq's ``clean_special_chars=True``."""
    for seq in seqs:
        seq.source = [TokenWithId(_clean(tokenizer, t.token), t.id) for t in seq.source]
        seq.target = [TokenWithId(_clean(tokenizer, t.token), t.id) for t in seq.target]


def _clean(tokenizer: Any, token: str) -> str:
    return str(tokenizer.convert_tokens_to_string([token]))


def without_special_tokens(tokenizer: Any, inputs: list[str], generated: Any, skip: bool) -> tuple[list[str], Any]:
    """Inseq's ``skip_special_tokens=True``: the tokenizer's special-token strings (``<s>``, ``</s>``, ...) removed
    from the input and the given target texts (which are then encoded without the tokenizer adding any)."""
    if not skip:
        return inputs, generated

    def cleaned(text: str) -> str:
        for token in tokenizer.all_special_tokens:
            text = text.replace(token, "")
        return text

    if generated is not None:
        generated = cleaned(generated) if isinstance(generated, str) else [cleaned(t) for t in generated]
    return [cleaned(t) for t in inputs], generated


def check_prefix_generation(is_encoder_decoder: bool, from_prefix: bool, generated: Any) -> None:
    """``generate_from_target_prefix=True`` continues the given targets of an encoder-decoder; elsewhere it would
    do nothing, so it is refused (Inseq ignores it with a warning)."""
    if not from_prefix:
        return
    if not is_encoder_decoder:
        raise InputError(
            "generate_from_target_prefix applies to encoder-decoder models; for a decoder-only model put the prefix "
            "at the end of input_texts."
        )
    if generated is None:
        raise InputError("generate_from_target_prefix=True continues generated_texts: give the target prefixes.")
