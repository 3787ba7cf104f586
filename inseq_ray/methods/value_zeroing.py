"""Value zeroing (Mohebbi et al., 2023): how much each layer's output at a step's row changes when one token's
attention value vectors are zeroed, with every layer fed the clean output of the layer before it.

For attributed token j and layer l: ``d_l(j, p) = 1 - cos(h_l(p), h_l^{-j}(p))`` (or the euclidean distance)
at the row p that predicts step t, where ``h_l^{-j}`` is layer l's output with token j's values zeroed in its
attention and its input the clean ``h_{l-1}`` (the last layer: the model's final, normed hidden state). Scores
under ``min_score_threshold`` become 0; each (step, layer) is normalised to sum to 1 over the side's tokens.
Target side: decoder self-attention (causal: step t only sees its prefix). Source side: the decoder's
cross-attention over the source. Output ``[tokens, steps, layers]`` as Inseq's.

Forward budget per batch: 1 clean forward, then ceil(tokens / ``patterns_per_forward``) forwards per attributed
side, each over ``patterns_per_forward`` x batch rows, for every step and layer at once (Inseq: one forward per
token of the full sequence). Independent of the attributed function: like attention, it explains the
model's internals at each step, not a score.
"""

from __future__ import annotations

import torch

from inseq_ray.aggregation import select_indices
from inseq_ray.engine import MethodContext, MethodResult
from inseq_ray.models.values import ValueSite, decoder_blocks, patched_blocks, value_sites, zeroed
from inseq_ray.rows import gather_rows

SIMILARITY_METRICS = ("cosine", "euclidean")


def value_zeroing(
    ctx: MethodContext,
    similarity_metric: str = "cosine",
    decoder_zeroed_units_indices=None,
    cross_zeroed_units_indices=None,
    encoder_zeroed_units_indices=None,
    output_decoder_self_scores: bool | None = None,
    output_encoder_self_scores: bool | None = None,
    min_score_threshold: float = 1e-5,
    patterns_per_forward: int = 16,
) -> MethodResult:
    """Value-zeroing scores (T, B, L, n_layers) per attributed side; see the module docstring.

    ``*_zeroed_units_indices`` select the value heads zeroed as Inseq's: None (all), an int, a (start, end)
    range, a list, or a dict {layer: heads} (layers not in it are not zeroed). Inseq's ``sequence_scores`` are
    not computed: ``encoder_zeroed_units_indices`` and ``output_encoder_self_scores=True`` are refused, and so is
    ``output_decoder_self_scores=True`` on an encoder-decoder without ``attribute_target=True`` (with it, the
    decoder self-attention scores are the target attributions); ``False`` is accepted for both.
    """
    _check(ctx, similarity_metric, encoder_zeroed_units_indices, output_decoder_self_scores, output_encoder_self_scores)
    adapter = ctx.adapter
    blocks = decoder_blocks(adapter)
    time_first = adapter.activation_batch_axis((type(blocks[0]),)) == 1
    rows = (ctx.plan.positions - 1).clamp(min=0)  # (B, T) rows predicting each step
    with torch.no_grad():
        with patched_blocks(list(blocks)[:-1], None, time_first) as clean:  # recorded only
            final = adapter.last_hidden_states(ctx.forward_inputs({}, 1))  # (B, L, H')
        clean_rows = [gather_rows(h.to(rows.device), rows).double() for h in [*clean, final]]  # n_layers x (B, T, H)
        out = {}
        for name in ctx.attributed:
            kind, selection = (
                ("cross", cross_zeroed_units_indices) if name == "source" else ("self", decoder_zeroed_units_indices)
            )
            sites = value_sites(adapter, blocks, kind)
            zeroing = (blocks, clean, sites, _heads(selection, sites), rows, time_first)
            scores = _side_scores(ctx, name, zeroing, clean_rows, similarity_metric, patterns_per_forward)
            out[name] = _normalized(scores, ctx.plan.valid, min_score_threshold)
    return MethodResult(out, dims=("layers",))


