"""Uniform access to a HF model's embeddings, decoder states and LM head.

The engine needs three things from a model: input embeddings, the *states* whose rows predict
each next token, and a *head* mapping one such row to next-token logits. Splitting the LM head off
lets the engine push only the rows it attributes through the vocabulary projection, instead of
back-propagating through a full ``(B, L, V)`` logit tensor once per step.

Two modes, chosen once per model by a numerical self-check against the model's own logits:
- ``split``: states = ``base_model(...).last_hidden_state`` (B, L, H); head = LM head (+ the
  model's ``final_logits_bias`` / logit soft-capping).
- ``full``: states = the model's logits (B, L, V); head = identity. Always right, slower.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass
class ForwardInputs:
    """Embeddings and masks for one forward pass.

    source_embeds: (B, S, H) or None (decoder-only); source_mask: (B, S).
    target_embeds: (B, L, H) decoder input embeddings; target_mask: (B, L).
    """

    target_embeds: torch.Tensor
    target_mask: torch.Tensor
    source_embeds: torch.Tensor | None = None
    source_mask: torch.Tensor | None = None


class ModelAdapter:
    """Wraps a ``PreTrainedModel`` (never modified) for the engine."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        self.mode = "split" if self._split_is_exact() else "full"

    # ---- embeddings -------------------------------------------------------------------------
    def embed_source(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, S, H) encoder input embeddings."""
        enc = self.model.get_encoder()
        return enc.get_input_embeddings()(ids) if hasattr(enc, "get_input_embeddings") else enc.embed_tokens(ids)

    def embed_target(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, H) decoder input embeddings."""
        if self.is_encoder_decoder:
            dec = self.model.get_decoder()
            if hasattr(dec, "embed_tokens"):
                return dec.embed_tokens(ids)
        return self.model.get_input_embeddings()(ids)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- forward -----------------------------------------------------------------------------
    def states(self, inputs: ForwardInputs) -> torch.Tensor:
        """(B, L, H) rows that predict the next target token (or (B, L, V) logits in full mode)."""
        kwargs = self._model_kwargs(inputs)
        if self.mode == "split":
            return self.model.base_model(**kwargs).last_hidden_state
        return self.model(**kwargs).logits

    def head(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, H) state rows -> (N, V) next-token logits (identity in full mode)."""
        if self.mode == "full":
            return rows
        logits = self.model.get_output_embeddings()(rows)
        bias = getattr(self.model, "final_logits_bias", None)
        if isinstance(bias, torch.Tensor):
            logits = logits + bias.reshape(-1)[: logits.shape[-1]]
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def attention_forward(self, inputs: ForwardInputs) -> object:
        """One forward returning attention weights (model output with ``*attentions``)."""
        with eager_attention(self.model):
            return self.model(**self._model_kwargs(inputs), output_attentions=True)

    def _model_kwargs(self, inputs: ForwardInputs) -> dict:
        if self.is_encoder_decoder:
            return {
                "inputs_embeds": inputs.source_embeds,
                "attention_mask": inputs.source_mask,
                "decoder_inputs_embeds": inputs.target_embeds,
                "decoder_attention_mask": inputs.target_mask,
                "use_cache": False,
            }
        return {"inputs_embeds": inputs.target_embeds, "attention_mask": inputs.target_mask, "use_cache": False}

    # ---- self-check -------------------------------------------------------------------------
    def _split_is_exact(self) -> bool:
        """True when base_model + head reproduces the model's own logits on a dummy input."""
        base = getattr(self.model, "base_model", None)
        if base is None or base is self.model or self.model.get_output_embeddings() is None:
            return False
        ids = torch.arange(3, 9, device=self.device).remainder(self.model.config.vocab_size)[None]  # (1, 6)
        mask = torch.ones_like(ids)
        inputs = ForwardInputs(self.embed_target(ids), mask)
        if self.is_encoder_decoder:
            inputs.source_embeds, inputs.source_mask = self.embed_source(ids), mask
        with torch.no_grad():
            try:
                self.mode = "split"
                rows = self.states(inputs)[0]  # (6, H)
                ours = self.head(rows)
                self.mode = "full"
                ref = self.states(inputs)[0]  # (6, V)
            except Exception:
                return False
        tol = 1e-4 if self.dtype == torch.float32 else 5e-2
        return ours.shape == ref.shape and torch.allclose(ours.float(), ref.float(), atol=tol, rtol=tol)


@contextlib.contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """Temporarily switch a model to eager attention (which returns weights), then restore it."""
    configs = _configs_with_attn(model)
    saved = [(cfg, cfg._attn_implementation) for cfg in configs]
    try:
        for cfg in configs:
            cfg._attn_implementation = "eager"
        yield
    finally:
        for cfg, impl in saved:
            cfg._attn_implementation = impl


def _configs_with_attn(model: nn.Module) -> list:
    seen: dict[int, object] = {}
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            seen[id(cfg)] = cfg
    return list(seen.values())
