"""The schedule: every generation step of a batch from one teacher-forced forward pass.

For a batch of B sequences and T attributed steps, :class:`MethodContext.run` does one forward
pass over (R x B) rows (R = interpolation points, samples, or input/baseline halves), gathers the
T state rows that predict targets, pushes only those rows through the LM head and the attributed
function, and takes T vector-Jacobian products back to the attributed input embeddings. Causal
masking makes step t's gradient exactly the per-step definition's (the prefix-only forward Inseq
runs for every step). Everything stays on the device until the caller copies the results out.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from inseq_ray.models.adapter import ForwardInputs, ModelAdapter
from inseq_ray.models.encoding import EncodedBatch
from inseq_ray.models.layers import LayerSite, captured, check_activation, replaced, resolve_layer
from inseq_ray.randomness import RowRandom, record_seed, seed_of
from inseq_ray.step_scores import ContrastRows, StepFunction, StepFunctionArgs

HEAD_CHUNK_ELEMENTS = 2**26  # max logits materialised at once when pushing rows through the head

Combine = Callable[[str, torch.Tensor], torch.Tensor]  # (name, grads (R*B, L, H)) -> (B, L, H)


@dataclass
class StepPlan:
    """Which target each (sequence, step) cell predicts.

    positions: (B, T) target positions (clamped to a valid index where the cell is empty).
    valid: (B, T) whether the cell is a real step of that sequence.
    target_ids: (B, T) the predicted token ids.
    """

    positions: torch.Tensor
    valid: torch.Tensor
    target_ids: torch.Tensor

    @classmethod
    def from_batch(cls, batch: EncodedBatch) -> StepPlan:
        n_steps = batch.n_steps  # (B,)
        offsets = torch.arange(int(n_steps.max()), device=n_steps.device)  # (T,)
        valid = offsets[None, :] < n_steps[:, None]  # (B, T)
        positions = torch.where(valid, batch.attr_start[:, None] + offsets[None, :], batch.attr_start[:, None])
        target_ids = batch.target_ids.gather(1, positions)
        return cls(positions, valid, target_ids)

    def repeat(self, r: int) -> StepPlan:
        return StepPlan(self.positions.repeat(r, 1), self.valid.repeat(r, 1), self.target_ids.repeat(r, 1))

    def slice(self, t0: int, t1: int) -> StepPlan:
        """Steps t0..t1-1 only."""
        return StepPlan(self.positions[:, t0:t1], self.valid[:, t0:t1], self.target_ids[:, t0:t1])


@dataclass
class StepContext:
    """Per-(sequence, step) data prepared once per batch for step functions (contrast, MC dropout).

    contrast_ids: (B, T) contrast target ids; contrast_logits: (B, T, V) contrast next-token logits or None.
    extras: name -> (B, T, ...) values of ``fn.prepare``.
    """

    contrast_ids: torch.Tensor | None = None
    contrast_logits: torch.Tensor | None = None
    force_inputs: bool = False
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, cells: tuple[torch.Tensor, torch.Tensor]) -> tuple[ContrastRows | None, dict[str, torch.Tensor]]:
        """The data of the cells ``(b, t)`` (each (N,)) as step-function rows."""
        b, t = cells
        extras = {k: v[b, t] for k, v in self.extras.items()}
        if self.contrast_ids is None:
            return None, extras
        logits = None if self.contrast_logits is None else self.contrast_logits[b, t]
        return ContrastRows(self.contrast_ids[b, t], logits, self.force_inputs), extras


@dataclass
class MethodResult:
    """attributions: name ("source"/"target") -> (T, B, L, *extra) float32 on the device."""

    attributions: dict[str, torch.Tensor]
    step_scores: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, T)
    dims: tuple[str, ...] = ("hidden",)  # names of the trailing dims of each attribution tensor


class MethodContext:
    """What an attribution method sees of a batch: inputs, baselines, and a forward+VJP runner."""

    def __init__(
        self,
        adapter: ModelAdapter,
        batch: EncodedBatch,
        attributed: tuple[str, ...],
        attributed_fn: StepFunction,
        fn_kwargs: dict,
        baseline_ids: dict[str, torch.Tensor],
        vjp: str = "loop",
        blocks: int = 1,
        row_keys: Sequence[str] | None = None,
    ) -> None:
        self.adapter, self.batch, self.attributed = adapter, batch, attributed
        self.row_keys = list(row_keys) if row_keys is not None else [f"row {b}" for b in range(batch.size)]
        self.fn, self.fn_kwargs, self.vjp, self.blocks = attributed_fn, fn_kwargs, vjp, blocks
        self.plan = StepPlan.from_batch(batch)
        with torch.no_grad():
            self.embeds = self._embed(batch.source_ids, batch.target_ids)  # name -> (B, L, H)
            self.baselines = self._embed(baseline_ids.get("source"), baseline_ids["target"])
        self._input_rows: torch.Tensor | None = None  # (B, T, H) state rows at the real input
        self._input_logits: torch.Tensor | None = None  # (B, T, V) logits at the real input
        self.step_context = StepContext()  # filled by attribute() before the method runs
        self.site: LayerSite | None = None  # a layer's output as the attributed input (see at_layer)
        self.context_embeds: dict[str, torch.Tensor] = {}  # layer context: (R*B, L, H) inputs under the layer
        self.token_ids: dict[str, int | None] = {}  # the tokenizer's special ids ("unk", "pad") for perturbations

    def row_random(self, generator: torch.Generator | int | None) -> RowRandom:
        """Per-record draws for this batch (see :mod:`inseq_ray.randomness`)."""
        return RowRandom(seed_of(generator), self.row_keys)

    def real_lengths(self, name: str) -> list[int]:
        """(B,) real (unpadded) tokens of side ``name`` per row."""
        mask = self.batch.source_mask if name == "source" else self.batch.target_mask
        return [int(n) for n in mask.sum(1).tolist()]

    def attributed_embeds(self) -> dict[str, torch.Tensor]:
        """name -> (B, L, H) embeddings of the attributed inputs."""
        return {k: self.embeds[k] for k in self.attributed}

    @property
    def n_steps(self) -> int:
        return self.plan.positions.shape[1]

    def _embed(self, source_ids: torch.Tensor | None, target_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"target": self.adapter.embed_target(target_ids)}
        if source_ids is not None:
            out["source"] = self.adapter.embed_source(source_ids)
        return out

    def forward_inputs(self, embeds: dict[str, torch.Tensor], r: int, length: int | None = None) -> ForwardInputs:
        """Forward inputs for R stacked copies: the batch's ids, with ``embeds`` (name -> (R*B, L, H))
        substituted for the embedding module's output on that side (other sides embed their ids).

        ``length`` truncates the decoder side (exact under causal masking for the steps it covers).
        """
        b = self.batch
        target = embeds.get("target")
        return ForwardInputs(
            target_ids=b.target_ids.repeat(r, 1)[:, :length],
            target_mask=b.target_mask.repeat(r, 1)[:, :length],
            source_ids=None if b.source_ids is None else b.source_ids.repeat(r, 1),
            source_mask=None if b.source_mask is None else b.source_mask.repeat(r, 1),
            target_embeds=None if target is None else target[:, :length],
            source_embeds=embeds.get("source"),
        )

    def states(self, embeds: dict[str, torch.Tensor], r: int, length: int | None = None) -> torch.Tensor:
        """The forward of R stacked copies with ``embeds`` substituted: at the embedding modules, or, in a layer
        context, at the layer's output (the target side truncated to ``length`` like the ids)."""
        if self.site is None:
            return self.adapter.states(self.forward_inputs(embeds, r, length))
        inputs = self.forward_inputs(self.context_embeds, r, length)
        if self.site.side not in embeds:
            return self.adapter.states(inputs)
        value = embeds[self.site.side]
        value = value[:, :length] if self.site.side == "target" else value
        with replaced(self.site, value):
            return self.adapter.states(inputs)

    def at_layer(self, target_layer) -> MethodContext:
        """This batch with a layer's output as the attributed input: ``embeds``/``baselines`` become the layer's
        output at the inputs and at the baselines (captum's layer methods), on the layer's side."""
        site = resolve_layer(self.adapter, target_layer)
        b = self.batch
        length = (b.source_ids if site.side == "source" else b.target_ids).shape[1]
        with torch.no_grad():
            with captured(site) as seen:
                self.adapter.states(self.forward_inputs({}, 1))
            at_input = check_activation(site, seen, b.size, length)
            with captured(site) as seen:
                self.adapter.states(self.forward_inputs({k: self.baselines[k] for k in self.attributed}, 1))
            at_baseline = check_activation(site, seen, b.size, length)
        layer = copy.copy(self)
        layer.site, layer.attributed = site, (site.side,)
        layer.embeds, layer.baselines = {site.side: at_input}, {site.side: at_baseline}
        layer._input_rows = layer._input_logits = None
        return layer

    def step_blocks(self) -> list[tuple[int, int]]:
        """Contiguous step ranges, one forward each (one range unless ``blocks`` > 1)."""
        t = self.n_steps
        k = max(1, min(self.blocks, t))
        bounds = [round(i * t / k) for i in range(k + 1)]
        return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]

    # ---- the one forward + per-step VJPs -----------------------------------------------------
    def run(self, embeds: dict[str, torch.Tensor], r: int, combine: Combine, at_input: bool = False) -> dict:
        """Forward (R*B rows) once; return name -> (T, B, L, H) of ``combine``d per-step gradients.

        ``embeds`` maps each attributed name to (R*B, L, H) leaf tensors. ``at_input`` marks that the
        first B rows are the real inputs, so their state rows can serve the step scores. With
        ``blocks`` > 1, each block of steps gets its own forward, truncated after the block's last
        predicting position, so that the backward passes run over shorter sequences.
        """
        leaves = {k: v.detach().requires_grad_(True) for k, v in embeds.items()}
        names = list(leaves)
        plan = self.plan.repeat(r)
        combined: dict[str, list[torch.Tensor]] = {n: [] for n in names}

        def keep(step_grads: tuple[torch.Tensor, ...]) -> None:  # combine each step at once: (R*B, ...) -> (B, ...)
            for n, g in zip(names, step_grads, strict=True):
                combined[n].append(combine(n, g.float()))

        input_rows = []
        for t0, t1 in self.step_blocks():
            sub = plan.slice(t0, t1)
            length = int(sub.positions.max()) if self.blocks > 1 else None  # states up to the last p - 1
            with torch.enable_grad():
                states = self.states(leaves, r, length)  # (RB, L', H)
                rows = gather_rows(states, sub.positions - 1)  # (RB, T', H)
                input_rows.append(rows[: self.batch.size].detach())
                row_cot = self._row_cotangents(rows.detach(), sub, t0)  # (RB, T', H)
                self._vjps(states, [leaves[n] for n in names], sub, row_cot, keep)
            del states, rows
        if at_input:
            self._input_rows = torch.cat(input_rows, dim=1)
        return {n: torch.stack(v) for n, v in combined.items()}

    def _row_cotangents(self, rows: torch.Tensor, plan: StepPlan, t0: int = 0) -> torch.Tensor:
        """d f / d row for every (row, step): one backward through the head, chunked over rows.

        rows: (RB, T', H) for steps t0..t0+T'-1 of R stacked copies of the batch.
        """
        flat = rows.flatten(0, 1)  # (RB*T', H)
        tgt, valid = plan.target_ids.flatten(), plan.valid.flatten()
        chunk = max(1, HEAD_CHUNK_ELEMENTS // max(1, self.vocab_size))
        out = torch.zeros_like(flat, dtype=torch.float32)
        steps = rows.shape[1]
        for s in range(0, flat.shape[0], chunk):
            k = torch.arange(s, min(s + chunk, flat.shape[0]), device=flat.device)  # flat cell indices
            contrast, extras = self._cell_data(k, steps, t0)
            leaf = flat[s : s + chunk].detach().requires_grad_(True)
            args = StepFunctionArgs(self.adapter.head(leaf), tgt[s : s + chunk], contrast, True, extras)
            f = self.fn(args, **self.fn_kwargs)
            f = torch.where(valid[s : s + chunk], f, torch.zeros_like(f))
            (out[s : s + chunk],) = torch.autograd.grad(f.sum(), leaf)
        out = torch.where(valid[:, None], out, torch.zeros_like(out))  # empty cells contribute nothing, even NaN
        return out.view_as(rows).to(rows.dtype)

    def _cell_data(self, k: torch.Tensor, steps: int, t0: int = 0):
        """Step-function data of flat cell indices ``k`` (N,) over (R*B, steps) rows starting at step ``t0``."""
        return self.step_context.rows(((k // steps) % self.batch.size, t0 + k % steps))

    def _vjps(self, states, leaves, plan, row_cot, keep: Callable[[tuple], None]) -> None:
        """T VJPs from the state rows back to the leaves (a loop, or one vmapped call); ``keep`` gets each."""
        t_steps = plan.positions.shape[1]
        idx = torch.arange(states.shape[0], device=states.device)
        pos = (plan.positions - 1).clamp(min=0)  # (RB, T)
        if self.vjp == "batched":
            cot = states.new_zeros((t_steps, *states.shape))  # (T, RB, L, H)
            for t in range(t_steps):
                cot[t, idx, pos[:, t]] = row_cot[:, t]
            grads = torch.autograd.grad(states, leaves, cot, is_grads_batched=True)
            for t in range(t_steps):
                keep(tuple(g[t] for g in grads))
            return
        for t in range(t_steps):
            cot = torch.zeros_like(states)
            cot[idx, pos[:, t]] = row_cot[:, t]
            keep(torch.autograd.grad(states, leaves, cot, retain_graph=t < t_steps - 1))

    @property
    def vocab_size(self) -> int:
        return int(self.adapter.model.config.get_text_config().vocab_size)

    # ---- values of step functions --------------------------------------------------------------
    @torch.no_grad()
    def input_rows(self) -> torch.Tensor:
        """(B, T, H) state rows at the real inputs (reused from a gradient pass when possible)."""
        if self._input_rows is None:
            states = self.adapter.states(self.forward_inputs({}, 1))
            self._input_rows = gather_rows(states, self.plan.positions - 1)
        return self._input_rows

    def cache_input_logits(self, logits: torch.Tensor) -> None:
        """Keep (B, L, V) full logits of a forward at the real input, so step scores reuse them."""
        self._input_logits = gather_rows(logits, self.plan.positions - 1)

    @torch.no_grad()
    def step_values(
        self, fn: StepFunction, kwargs: dict, rows: torch.Tensor | None = None, attributed: bool = False
    ) -> torch.Tensor:
        """(B, T) values of a step function (NaN in empty cells); ``attributed`` evaluates it as the attributed
        function (contrastive functions then use the original forward, as in the gradient passes)."""
        if rows is None and self._input_logits is not None:
            logits = self._input_logits.flatten(0, 1)
        else:
            rows = self.input_rows() if rows is None else rows
            logits = self.adapter.head(rows.flatten(0, 1))
        contrast, extras = self._cell_data(torch.arange(logits.shape[0], device=logits.device), self.n_steps)
        args = StepFunctionArgs(logits, self.plan.target_ids.flatten(), contrast, attributed, extras)
        values = fn(args, **kwargs).view(self.plan.valid.shape)
        return torch.where(self.plan.valid, values.float(), torch.full_like(values.float(), float("nan")))

    @torch.no_grad()
    def dropout_logprobs(self, n: int, seed: int = 0) -> list[torch.Tensor]:
        """``n`` forwards at the real inputs with dropout active -> each (B, T) target log-probabilities.

        Per record: each row runs alone, unpadded, with torch's generators seeded from ``seed`` and the row's
        key (and restored afterwards), so its dropout masks never depend on the batch it is in. Every
        module's training flag is restored afterwards, also on error (actors reuse the model).
        """
        model = self.adapter.model
        flags = {m: m.training for m in model.modules()}
        rows = []
        try:
            model.train()
            for b in range(self.batch.size):
                rows.append(self._row_dropout_logprobs(b, n, record_seed(seed, self.row_keys[b], "mc_dropout")))
        finally:
            for m, flag in flags.items():
                m.train(flag)
        return [torch.cat([r[i] for r in rows]) for i in range(n)]

    def _row_dropout_logprobs(self, b: int, n: int, seed: int) -> list[torch.Tensor]:
        """Row ``b`` alone, trimmed to its real tokens: ``n`` dropout forwards -> each (1, T) log-probabilities."""
        batch, plan = self.batch, self.plan
        lt = int(batch.target_mask[b].sum())
        ls = None if batch.source_mask is None else int(batch.source_mask[b].sum())
        inputs = ForwardInputs(
            target_ids=batch.target_ids[b : b + 1, :lt],
            target_mask=batch.target_mask[b : b + 1, :lt],
            source_ids=None if ls is None else batch.source_ids[b : b + 1, :ls],
            source_mask=None if ls is None else batch.source_mask[b : b + 1, :ls],
        )
        positions, targets = (plan.positions[b : b + 1] - 1).clamp(max=lt - 1), plan.target_ids[b : b + 1]
        devices = [self.adapter.device] if self.adapter.device.type == "cuda" else []
        out = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for _ in range(n):
                logits = self.adapter.head(gather_rows(self.adapter.states(inputs), positions).flatten(0, 1)).float()
                out.append(logits.log_softmax(-1).gather(-1, targets.flatten()[:, None]).view(1, -1))
        return out

    @torch.no_grad()
    def attributed_values(self, embeds: dict[str, torch.Tensor], r: int = 1) -> torch.Tensor:
        """(R*B, T) attributed function at other inputs (baselines, perturbations): one no-grad forward of R
        stacked copies (``embeds``: name -> (R*B, L, H); sides not given embed their own ids). Empty cells: 0."""
        states = self.states(embeds, r)
        plan = self.plan.repeat(r)
        rows = gather_rows(states, plan.positions - 1).flatten(0, 1)  # (RB*T, H)
        tgt, steps = plan.target_ids.flatten(), plan.positions.shape[1]
        chunk = max(1, HEAD_CHUNK_ELEMENTS // max(1, self.vocab_size))
        values = torch.empty(rows.shape[0], device=rows.device, dtype=torch.float32)
        for s in range(0, rows.shape[0], chunk):
            k = torch.arange(s, min(s + chunk, rows.shape[0]), device=rows.device)
            contrast, extras = self._cell_data(k, steps)
            args = StepFunctionArgs(self.adapter.head(rows[s : s + chunk]), tgt[s : s + chunk], contrast, True, extras)
            values[s : s + chunk] = self.fn(args, **self.fn_kwargs).float()
        values = values.view(plan.valid.shape)
        return torch.where(plan.valid, values, torch.zeros_like(values))


def gather_rows(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states (N, L, H), positions (N, T) -> (N, T, H) rows at those positions (negatives -> 0)."""
    pos = positions.clamp(min=0)
    return states.gather(1, pos[..., None].expand(-1, -1, states.shape[-1]))
