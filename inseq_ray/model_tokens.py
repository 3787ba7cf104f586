"""Inseq's token helpers and names on a loaded model (``model.convert_ids_to_tokens``, ``model.bos_token``,
``model.model_name``, ...), with Inseq 0.7.1's semantics: a mixin of
:class:`inseq_ray.attribution_model.AttributionModel`, reading only its ``model`` and ``tokenizer``. The BOS of
an encoder-decoder is its decoder start token, as in Inseq."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class TokenHelpers:
    """Token conversions and special tokens of ``self.tokenizer`` / ``self.model`` (Inseq's names)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    default_attributed_fn_id = "probability"

    @property
    def bos_token_id(self) -> int | None:
        start = getattr(self.model.config, "decoder_start_token_id", None)
        return start if start is not None else self.model.config.bos_token_id

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_token_id is None else self._token(self.bos_token_id)

    @property
    def eos_token_id(self) -> int | None:
        eos = getattr(self.model.config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, list) else eos
        return eos if eos is not None else self.tokenizer.pad_token_id

    @property
    def pad_token(self) -> str | None:
        return self.tokenizer.pad_token

    @property
    def special_tokens(self) -> list[str]:
        return list(self.tokenizer.all_special_tokens)

    @property
    def special_tokens_ids(self) -> list[int]:
        return list(self.tokenizer.all_special_ids)

    @property
    def tokenizer_name(self) -> str | None:
        return None  # Inseq's: the name given to load_model(tokenizer=...), which this loader takes from the model

    @property
    def device_map(self) -> dict | None:
        return getattr(self.model, "hf_device_map", None)

    @property
    def model_name(self) -> str:
        return str(self.model.config.name_or_path or type(self.model).__name__)

    @property
    def info(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_class": type(self.model).__name__,
            "tokenizer_name": self.tokenizer_name,
            "tokenizer_class": type(self.tokenizer).__name__,
        }

    def _token(self, token_id: int) -> str:
        token: Any = self.tokenizer.convert_ids_to_tokens(int(token_id))
        return token.decode("utf-8") if isinstance(token, bytes) else str(token)

    def _tokens(self, ids, skip_special_tokens: bool | None, decode_tokens: bool) -> list[str]:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if decode_tokens:
            special = set(self.tokenizer.all_special_ids) if skip_special_tokens else set()
            return [str(self.tokenizer.decode([i])) for i in ids if i not in special]
        tokens: Any = self.tokenizer.convert_ids_to_tokens(ids, skip_special_tokens=bool(skip_special_tokens))
        return [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in tokens]

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool | None = True, decode_tokens: bool = False):
        """Ids (1-D or 2-D tensor) -> tokens (a list, or a list per row)."""
        if isinstance(ids, int):
            return self.tokenizer.decode([ids]) if decode_tokens else self._token(ids)
        ids = torch.as_tensor(ids)
        if ids.dim() < 2:
            return self._tokens(ids, skip_special_tokens, decode_tokens)
        return [self._tokens(row, skip_special_tokens, decode_tokens) for row in ids]

    def convert_tokens_to_ids(self, tokens: Sequence[str] | Sequence[Sequence[str]]):
        """Tokens (a list, or a list per text) -> ids."""
        if isinstance(tokens[0], str):
            return self.tokenizer.convert_tokens_to_ids([str(t) for t in tokens])
        return [self.tokenizer.convert_tokens_to_ids(list(row)) for row in tokens]

    def convert_tokens_to_string(self, tokens, skip_special_tokens: bool = True, as_targets: bool = False):
        """Tokens (a list, or a list per text) -> text(s), special tokens dropped unless asked to keep them."""
        if isinstance(tokens, list) and not tokens:
            return ""
        if isinstance(tokens[0], bytes | str):
            kept = [t for t in tokens if not skip_special_tokens or t not in self.special_tokens]
            return self.tokenizer.convert_tokens_to_string(kept)
        return [self.convert_tokens_to_string(row, skip_special_tokens, as_targets) for row in tokens]

    def convert_string_to_tokens(self, text, skip_special_tokens: bool = True, as_targets: bool = False):
        """Text(s) -> tokens (``as_targets``: tokenised as targets, for encoder-decoders)."""
        if isinstance(text, str):
            kw = {"text_target": text} if as_targets else {"text": text}
            ids = self.tokenizer(**kw, add_special_tokens=not skip_special_tokens)["input_ids"]
            return self._tokens(ids, skip_special_tokens, False)
        return [self.convert_string_to_tokens(t, skip_special_tokens, as_targets) for t in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        """Rows of ids -> texts (``tokenizer.batch_decode``, no clean-up of spaces, as Inseq)."""
        return self.tokenizer.batch_decode(
            ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )
