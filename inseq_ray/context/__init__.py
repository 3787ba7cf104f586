"""Context reliance (PECoRe, Sarti et al., ICLR 2024): Inseq's ``attribute-context``, batched.

Two steps over a batch of examples: **CTI** (context-sensitive token identification) scores every generated token
by a contrastive step function between the model's next-token distributions with and without the context (one
attribution call with the ``dummy`` method: forwards only) and selects tokens above mean + k x std (or the top k);
**CCI** (contextual cues imputation) attributes each selected token, with the context, back to the context tokens
(one attribution call over every selected token of every example, each attributing only its own step).
Names resolve on first use, so the CLI's argument parsing does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ContextArgs": "inseq_ray.context.args",
    "AttributeContextOutput": "inseq_ray.context.output",
    "CCIOutput": "inseq_ray.context.output",
    "attribute_context": "inseq_ray.context.procedure",
}

__all__ = ["AttributeContextOutput", "CCIOutput", "ContextArgs", "attribute_context"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'inseq_ray.context' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
