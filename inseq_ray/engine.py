"""The schedule: every generation step of a batch from one teacher-forced forward pass.

For a batch of B sequences and T attributed steps, :class:`MethodContext.run` does one forward
pass over (R x B) rows (R = interpolation points, samples, or input/baseline halves), gathers the
T state rows that predict targets, pushes only those rows through the LM head and the attributed
function, and takes T vector-Jacobian products back to the attributed input embeddings. Causal
masking makes step t's gradient exactly the per-step definition's (the prefix-only forward Inseq
runs for every step). Everything stays on the device until the caller copies the results out.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch

from inseq_ray.models.adapter import ForwardInputs, ModelAdapter
from inseq_ray.models.encoding import EncodedBatch
from inseq_ray.models.layers import LayerSite, captured, check_activation, replaced, resolve_layer
from inseq_ray.randomness import RowRandom, seed_of
from inseq_ray.rows import gather_rows
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
        embeds: dict[str, torch.Tensor],
        baselines: dict[str, torch.Tensor],
        *,
        vjp: str = "loop",
        blocks: int = 1,
        row_keys: Sequence[str] | None = None,
        token_ids: dict[str, int | None] | None = None,
        step_context: StepContext | None = None,
        site: LayerSite | None = None,
        context_embeds: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Use :meth:`for_batch` (which embeds the ids); ``embeds``/``baselines``: name -> (B, L, H)."""
        self.adapter, self.batch, self.attributed = adapter, batch, attributed
        self.fn, self.fn_kwargs, self.vjp, self.blocks = attributed_fn, fn_kwargs, vjp, blocks
        self.embeds, self.baselines = embeds, baselines
        self.row_keys = list(row_keys) if row_keys is not None else [f"row {b}" for b in range(batch.size)]
        self.token_ids = dict(token_ids or {})  # the tokenizer's special ids ("unk", "pad") for perturbations
        self.step_context = step_context if step_context is not None else StepContext()
        self.site = site  # a layer's output as the attributed input (see at_layer)
        self.context_embeds = dict(context_embeds or {})  # layer context: (R*B, L, H) inputs under the layer
        self.plan = StepPlan.from_batch(batch)
        self._input_rows: torch.Tensor | None = None  # (B, T, H) state rows at the real input
        self._input_logits: torch.Tensor | None = None  # (B, T, V) logits at the real input

    @classmethod
    def for_batch(
        cls,
        adapter: ModelAdapter,
        batch: EncodedBatch,
        attributed: tuple[str, ...],
        attributed_fn: StepFunction,
        fn_kwargs: dict,
        baseline_ids: dict[str, torch.Tensor],
        **options,
    ) -> MethodContext:
        """The context of ``batch``: its ids and ``baseline_ids`` (name -> (B, L)) embedded once; ``options`` as
        the constructor's (vjp, blocks, row_keys, token_ids, step_context)."""
        with torch.no_grad():
            embeds = _embed(adapter, batch.source_ids, batch.target_ids)
            baselines = _embed(adapter, baseline_ids.get("source"), baseline_ids["target"])
        return cls(adapter, batch, attributed, attributed_fn, fn_kwargs, embeds, baselines, **options)

    def derive(self, **changes) -> MethodContext:
        """A new context over this batch with ``changes`` to the constructor's arguments (fresh caches)."""
        args = {
            "adapter": self.adapter, "batch": self.batch, "attributed": self.attributed, "attributed_fn": self.fn,
            "fn_kwargs": self.fn_kwargs, "embeds": self.embeds, "baselines": self.baselines, "vjp": self.vjp,
            "blocks": self.blocks, "row_keys": self.row_keys, "token_ids": self.token_ids,
            "step_context": self.step_context, "site": self.site, "context_embeds": self.context_embeds,
        }  # fmt: skip
        return MethodContext(**{**args, **changes})

    def row_random(self, generator: torch.Generator | int | None) -> RowRandom:
        """Per-record draws for this batch (see :mod:`inseq_ray.randomness`)."""
        return RowRandom(seed_of(generator), self.row_keys)

    def real_lengths(self, name: str) -> list[int]:
        """(B,) real (unpadded) tokens of side ``name`` per row."""
        _, mask = self.batch.side(name)
        return [int(n) for n in mask.sum(1).tolist()]

    def attributed_embeds(self) -> dict[str, torch.Tensor]:
        """name -> (B, L, H) embeddings of the attributed inputs."""
        return {k: self.embeds[k] for k in self.attributed}

    @property
    def n_steps(self) -> int:
        return self.plan.positions.shape[1]

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

    def at_layer(self, target_layer, context_embeds: dict[str, torch.Tensor] | None = None) -> MethodContext:
        """This batch with a layer's output as the attributed input: ``embeds``/``baselines`` become the layer's
        output at the inputs and at the baselines (captum's layer methods), on the layer's side.
        ``context_embeds`` (name -> (R*B, L, H)): the inputs under the layer in the forward (default: the ids')."""
        site = resolve_layer(self.adapter, target_layer)
        b = self.batch
        length = b.side(site.side)[0].shape[1]
        with torch.no_grad():
            with captured(site) as seen:
                self.adapter.states(self.forward_inputs({}, 1))
            at_input = check_activation(site, seen, b.size, length).to(self.adapter.device)
            with captured(site) as seen:
                self.adapter.states(self.forward_inputs({k: self.baselines[k] for k in self.attributed}, 1))
            at_baseline = check_activation(site, seen, b.size, length).to(self.adapter.device)
        return self.derive(
            site=site,
            attributed=(site.side,),
            embeds={site.side: at_input},
            baselines={site.side: at_baseline},
            context_embeds=context_embeds,
        )

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

        def keep(step_grads: tuple[torch.Tensor, ...], t: int, scales: torch.Tensor) -> None:
            """Step t's gradients (R*B, ...), their cotangents scaled by ``scales[:, t]`` -> combined (B, ...)."""
            for n, g in zip(names, step_grads, strict=True):
                g = g.float() / scales[:, t].view(-1, *[1] * (g.dim() - 1))
                combined[n].append(combine(n, g))

        input_rows = []
        for t0, t1 in self.step_blocks():
            sub = plan.slice(t0, t1)
            length = int(sub.positions.max()) if self.blocks > 1 else None  # states up to the last p - 1
            with torch.enable_grad():
                states = self.states(leaves, r, length)  # (RB, L', H)
                rows = gather_rows(states, sub.positions - 1)  # (RB, T', H)
                input_rows.append(rows[: self.batch.size].detach())
                row_cot, scales = self._row_cotangents(rows.detach(), sub, t0)  # (RB, T', H), (RB, T')
                self._vjps(states, [leaves[n] for n in names], sub, row_cot, partial(keep, scales=scales))
            del states, rows
        if at_input:
            self._input_rows = torch.cat(input_rows, dim=1)
        return {n: torch.stack(v) for n, v in combined.items()}

    def _row_cotangents(self, rows: torch.Tensor, plan: StepPlan, t0: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """d f / d row for every (row, step), and the scale each was multiplied by: one backward through the head,
        chunked over rows.

        rows: (RB, T', H) for steps t0..t0+T'-1 of R stacked copies of the batch -> cotangents (RB, T', H) in the
        rows' dtype and scales (RB, T') float32. The attributed function and d f / d logits are computed in float32;
        in float16, each cell's logit gradient is scaled by a power of two that brings its largest entry to [1, 2)
        before it enters the model (a probability near 2e-5 would otherwise underflow float16 on the way back to the
        inputs); :meth:`run` divides the scale out in float32. Other dtypes have the range: scale 1.
        """
        flat = rows.flatten(0, 1)  # (RB*T', H)
        out = torch.zeros_like(flat, dtype=torch.float32)
        scales = torch.ones(flat.shape[0], device=flat.device, dtype=torch.float32)
        for sl, leaf_rows, args_of in self._head_chunks(flat, plan, rows.shape[1], t0):
            leaf = leaf_rows.detach().requires_grad_(True)
            logits = self.adapter.head(leaf)  # (N, V) in the model's dtype
            wide = logits.detach().float().requires_grad_(True)
            f = self.fn(args_of(wide), **self.fn_kwargs)
            f = torch.where(plan.valid.flatten()[sl], f, torch.zeros_like(f))
            (d_logits,) = torch.autograd.grad(f.sum(), wide)  # (N, V) float32
            d_logits = torch.where(plan.valid.flatten()[sl, None], d_logits, torch.zeros_like(d_logits))  # empty: 0
            if logits.dtype == torch.float16:
                scales[sl] = underflow_scale(d_logits)
            (row_grad,) = torch.autograd.grad(logits, leaf, (d_logits * scales[sl, None]).to(logits.dtype))
            out[sl] = row_grad.float()
        valid = plan.valid.flatten()
        out = torch.where(valid[:, None], out, torch.zeros_like(out))  # empty cells: 0, even NaN
        return out.view_as(rows).to(rows.dtype), scales.view(rows.shape[:2])

    def _head_chunks(self, flat: torch.Tensor, plan: StepPlan, steps: int, t0: int = 0):
        """Yield (slice, rows (N, H), logits (N, V) -> StepFunctionArgs) over chunks of ``flat`` (RB*T', H) cell rows, so
        that at most HEAD_CHUNK_ELEMENTS logits exist at once."""
        tgt = plan.target_ids.flatten()
        chunk = max(1, HEAD_CHUNK_ELEMENTS // max(1, self.vocab_size))
        for s in range(0, flat.shape[0], chunk):
            sl = slice(s, min(s + chunk, flat.shape[0]))
            contrast, extras = self._cell_data(torch.arange(sl.start, sl.stop, device=flat.device), steps, t0)

            def args_of(logits: torch.Tensor, sl=sl, contrast=contrast, extras=extras) -> StepFunctionArgs:
                return StepFunctionArgs(logits, tgt[sl], contrast, True, extras)

            yield sl, flat[sl], args_of

    def _cell_data(self, k: torch.Tensor, steps: int, t0: int = 0):
        """Step-function data of flat cell indices ``k`` (N,) over (R*B, steps) rows starting at step ``t0``."""
        return self.step_context.rows(((k // steps) % self.batch.size, t0 + k % steps))

    def _vjps(self, states, leaves, plan, row_cot, keep: Callable[[tuple, int], None]) -> None:
        """T VJPs from the state rows back to the leaves (a loop, or one vmapped call); ``keep`` gets each with its
        step index."""
        t_steps = plan.positions.shape[1]
        idx = torch.arange(states.shape[0], device=states.device)
        pos = (plan.positions - 1).clamp(min=0)  # (RB, T)
        if self.vjp == "batched":
            cot = states.new_zeros((t_steps, *states.shape))  # (T, RB, L, H)
            for t in range(t_steps):
                cot[t, idx, pos[:, t]] = row_cot[:, t]
            grads = torch.autograd.grad(states, leaves, cot, is_grads_batched=True)
            for t in range(t_steps):
                keep(tuple(g[t] for g in grads), t)
            return
        for t in range(t_steps):
            cot = torch.zeros_like(states)
            cot[idx, pos[:, t]] = row_cot[:, t]
            keep(torch.autograd.grad(states, leaves, cot, retain_graph=t < t_steps - 1), t)

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
    def attributed_values(self, embeds: dict[str, torch.Tensor], r: int = 1) -> torch.Tensor:
        """(R*B, T) attributed function at other inputs (baselines, perturbations): one no-grad forward of R
        stacked copies (``embeds``: name -> (R*B, L, H); sides not given embed their own ids). Empty cells: 0."""
        plan = self.plan.repeat(r)
        rows = gather_rows(self.states(embeds, r), plan.positions - 1).flatten(0, 1)  # (RB*T, H)
        values = torch.empty(rows.shape[0], device=rows.device, dtype=torch.float32)
        for sl, chunk_rows, args_of in self._head_chunks(rows, plan, plan.positions.shape[1]):
            values[sl] = self.fn(args_of(self.adapter.head(chunk_rows)), **self.fn_kwargs).float()
        values = values.view(plan.valid.shape)
        return torch.where(plan.valid, values, torch.zeros_like(values))


def underflow_scale(d_logits: torch.Tensor) -> torch.Tensor:
    """(N, V) float32 logit gradients -> (N,) powers of two bringing each row's largest magnitude to [1, 2) (1 for
    an all-zero row): exact to divide out, and far from float16's limits (6e-8 .. 65504) on the way back."""
    peak = d_logits.abs().amax(dim=-1)  # (N,)
    exponent = torch.floor(torch.log2(peak.clamp(min=1e-30)))
    return torch.where(peak > 0, torch.exp2(-exponent), torch.ones_like(peak))


def _embed(adapter: ModelAdapter, source_ids: torch.Tensor | None, target_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, L) ids per side -> name -> (B, L, H) embeddings."""
    out = {"target": adapter.embed_target(target_ids)}
    if source_ids is not None:
        out["source"] = adapter.embed_source(source_ids)
    return out
