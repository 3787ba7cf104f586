"""Row selection over (N, L, H) states: the rows that predict each step's target."""

from __future__ import annotations

import torch


def gather_rows(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states (N, L, H), positions (N, T) -> (N, T, H) rows at those positions (negatives -> 0)."""
    pos = positions.clamp(min=0)
    return states.gather(1, pos[..., None].expand(-1, -1, states.shape[-1]))
