"""ALTI+ (Ferrando et al., 2022): each attention's output split into one vector per input token, each token's
share measured by how close its vector is to the output, the shares rolled out through the layers.

Per attention (weights a, value vectors v, output projection W_O, stream x entering it, Q rows, K keys):
``T_i(j) = W_O [a^h_ij v^h_j]_h`` (D-vectors, bias excluded; sum_j T_i(j) + b = the attention's output). The
token's own stream joins as ``z_ii = T_i(i) + x_i`` (self-attention) or as one more column ``z_i,res = x_i``
(cross-attention); where a norm is in the way it is linearised, its scale of row i fixed (``post``: the norm of
stream + output; ``sandwich``: of the output). With y_i the stream after the attention:
``c_ij = max(0, |y_i|_1 - |y_i - z_ij|_1)``, normalised to sum to 1 over j. MLPs are taken not to mix tokens.

Rollout: the encoder's ``R = C_N ... C_1`` over the source; the decoder's rows start as the identity over the
target prefix and go through each block's self-attention (``R <- C R``) and cross-attention
(``R <- c_res R + C_src [R_enc | 0]``). Step t reads the row predicting it: its source and target shares sum to
1. ``keep_all=True`` keeps every decoder layer's rollout ``[tokens, steps, layers]``; default the last.

Forward budget: one eager forward per batch (as ``attention``), then tensor work of B x Q x K x D per layer in
query chunks. Independent of the attributed function: it explains the model's internals at each step.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from inseq_ray.engine import MethodContext, MethodResult
from inseq_ray.errors import ModelConformanceError, WeightsNotReturned
from inseq_ray.models.mixing import Mixing, record_mixing
from inseq_ray.rows import gather_rows

CHUNK_ELEMENTS = 2**25  # B x q x K x D elements of T per query chunk (128 MiB in float32)


def alti_plus(ctx: MethodContext, keep_all: bool = False) -> MethodResult:
    """ALTI+ (Ferrando et al., 2022): each token's share of every attention's output (distance-based, norms
    linearised), rolled out through the encoder and the decoder's self- and cross-attentions; each step's source
    and target shares sum to 1. ``keep_all=True`` keeps every decoder layer's rollout. (T, B, L[, n_layers])."""
    adapter = ctx.adapter
    rows = (ctx.plan.positions - 1).clamp(min=0).to(adapter.device)  # (B, T) rows predicting each step
    roll = Rollout(rows, keep_all)
    with torch.no_grad():
        try:
            out = record_mixing(adapter, lambda: _forward(ctx, _ASK_WEIGHTS.get(adapter.model, False)), roll.add)
        except WeightsNotReturned:  # FSMT's and T5's attentions return weights only when asked: found once per model
            _ASK_WEIGHTS[adapter.model] = True
            roll = Rollout(rows, keep_all)
            out = _asked(adapter, lambda: _forward(ctx, True), roll.add)
        ctx.cache_input_logits(out.logits)
    roll.check()
    picked = torch.stack(roll.picked, -1).permute(1, 0, 2, 3)  # (T, B, N, l)
    picked = picked * ctx.plan.valid.T[:, :, None, None].to(picked.device)
    n_source = 0 if roll.source is None else roll.source.shape[-1]
    sides = {"source": picked[:, :, :n_source], "target": picked[:, :, n_source:]}
    result = {name: sides[name] if keep_all else sides[name][..., 0] for name in ctx.attributed}
    return MethodResult(result, dims=("layers",) if keep_all else ())


_ASK_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its attentions need output_attentions


def _asked(adapter, run, on_block):
    """``record_mixing`` on a forward that asked for the weights: an attention returning none now is refused."""
    try:
        return record_mixing(adapter, run, on_block)
    except WeightsNotReturned as e:
        raise ModelConformanceError(
            f"alti_plus: {e} returns no attention weights, even with output_attentions=True; ALTI+ needs them."
        ) from e


def _forward(ctx: MethodContext, output_attentions: bool):
    return ctx.adapter.attention_forward(ctx.forward_inputs({}, 1), output_attentions=output_attentions)


class Rollout:
    """The rollout, block by block as the forward runs them: the encoder's ``R = C R`` over the source, then the
    decoder's rows (identity over the target prefix, after the source's zeros) through each block's
    self-attention (``R <- C R``) and cross-attention (``R <- c_res R + C_src [R_enc | 0]``); ``picked`` holds the
    step rows (B, T, S + Lt) after every decoder block (``keep_all``) or after the last."""

    def __init__(self, rows: torch.Tensor, keep_all: bool) -> None:
        self.rows, self.keep_all = rows, keep_all
        self.source: torch.Tensor | None = None  # (B, S, S)
        self.target: torch.Tensor | None = None  # (B, Lt, S + Lt)
        self.picked: list[torch.Tensor] = []
        self.raw: dict[str, list[bool]] = {}  # per stack: pre-norm self-attentions reading the raw stream
        self.blocks: dict[str, int] = {}  # per stack: blocks seen

    def add(self, stack: str, stream: torch.Tensor, mixings: list[Mixing]) -> None:
        """One block's attentions (``record_mixing``'s ``on_block``)."""
        self.raw.setdefault(stack, []).extend(_reads_raw(mixings[0], stream))
        self.blocks[stack] = self.blocks.get(stack, -1) + 1
        c = block_contributions(stream.float(), mixings, f"{stack} block {self.blocks[stack]}")
        if stack == "encoder":
            self.source = c[0] @ self.source if self.source is not None else c[0]
            return
        r = c[0] @ self._start(c[0]) if self.target is None else c[0] @ self.target
        for c_cross in c[1:]:  # (B, Lt, 1 + S): the stream's own share, then each source token's
            assert self.source is not None, "a cross-attention without an encoder"
            r = c_cross[..., :1] * r
            r[..., : self.source.shape[-1]] += c_cross[..., 1:] @ self.source
        self.target = r
        step_rows = gather_rows(r, self.rows.to(r.device))
        self.picked = [*self.picked, step_rows] if self.keep_all else [step_rows]

    def _start(self, c: torch.Tensor) -> torch.Tensor:
        """(B, Lt, S + Lt): each decoder row its own token's, before any block."""
        b, lt = c.shape[:2]
        s = 0 if self.source is None else self.source.shape[-1]
        eye = torch.eye(lt, device=c.device)[None].expand(b, -1, -1)
        return torch.cat([c.new_zeros(b, lt, s), eye], -1)

    def check(self) -> None:
        """A ``pre`` stack whose every self-attention read the residual stream itself is not pre-norm."""
        for raw in self.raw.values():
            if raw and all(raw):
                raise ModelConformanceError(
                    "alti_plus: every self-attention reads the residual stream itself, not a normalised copy: the "
                    "family's norm_placement is not 'pre' (register_model_config can declare 'post', 'sandwich' "
                    "or 'auto')."
                )


def _reads_raw(m: Mixing, stream: torch.Tensor) -> list[bool]:
    """[whether a pre-norm self-attention read the stream itself] ([] for another placement)."""
    return [_reads_stream(m, stream.float())] if m.placement == "pre" else []


def _reads_stream(m: Mixing, stream: torch.Tensor) -> bool:
    """Whether the attention was given the residual stream (B, Q, D) itself, not a normalised copy."""
    return bool(torch.allclose(m.query_input.float(), stream, atol=_tolerance(stream, m.query_input.dtype)))


def block_contributions(stream: torch.Tensor, mixings: list[Mixing], where: str) -> list[torch.Tensor]:
    """One block's attentions in order: (B, Q, K) contributions (cross-attention: (B, Q, 1 + K)); ``stream``
    (B, L, D) enters the block, each attention's output stream enters the next."""
    out = []
    for k, mixing in enumerate(mixings):
        c, stream = contributions(mixing, stream, self_attention=k == 0, where=where)
        out.append(c)
    return out


def contributions(m: Mixing, stream: torch.Tensor, self_attention: bool, where: str) -> tuple:
    """-> ((B, Q, K) shares of each key, or (B, Q, 1 + K) with the stream's first for cross-attention; (B, Q, D)
    the stream after the attention). ``stream`` (B, Q, D) enters it."""
    heads = head_outputs(m)  # (B, K, H, D)
    output = _attention_output(m, heads, stream, where)  # (B, Q, D) the attention's own output, checked
    shift, after = _linearised_norm(m, stream, output, where)
    b, q, k = m.weights.shape[0], m.weights.shape[2], m.weights.shape[3]
    shares = torch.zeros(b, q, k + (0 if self_attention else 1), device=stream.device)
    chunk = max(1, CHUNK_ELEMENTS // max(1, b * k * stream.shape[-1]))
    for start in range(0, q, chunk):
        rows = slice(start, min(q, start + chunk))
        z = shift(transformed(m.weights[:, :, rows], heads), rows)  # (B, q, K, D)
        own = stream[:, rows, None] if m.placement == "sandwich" else shift(stream[:, rows, None], rows)
        if self_attention:
            idx = torch.arange(rows.start, rows.stop, device=z.device)
            z[:, torch.arange(len(idx)), idx] += own[:, :, 0]
        else:
            z = torch.cat([own, z], 2)
        shares[:, rows] = _distance_shares(after[:, rows], z)
    return shares, after


def transformed(weights: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """weights (B, H, q, K), heads (B, K, H, D) -> (B, q, K, D) ``T_i(j) = sum_h a^h_ij W_O^h v^h_j``."""
    return torch.einsum("bhqk,bkhd->bqkd", weights.float(), heads)


def head_outputs(m: Mixing) -> torch.Tensor:
    """(B, K, H, D) each head's value vectors through its columns of the output projection, without its bias: from
    the weight of a linear projection, else (any other module) by calling it on each head's block alone."""
    values = _per_head(m)  # (B, K, H, dh)
    _, _, h, dh = values.shape
    weight = _out_weight(m.out_proj)  # (D, H * dh)
    if weight is not None:
        return torch.einsum("bkhe,dhe->bkhd", values, weight.float().to(values.device).view(-1, h, dh))
    eye = torch.eye(h, device=values.device)
    blocks = (eye[None, None, :, :, None] * values[:, :, None]).flatten(-2)  # (B, K, H, H * dh): head g alone
    return _project(m.out_proj, blocks) - _project(m.out_proj, torch.zeros_like(blocks[:1, :1, :1]))


def _out_weight(module: nn.Module) -> torch.Tensor | None:
    """(D, H * dh) the weight of a plain linear projection (GPT-2's Conv1D stores it transposed); None for any
    other module, or a weight not materialised here (offloaded)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.device.type == "meta" or not weight.is_floating_point():
        return None
    if isinstance(module, nn.Linear):
        return weight
    return weight.T if type(module).__name__ == "Conv1D" else None


def _per_head(m: Mixing) -> torch.Tensor:
    """(B, K, H, dh) value vectors per attention head (grouped key/value heads repeated)."""
    heads, kv_heads = m.weights.shape[1], m.values.shape[2]
    if heads % kv_heads:
        raise ModelConformanceError(f"alti_plus: {heads} attention heads do not share {kv_heads} value heads evenly.")
    return m.values.float().repeat_interleave(heads // kv_heads, dim=2)


def _project(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` in the module's dtype, back in float32 on x's device."""
    weight = getattr(module, "weight", None)
    dtype = weight.dtype if weight is not None and weight.is_floating_point() else x.dtype
    return module(x.to(dtype)).float().to(x.device)


def _attention_output(m: Mixing, heads: torch.Tensor, stream: torch.Tensor, where: str) -> torch.Tensor:
    """(B, Q, D) the attention's output, checked against the decomposition ``sum_j T_i(j) + b`` (``heads``:
    (B, K, H, D) from :func:`head_outputs`); a module that adds the stream itself (Bloom's) has it taken off."""
    width = m.weights.shape[1] * m.values.shape[-1]  # H x dh, the projection's input
    bias = _project(m.out_proj, heads.new_zeros(1, 1, width))  # (1, 1, D)
    rebuilt = torch.einsum("bhqk,bkhd->bqd", m.weights.float(), heads) + bias  # (B, Q, D)
    output = m.output.float()
    tol = _tolerance(output, m.output.dtype)
    if (rebuilt - output).abs().max() <= tol:
        return output
    if (rebuilt - (output - stream)).abs().max() <= tol:
        return output - stream
    err = float((rebuilt - output).abs().max())
    raise ModelConformanceError(
        f"alti_plus: the attention of {where} does not output sum_j a_ij W_O v_j + b (max error {err:.2e}): this "
        "family's attention is not a weighted sum of its value vectors through one output projection."
    )


def _tolerance(x: torch.Tensor, dtype: torch.dtype) -> float:
    rel = 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2
    return rel * (1.0 + float(x.abs().max()))


def _linearised_norm(m: Mixing, stream: torch.Tensor, output: torch.Tensor, where: str):
    """(shift, after): ``shift(z, rows)`` maps contribution vectors (B, q, ..., D) of rows ``rows``
    through the norm with each row's scale fixed; ``after`` (B, Q, D) is the stream after the attention."""
    raw = _reads_stream(m, stream)
    if m.placement == "pre" or (m.placement == "auto" and not (raw and _reads(m, stream + output))):
        return (lambda z, rows: z), stream + output
    assert m.norm is not None and m.norm_io is not None
    norm_in, norm_out = (t.float() for t in m.norm_io)
    sandwich = m.placement == "sandwich"
    if not _reads(m, output if sandwich else stream + output):
        raise ModelConformanceError(
            f"alti_plus: the norm after the attention of {where} does not read the "
            f"{'attention output' if sandwich else 'stream + attention output'} ({m.placement} placement)."
        )
    if not sandwich and not raw:
        raise ModelConformanceError(
            f"alti_plus: the attention of {where} reads a normalised copy of the stream, not the stream itself: the "
            "family's norm_placement is not 'post'."
        )
    shift = _norm_linearisation(m.norm, norm_in, norm_out)
    return shift, stream + norm_out if sandwich else norm_out


def _reads(m: Mixing, expected: torch.Tensor) -> bool:
    """Whether the norm after the attention was given ``expected`` (B, Q, D)."""
    return m.norm_io is not None and bool(
        torch.allclose(m.norm_io[0].float(), expected, atol=_tolerance(expected, m.norm_io[0].dtype))
    )


def _norm_linearisation(norm: nn.Module, u: torch.Tensor, y: torch.Tensor):
    """``shift(z, rows)``: the norm of rows u (B, Q, D) (outputs y) as a linear map with each row's scale fixed.
    LayerNorm: ``w (z - mean z) / sigma_i``; an RMS norm: ``g z / s_i``, with its gain g read by one probe and
    ``s_i = |g u_i| / |y_i|``."""
    if isinstance(norm, nn.LayerNorm):
        eps = norm.eps
        sigma = (u.var(-1, unbiased=False, keepdim=True) + eps).sqrt()  # (B, Q, 1)
        w = norm.weight.float() if norm.weight is not None else torch.ones_like(u[0, 0])

        def layer_norm(z, rows):
            s = sigma[:, rows].view(sigma.shape[0], -1, *([1] * (z.dim() - 3)), 1)
            return w * (z - z.mean(-1, keepdim=True)) / s

        return layer_norm
    probe = 1e3
    gain = _project(norm, torch.full_like(u[:1, :1], probe))[0, 0] / probe  # (D,)
    scale = (gain * u).norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True).clamp_min(1e-30)

    def rms_norm(z, rows):
        s = scale[:, rows].view(scale.shape[0], -1, *([1] * (z.dim() - 3)), 1)
        return gain * z / s

    return rms_norm


def _distance_shares(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """y (B, q, D) outputs, z (B, q, K, D) contributions -> (B, q, K) ``max(0, |y|_1 - |y - z|_1)`` normalised
    over K (rows with nothing: 0)."""
    raw = (y.abs().sum(-1)[..., None] - (y[:, :, None] - z).abs().sum(-1)).clamp_min(0)
    total = raw.sum(-1, keepdim=True)
    return raw / torch.where(total == 0, torch.ones_like(total), total)
