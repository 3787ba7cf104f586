"""Per-batch inputs of the step functions, prepared once before the method runs: the contrast side (at most one
extra forward) and each function's ``prepare`` (e.g. MC dropout's forwards) -> a :class:`StepContext`."""

from __future__ import annotations

from inseq_ray.contrast import prepare_contrast
from inseq_ray.engine import MethodContext, StepContext
from inseq_ray.settings import AttributeSettings
from inseq_ray.step_scores import is_contrastive

Labels = list[dict[int, str]] | None  # per sequence: target position -> contrastive token label


def with_step_inputs(
    ctx: MethodContext, tokenizer, settings: AttributeSettings, idx: list[int], decoder_start: int | None
) -> tuple[MethodContext, Labels]:
    """``ctx`` with its step context prepared, and the contrastive token labels of each sequence (if any)."""
    fns = [(settings.fn, settings.fn_kw, True)]
    fns += [(f, settings.scores_kw.get(n, {}), False) for n, f in settings.score_fns.items()]
    extras = {}
    for f, kw, _ in fns:  # e.g. MC dropout's forwards at the real inputs
        if hasattr(f, "prepare"):
            extras.update(f.prepare(ctx, **kw))
    step, labels = StepContext(extras=extras), None
    if settings.contrast is not None:
        need_logits = any(
            is_contrastive(f) and (not attributed or settings.contrast.force_inputs) for f, _, attributed in fns
        )
        contrast = prepare_contrast(
            ctx.adapter, tokenizer, ctx.batch, settings.contrast.select(idx), decoder_start, need_logits
        )
        step = StepContext(contrast.ids, contrast.logits, settings.contrast.force_inputs, extras)
        labels = contrast.labels if settings.contrast.targets is not None else None
    return ctx.derive(step_context=step), labels
