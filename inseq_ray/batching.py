"""Batches of one ``attribute()`` call: length-sorted under a row count and a token budget, and halved on the
way down when the device runs out of memory (a record's numbers never depend on its batch: see randomness)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from inseq_ray.errors import InputError, Reason

AttributedBatch = tuple[int, list[int], list]  # (batch size it succeeded in, input indices, their outputs)
Fitted = list[AttributedBatch]


def plan_batches(lengths: list[int], batch_size: int, max_row_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches, shortest first: at most ``batch_size`` rows and, with a budget, at most
    ``max_row_tokens`` padded tokens (rows x the longest row). A row over the budget goes alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        too_many = len(current) >= batch_size
        too_big = max_row_tokens is not None and (len(current) + 1) * lengths[i] > max_row_tokens
        if current and (too_many or too_big):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def token_lengths(tokenizer, is_encoder_decoder: bool, inputs: list[str], targets: list[str], target_ids) -> list[int]:
    """Per input: the tokens its forward carries (encoder-decoder: source + target; decoder-only: the text)."""
    if target_ids is not None:
        tgt = [len(t) for t in target_ids]
    else:
        encoded = tokenizer(text_target=targets) if is_encoder_decoder else tokenizer(targets)
        tgt = [len(t) for t in encoded["input_ids"]]
    if not is_encoder_decoder:
        return tgt
    return [len(s) + t for s, t in zip(tokenizer(inputs)["input_ids"], tgt, strict=True)]


def fit(idx: list[int], attribute: Callable[[list[int]], list]) -> Fitted:
    """``attribute(idx)`` at once, or on halves recursively when the device runs out of memory; one input that
    does not fit alone raises an ``oom`` InputError naming it."""
    try:
        return [(len(idx), idx, attribute(idx))]
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(idx) == 1:
            raise InputError(
                f"input_texts[{idx[0]}] does not fit in device memory even alone: shorten it, use a smaller "
                "method budget (n_steps, n_samples, internal_batch_size) or a device with more memory.",
                Reason.OOM,
            ) from None
    half = len(idx) // 2
    return [*fit(idx[:half], attribute), *fit(idx[half:], attribute)]
