"""Uniform access to a HF model's embeddings, decoder states and LM head.

The engine needs three things from a model: input embeddings, the *states* whose rows predict
each next token, and a *head* mapping one such row to next-token logits. Splitting the LM head off
lets the engine push only the rows it attributes through the vocabulary projection, instead of
back-propagating through a full ``(B, L, V)`` logit tensor once per step.

**The attributed forward is the model's own forward from ids.** Models differ in what they do
between the embedding lookup and the first layer, and many do it only on the ``input_ids`` path
(Marian and Pegasus scale the encoder embeddings only there; FSMT derives positions from the ids).
So the adapter never calls ``forward(inputs_embeds=...)``: it calls ``forward(input_ids=...)`` and
replaces the *output of the input embedding module* with the tensors being attributed (see
:func:`substitute_embeddings`). The attributed inputs are exactly what that module returns for
the ids (``embed_source`` / ``embed_target``), and everything after it is the model's own code.

Two head modes, chosen once per model by :meth:`ModelAdapter.check_conformance` against the
model's own logits from ids (a load-time check that cannot be skipped):
- ``split``: states = ``base_model(...).last_hidden_state`` (B, L, H); head = LM head (+ the
  model's ``final_logits_bias`` / logit soft-capping).
- ``full``: states = the model's logits (B, L, V); head = identity. Always right, slower.
If neither reproduces the model's logits, loading fails with :class:`ModelConformanceError`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from inseq_ray.errors import ModelConformanceError
from inseq_ray.models.families import ModelConfig, family_config, known_names
from inseq_ray.models.placement import input_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


@dataclass
class ForwardInputs:
    """Ids, masks and (optionally) substituted embeddings for one forward pass.

    target_ids, target_mask: (B, L) decoder inputs (decoder-only: the whole text).
    source_ids, source_mask: (B, S) encoder inputs, or None for decoder-only models.
    target_embeds: (B, L, H) / source_embeds: (B, S, H) replace the embedding module's output for
    those ids (None: the module's own output is used).
    """

    target_ids: torch.Tensor
    target_mask: torch.Tensor
    source_ids: torch.Tensor | None = None
    source_mask: torch.Tensor | None = None
    target_embeds: torch.Tensor | None = None
    source_embeds: torch.Tensor | None = None


class ModelAdapter:
    """Wraps a ``PreTrainedModel`` (never modified; hooks live only for one forward) for the engine."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.is_encoder_decoder = bool(model.config.is_encoder_decoder)
        self.family: ModelConfig = family_config(model)  # this family's quirks (models/families.py)
        self.mode = "full"
        self._batch_axes: dict[tuple[type, ...], int] = {}
        self.conformance = self.check_conformance()

    # ---- embeddings -------------------------------------------------------------------------
    def source_embedding(self) -> nn.Module:
        """The module the encoder calls on its ``input_ids``."""
        return _embedding_module(self.model.get_encoder(), self.family.embedding_module)

    def target_embedding(self) -> nn.Module:
        """The module the decoder (decoder-only: the model) calls on its ``input_ids``."""
        if self.is_encoder_decoder:
            return _embedding_module(self.model.get_decoder(), self.family.embedding_module)
        if self.family.embedding_module is not None:
            return self.model.base_model.get_submodule(self.family.embedding_module)
        return self.model.get_input_embeddings()

    def embed_source(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, S, H): what the encoder's embedding module returns for them."""
        return self.source_embedding()(ids)

    def embed_target(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, H): what the decoder's embedding module returns for them."""
        return self.target_embedding()(ids)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Where the engine's tensors live: the input embedding's device (see :mod:`inseq_ray.models.placement`)."""
        return input_device(self.model)

    # ---- forward -----------------------------------------------------------------------------
    def states(self, inputs: ForwardInputs) -> torch.Tensor:
        """(B, L, H) rows that predict the next target token (or (B, L, V) logits in full mode), on the input
        device (a dispatched model's last layer may live elsewhere)."""
        with self._substituted(inputs):
            if self.mode == "split":
                return self.model.base_model(**self._model_kwargs(inputs)).last_hidden_state.to(self.device)
            return self.model(**self._model_kwargs(inputs)).logits.to(self.device)

    def head(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, H) state rows -> (N, V) next-token logits (identity in full mode)."""
        if self.mode == "full":
            return rows
        logits = self.model.get_output_embeddings()(rows).to(rows.device)
        for name in _named(self.family.logits_bias, "logits_bias"):
            bias = getattr(self.model, name, None)
            if isinstance(bias, torch.Tensor):
                logits = logits + bias.reshape(-1)[: logits.shape[-1]].to(logits.device)
        config = self.model.config.get_text_config()
        for name in _named(self.family.logit_softcap_field, "logit_softcap_field"):
            cap = getattr(config, name, None)
            if cap:
                logits = torch.tanh(logits / cap) * cap
        return logits

    def last_hidden_states(self, inputs: ForwardInputs) -> torch.Tensor:
        """(B, L, H') the decoder's last hidden state as ``output_hidden_states`` reports it (after the final norm
        or projection of families that have one; FSMT: its last layer's output)."""
        with self._substituted(inputs):
            model = self.model.base_model if self.mode == "split" else self.model
            out = model(**self._model_kwargs(inputs), output_hidden_states=True)
        return (out.decoder_hidden_states if self.is_encoder_decoder else out.hidden_states)[-1].to(self.device)

    def attention_forward(self, inputs: ForwardInputs, output_attentions: bool = True) -> Any:
        """One eager forward from ids returning attention weights (model output with ``*attentions``, each layer's
        weights and the logits on the input device; ``output_attentions=False``: the logits only, the weights left
        to hooks on the attention modules)."""
        with eager_attention(self.model), self._substituted(inputs):
            out = self.model(**self._model_kwargs(inputs), output_attentions=output_attentions)
        for name in ("attentions", "decoder_attentions", "cross_attentions"):
            if getattr(out, name, None) is not None:
                setattr(out, name, tuple(a.to(self.device) for a in getattr(out, name)))
        out.logits = out.logits.to(self.device)
        return out

    def _model_kwargs(self, inputs: ForwardInputs) -> dict:
        if self.is_encoder_decoder:
            return {
                "input_ids": inputs.source_ids,
                "attention_mask": inputs.source_mask,
                "decoder_input_ids": inputs.target_ids,
                "decoder_attention_mask": inputs.target_mask,
                "use_cache": False,
            }
        return {"input_ids": inputs.target_ids, "attention_mask": inputs.target_mask, "use_cache": False}

    def _substituted(self, inputs: ForwardInputs) -> contextlib.AbstractContextManager:
        """Hooks that put ``inputs``' embeddings in place of the embedding modules' outputs."""
        swaps: list[tuple[torch.Tensor, torch.Tensor]] = []
        modules = []
        if inputs.source_embeds is not None and inputs.source_ids is not None:  # the encoder runs first
            swaps.append((inputs.source_ids, inputs.source_embeds))
            modules.append(self.source_embedding())
        if inputs.target_embeds is not None:
            swaps.append((inputs.target_ids, inputs.target_embeds))
            modules.append(self.target_embedding())
        if not swaps:
            return contextlib.nullcontext()
        return substitute_embeddings(modules, swaps, type(self.model).__name__)

    def activation_batch_axis(self, module_types: tuple[type, ...]) -> int:
        """Which axis of the inputs of ``module_types`` modules indexes the batch rows: 0, or 1 for models
        that run their layers time-first (FSMT: (T, B, H)). Found once per type set from the probe forward
        (2 rows, lengths 6 and 7, so the answer is unambiguous)."""
        if module_types not in self._batch_axes:
            seen: set[int] = set()

            def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                shape = args[0].shape  # batch-first (2, L, H) or flattened (2 * L, H): 0; time-first (L, 2, H): 1
                time_first = len(shape) > 1 and shape[1] == 2 and shape[0] != 2
                seen.add(1 if time_first else 0 if shape[0] % 2 == 0 else -1)

            probe = self._probe_inputs()
            handles = [m.register_forward_hook(record) for m in self.model.modules() if type(m) in module_types]
            try:
                with torch.no_grad():
                    self.model(**self._model_kwargs(probe))
            finally:
                for h in handles:
                    h.remove()
            if len(seen) > 1 or -1 in seen:
                raise ModelConformanceError(
                    f"{type(self.model).__name__}: cannot tell the batch axis of its {module_types} inputs."
                )
            self._batch_axes[module_types] = seen.pop() if seen else 0
        return self._batch_axes[module_types]

    # ---- conformance check -------------------------------------------------------------------
    def check_conformance(self) -> dict:
        """Check (once, at load) that the attributed forward reproduces the model's logits from ids.

        Tries the split head first, then the full logits; sets ``self.mode`` to the first that
        matches within a float tolerance and returns what was measured. Raises
        :class:`ModelConformanceError` (naming the model class and the difference) otherwise.
        """
        probe = self._probe_inputs()
        with torch.no_grad():
            ref = self.model(**self._model_kwargs(probe)).logits.float()  # (2, L, V)
        valid = probe.target_mask.bool()
        tol = 1e-4 if self.dtype == torch.float32 else 5e-2
        diffs: dict[str, float | str] = {}
        for mode in self._candidate_modes():
            self.mode = mode
            try:
                with torch.no_grad():
                    ours = self.head(self.states(probe)).float()
            except ModelConformanceError:
                raise
            except Exception as e:  # a head that does not apply to this model: try the next mode
                diffs[mode] = f"failed ({type(e).__name__})"
                continue
            diff = (ours[valid] - ref[valid]).abs().max().item() if ours.shape == ref.shape else float("inf")
            diffs[mode] = diff
            if diff <= tol * (1 + ref[valid].abs().max().item()):
                report = {"mode": mode, "max_abs_logit_diff": diff, "tolerance": tol}
                logger.info(
                    "%s conformance: attributed forward == forward from ids %s", type(self.model).__name__, report
                )
                return report
        raise ModelConformanceError(
            f"{type(self.model).__name__}: the attribution forward does not reproduce the model's own forward "
            f"from ids (max |logit difference| per head mode: {diffs}; tolerance {tol}). Attributing it would "
            "give wrong results, so loading stops here; please report this model class."
        )

    def _candidate_modes(self) -> list[str]:
        base = getattr(self.model, "base_model", None)
        has_split = base is not None and base is not self.model and self.model.get_output_embeddings() is not None
        return ["split", "full"] if has_split else ["full"]

    def _probe_inputs(self) -> ForwardInputs:
        """Two right-padded rows of different lengths, their embeddings substituted on both sides."""
        vocab = int(self.model.config.get_text_config().vocab_size)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(4, max(5, vocab), (2, 7), generator=gen).to(self.device)  # (2, 7)
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0  # the second row right-padded
        pad = self.model.config.pad_token_id
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad if pad is not None else 0))
        probe = ForwardInputs(ids, mask)
        with torch.no_grad():
            probe.target_embeds = self.embed_target(ids)
            if self.is_encoder_decoder:  # different ids on the source side, so a swapped side shows
                probe.source_ids = torch.randint(4, max(5, vocab), (2, 6), generator=gen).to(self.device)
                probe.source_mask = torch.ones_like(probe.source_ids)
                probe.source_embeds = self.embed_source(probe.source_ids)
        return probe


def _named(value: str | None, field: str) -> tuple[str, ...]:
    """The family's name for ``field``, else every name the family table knows for it (found generically)."""
    return (value,) if value is not None else known_names(field)


def _embedding_module(stack: nn.Module, name: str | None = None) -> nn.Module:
    if name is not None:
        return stack.get_submodule(name)
    getter = getattr(stack, "get_input_embeddings", None)
    module = getter() if callable(getter) else None
    return module if isinstance(module, nn.Module) else stack.get_submodule("embed_tokens")


@contextlib.contextmanager
def substitute_embeddings(
    modules: list[nn.Module], swaps: list[tuple[torch.Tensor, torch.Tensor]], model_name: str
) -> Iterator[None]:
    """While active, a call of one of ``modules`` on ids equal to ``swaps[i][0]`` returns ``swaps[i][1]``.

    ``swaps`` are (ids (N, L), embeds (N, L, H)) pairs, matched in order (an encoder-decoder whose
    sides share one embedding module calls it for the source first). Hooks are removed on exit, also
    on error. A swap that no call consumed means the model did not embed those ids with that
    module: the forward would not be the attributed one, so this raises instead of going on.
    """
    used = [False] * len(swaps)

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        ids = args[0] if args else None
        for i, (want, embeds) in enumerate(swaps):
            if not used[i] and _extends(ids, want):
                used[i] = True
                embeds = embeds.to(output.device, output.dtype)
                if output.shape[1] == want.shape[1]:
                    return embeds
                # a model that pads the ids itself (LED, to its attention window) keeps its own padding rows
                return torch.cat([embeds, output[:, want.shape[1] :]], dim=1)
        return None

    handles = [m.register_forward_hook(hook) for m in {id(m): m for m in modules}.values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    if not all(used):
        raise ModelConformanceError(
            f"{model_name} did not call its input embedding module on the ids being attributed, so the "
            "attributed embeddings would not reach the forward; this model class is not supported yet."
        )


def _extends(ids: object, want: torch.Tensor) -> bool:
    """True when ``ids`` (N, L') are ``want`` (N, L), possibly followed by padding the model added (L' >= L)."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != want.shape[0]:
        return False
    return ids.shape[1] >= want.shape[1] and torch.equal(ids[:, : want.shape[1]], want)


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