def _side_scores(ctx, name: str, zeroing: tuple, clean_rows: list, metric: str, per_forward: int) -> torch.Tensor:
    """(T, B, L, n_layers) distances of side ``name``: each token's values zeroed in turn, ``per_forward`` tokens
    per forward (``zeroing``: the arguments of :func:`_corrupted_rows` after ``ctx``, less the positions)."""
    blocks, clean, sites, heads, rows, time_first = zeroing
    length = ctx.embeds[name].shape[1]
    device = clean_rows[-1].device
    scores = torch.zeros((ctx.n_steps, ctx.batch.size, length, len(blocks)), device=device)
    for start in range(0, length, per_forward):
        positions = torch.arange(start, min(length, start + per_forward), device=device)
        corrupted = _corrupted_rows(ctx, blocks, clean, sites, heads, positions, rows, time_first)
        d = torch.stack(
            [_distance(c[None], k, metric) for c, k in zip(clean_rows, corrupted, strict=True)], -1
        )  # (R, B, T, n_layers)
        scores[:, :, positions] = d.permute(2, 1, 0, 3).float()
    return scores


def _check(
    ctx, similarity_metric, encoder_zeroed_units_indices, output_decoder_self_scores, output_encoder_self_scores
):
    """The arguments value zeroing refuses, each with its fix."""
    if similarity_metric not in SIMILARITY_METRICS:
        raise ValueError(f"similarity_metric={similarity_metric!r}: valid are {', '.join(SIMILARITY_METRICS)}.")
    if encoder_zeroed_units_indices is not None or output_encoder_self_scores:
        raise ValueError(
            "encoder_zeroed_units_indices / output_encoder_self_scores: inseq_ray's value_zeroing scores the decoder "
            "(self- and cross-attention); encoder self-attention scores are not computed, drop the argument."
        )
    if output_decoder_self_scores and ctx.adapter.is_encoder_decoder and "target" not in ctx.attributed:
        raise ValueError(
            "output_decoder_self_scores: Inseq's separate decoder self-attention scores are not produced; pass "
            "attribute_target=True to get them as target_attributions."
        )
    if ctx.site is not None:
        raise ValueError("value_zeroing scores every layer itself: it takes no target_layer.")


def _corrupted_rows(ctx, blocks, clean, sites, heads, positions, rows, time_first) -> list[torch.Tensor]:
    """Per layer, (R, B, T, H) its output at the step rows with token ``positions[k]``'s values zeroed in copy k
    (R = len(positions)), every block fed the clean output of the one before (the last layer: the final state)."""
    r, b = positions.numel(), ctx.batch.size
    repeated = [h.repeat(r, 1, 1) for h in clean]  # blocks 0..n-2 pass their clean output on
    with zeroed(sites, heads, positions, b, time_first), patched_blocks(blocks[:-1], repeated, time_first) as seen:
        final = ctx.adapter.last_hidden_states(ctx.forward_inputs({}, r))
    rep_rows = rows.repeat(r, 1)
    return [gather_rows(h.to(rows.device), rep_rows).double().view(r, b, rows.shape[1], -1) for h in [*seen, final]]


def _distance(clean: torch.Tensor, corrupted: torch.Tensor, metric: str) -> torch.Tensor:
    """(..., H) pairs -> (...) distances: 1 - cosine similarity, or the euclidean distance."""
    if metric == "cosine":
        return 1 - torch.nn.functional.cosine_similarity(clean, corrupted, dim=-1)
    return torch.linalg.vector_norm(clean - corrupted, dim=-1)


def _normalized(scores: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """(T, B, L, n_layers) distances -> thresholded, each (step, layer) summing to 1 over tokens; empty cells 0."""
    scores = torch.where(scores < threshold, torch.zeros_like(scores), scores)
    scores = scores * valid.T[:, :, None, None]
    total = scores.sum(dim=2, keepdim=True)
    return scores / torch.where(total == 0, torch.ones_like(total), total)


def _heads(selection, sites: list[ValueSite]) -> list[list[int]]:
    """Per block, the value heads to zero (Inseq's ``*_zeroed_units_indices`` forms)."""
    if isinstance(selection, dict):
        for layer in selection:
            if not isinstance(layer, int) or not -len(sites) <= layer < len(sites):
                raise ValueError(f"zeroed_units_indices: layer {layer!r} out of range for {len(sites)} layers.")
        chosen = {k % len(sites): v for k, v in selection.items()}
        return [select_indices(chosen[i], s.n_heads, "value heads") if i in chosen else [] for i, s in enumerate(sites)]
    return [select_indices(selection, s.n_heads, "value heads") for s in sites]
