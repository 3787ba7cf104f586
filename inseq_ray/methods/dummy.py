"""``dummy``: no attribution, only the step scores (Inseq's ``DummyAttribution``; what context-sensitivity
detection runs): one forward per batch for the scores, no backward pass."""

from __future__ import annotations

from inseq_ray.engine import MethodContext, MethodResult


def dummy(ctx: MethodContext) -> MethodResult:
    """No attributions (the outputs' ``source_attributions`` and ``target_attributions`` are None)."""
    return MethodResult({}, dims=())
