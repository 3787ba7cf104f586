"""Inseq's ``AttributeContextOutput`` and ``CCIOutput``, as plain data with the same JSON keys."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CCIOutput:
    """One context-sensitive token: its position among the output current tokens (``cti_idx``), token and CTI
    score, the contextual (and, with a contrastive attributed function, contextless) output it was attributed in,
    and the attribution score of every input-context and output-context token."""

    cti_idx: int
    cti_token: str
    cti_score: float
    contextual_output: str
    contrast_token: str | None = None
    contextless_output: str | None = None
    input_context_scores: list[float] | None = None
    output_context_scores: list[float] | None = None
    step_total: float | None = field(default=None, compare=False)  # sum of |scores| of the step (not saved)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["step_total"]
        return out

    @property
    def context_share(self) -> float | None:
        """The share of the step's |attribution| on the context tokens (None without the step's total)."""
        scores = [*(self.input_context_scores or []), *(self.output_context_scores or [])]
        return sum(abs(s) for s in scores) / self.step_total if self.step_total else None


@dataclass
class AttributeContextOutput:
    """The whole procedure for one example (Inseq's structure; ``info`` holds the arguments)."""

    input_context: str | None = None
    input_context_tokens: list[str] | None = None
    output_context: str | None = None
    output_context_tokens: list[str] | None = None
    output_current: str | None = None
    output_current_tokens: list[str] | None = None
    cti_scores: list[float] | None = None
    cci_scores: list[CCIOutput] = field(default_factory=list)
    info: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("cci_scores", "info")}
        out["cci_scores"] = [c.to_dict() for c in self.cci_scores]
        if self.info:
            out["info"] = self.info
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttributeContextOutput:
        """Read ``to_dict``'s structure (ours or Inseq's saved JSON)."""
        keep = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k not in ("cci_scores", "info")}
        return cls(**keep, cci_scores=[CCIOutput(**c) for c in d.get("cci_scores", [])], info=d.get("info"))

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=4)
