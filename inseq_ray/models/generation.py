"""Batched generation of the targets to attribute, keeping the exact generated ids (no re-tokenisation)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from inseq_ray.models.placement import input_device


def generate_targets(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int | None,
    generation_args: dict,
    add_special_tokens: bool = True,
) -> tuple[list[str], list[list[int]]]:
    """Generated texts and the token ids to attribute, ``batch_size`` texts per ``generate`` call.

    Encoder-decoder ids are decoder start .. EOS; decoder-only ids are prompt + new tokens (Inseq's
    target is the full text). Decoder-only prompts are left-padded for ``generate`` only; the
    attribution batches are right-padded again from these ids.
    """
    is_enc_dec = bool(model.config.is_encoder_decoder)
    size = batch_size or len(texts)
    out_texts: list[str] = []
    out_ids: list[list[int]] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "right" if is_enc_dec else "left"
    try:
        for s in range(0, len(texts), size):
            enc = tokenizer(
                texts[s : s + size], return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
            )
            enc = enc.to(input_device(model))
            with torch.no_grad():
                ids = model.generate(**enc, pad_token_id=tokenizer.pad_token_id, **generation_args)  # type: ignore[operator]
            decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
            width = enc["attention_mask"].shape[1]
            for k, (row, prompt_len) in enumerate(
                zip(ids.tolist(), enc["attention_mask"].sum(1).tolist(), strict=True)
            ):
                out_ids.append(kept_ids(row, width, prompt_len, tokenizer, is_enc_dec))
                if not is_enc_dec:  # the prompt as given (a chat template's special tokens kept), then the new text
                    shown = str(tokenizer.decode(row[width - prompt_len : width], skip_special_tokens=True))
                    full = decoded[k]
                    decoded[k] = texts[s + k] + full[len(shown) :] if full.startswith(shown) else full
            out_texts += decoded
    finally:
        tokenizer.padding_side = side
    return out_texts, out_ids


def generate_from_prefixes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    prefixes: list[str],
    decoder_start: int,
    generation_args: dict,
    add_special_tokens: bool = True,
) -> tuple[list[str], list[list[int]]]:
    """Encoder-decoder generation continuing given target prefixes (Inseq's ``generate_from_target_prefix``): each
    text's decoder starts from ``[decoder_start] + prefix ids`` (the prefix encoded without special tokens); one
    ``generate`` per text, since prefixes differ in length. Returns the texts and the ids to attribute."""
    out_texts: list[str] = []
    out_ids: list[list[int]] = []
    device = input_device(model)
    for text, prefix in zip(texts, prefixes, strict=True):
        enc = tokenizer([text], return_tensors="pt", add_special_tokens=add_special_tokens).to(device)
        start = [decoder_start, *tokenizer(text_target=prefix, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            ids = model.generate(  # type: ignore[operator]
                **enc, decoder_input_ids=torch.tensor([start], device=device), pad_token_id=tokenizer.pad_token_id,
                **generation_args,
            )  # fmt: skip
        row = kept_ids(ids[0].tolist(), 0, 0, tokenizer, True)
        out_ids.append(row)
        out_texts.append(str(tokenizer.decode(row, skip_special_tokens=True)))
    return out_texts, out_ids


def kept_ids(
    row: list[int], prompt_width: int, prompt_len: int, tokenizer: PreTrainedTokenizerBase, is_enc_dec: bool
) -> list[int]:
    """One generated row -> the ids to attribute: enc-dec keeps start..EOS; decoder-only keeps prompt + new tokens."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if is_enc_dec:
        kept = [row[0]]
        for i in row[1:]:
            if i == pad and i != eos:
                break
            kept.append(i)
            if i == eos:
                break
        return kept
    new = []
    for i in row[prompt_width:]:
        if i in (eos, pad):
            break
        new.append(i)
    return row[prompt_width - prompt_len : prompt_width] + new
