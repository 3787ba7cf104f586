"""LIME (Ribeiro et al., 2016) as Inseq's op: a weighted ridge surrogate of each step's function over random
token masks, fitted in closed form on the device for every step of the batch.

Per sentence, ``n_samples`` keep-masks (each token kept with probability 1 - ``mask_prob``) perturb the
attributed embeddings as Inseq's op does: ``x * keep + (1 - keep) * id`` with ``id`` the tokenizer's UNK (or
PAD) id as a scalar. Under causal masking one forward per mask gives f_t of every step, so a step's samples are
the masks restricted to its prefix (the per-step definition draws fresh masks at each step: same
distribution). Per step, as captum's ``LimeBase`` with sklearn's ``Ridge(alpha=1)``: features = the perturbed
embedding values of the step's inputs (L x H), sample weights = the number of feature values left unchanged,
intercept fitted, coefficients = the attribution (granular ``[tokens, steps, hidden]``).

Forward budget per batch: ceil(``n_samples`` / ``patterns_per_forward``) no-grad forwards of
``patterns_per_forward`` x B rows for all steps (Inseq: ``n_samples`` forwards per step).
"""

from __future__ import annotations

import operator
from functools import reduce

import torch

from inseq_ray.engine import MethodContext, MethodResult
from inseq_ray.randomness import RowRandom


def lime(
    ctx: MethodContext,
    n_samples: int = 50,
    mask_prob: float = 0.3,
    mask_token: str = "unk",
    alpha: float = 1.0,
    patterns_per_forward: int = 16,
    generator: torch.Generator | int | None = None,
) -> MethodResult:
    """Ridge-surrogate coefficients (T, B, L, H) per attributed side; see the module docstring."""
    _check(n_samples, mask_prob, alpha)
    if mask_token not in ("unk", "pad"):
        raise ValueError(f"mask_token={mask_token!r}: valid are 'unk', 'pad'.")
    fill = ctx.token_ids.get(mask_token)
    if fill is None:
        raise ValueError(f"lime: the tokenizer has no {mask_token} token; pass mask_token='pad' or 'unk'.")
    b = ctx.batch.size
    keep = lime_masks(ctx, n_samples, mask_prob, ctx.row_random(generator))  # name -> (S, B, L)
    x = {k: ctx.embeds[k][None] for k in ctx.attributed}  # (1, B, L, H)
    perturbed = {k: x[k] * keep[k][..., None] + (1 - keep[k][..., None]) * fill for k in ctx.attributed}
    values = []
    for start in range(0, n_samples, patterns_per_forward):
        chunk = {k: v[start : start + patterns_per_forward] for k, v in perturbed.items()}
        r = next(iter(chunk.values())).shape[0]
        values.append(ctx.attributed_values({k: v.flatten(0, 1) for k, v in chunk.items()}, r).view(r, b, -1))
    y = torch.cat(values).double()  # (S, B, T)
    features = {k: _features(ctx, k) for k in ctx.attributed}  # name -> (B, T, L) bool: the step's inputs
    unchanged = {k: (perturbed[k] == x[k]).sum(-1).double() for k in ctx.attributed}  # (S, B, L)
    out = {k: torch.zeros((ctx.n_steps, b, *x[k].shape[2:]), device=y.device) for k in ctx.attributed}
    for t in range(ctx.n_steps):
        steps = {k: (perturbed[k].double(), features[k][:, t].double()) for k in ctx.attributed}
        weights = reduce(operator.add, ((unchanged[k] * f[None]).sum(-1) for k, (_, f) in steps.items()))  # (S, B)
        coef = ridge(steps, y[:, :, t], weights, alpha)
        for k in ctx.attributed:
            out[k][t] = (coef[k] * ctx.plan.valid[:, t, None, None]).float()
    return MethodResult(out)


def ridge(
    steps: dict[str, tuple[torch.Tensor, torch.Tensor]], y: torch.Tensor, w: torch.Tensor, alpha: float
) -> dict[str, torch.Tensor]:
    """Weighted ridge regression with intercept, per batch row, in its dual form (exact; S samples << features).

    steps: name -> (X (S, B, L, H) samples, used (B, L) which tokens are features); y, w: (S, B).
    Minimises sum_s w_s (y_s - X_s . beta - c)^2 + alpha |beta|^2 -> name -> beta (B, L, H).
    """
    total = w.sum(0).clamp(min=torch.finfo(w.dtype).tiny)  # (B,)
    root = w.sqrt()
    centred = {}
    for k, (x, used) in steps.items():
        mean = torch.einsum("sb,sblh->blh", w, x) / total[:, None, None]
        centred[k] = (x - mean[None]) * used[None, :, :, None] * root[:, :, None, None]  # (S, B, L, H)
    gram = reduce(operator.add, (torch.einsum("sblh,rblh->bsr", a, a) for a in centred.values()))  # (B, S, S)
    z = (root * (y - (w * y).sum(0) / total)).T  # (B, S)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    u = torch.linalg.solve(gram + alpha * eye, z[..., None])[..., 0]  # (B, S)
    return {k: torch.einsum("sblh,bs->blh", a, u) for k, a in centred.items()}


def lime_masks(ctx: MethodContext, n_samples: int, mask_prob: float, rows: RowRandom) -> dict[str, torch.Tensor]:
    """The random draws of LIME, per record (``rows``): name -> (S, B, L) keep-masks, 1 with probability
    1 - ``mask_prob`` on each row's real tokens (padding is kept: it is never a feature)."""
    ref = ctx.embeds[ctx.attributed[0]]
    out = {}
    for k in ctx.attributed:
        u = rows.rand((n_samples,), ctx.real_lengths(k), ctx.embeds[k].shape[1], f"lime mask {k}")  # (S, B, L)
        out[k] = (u >= mask_prob).to(ref.device, ref.dtype)
    return out


def _features(ctx: MethodContext, name: str) -> torch.Tensor:
    """(B, T, L) which tokens of side ``name`` are inputs of each step: the real source tokens, or the target
    prefix (positions before the step's target)."""
    b = ctx.batch
    if name == "source":
        return b.side("source")[1].bool()[:, None, :].expand(-1, ctx.n_steps, -1)
    positions = torch.arange(b.target_ids.shape[1], device=b.target_ids.device)
    return (positions[None, None, :] < ctx.plan.positions[:, :, None]) & b.target_mask.bool()[:, None, :]


def _check(n_samples, mask_prob, alpha) -> None:
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}.")
    if not 0 <= mask_prob < 1:
        raise ValueError(f"mask_prob must be in [0, 1), got {mask_prob!r}.")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}.")
