"""Fault-injecting blocks for the pipeline's tests (injected with ``run(cfg, blocks=...)``)."""

from __future__ import annotations

import os
from pathlib import Path

from inseq_ray.pipeline.data import ShardBatch


class KillOnce:
    """Kills its process once (``<folder>/fired`` remembers), where it stands in the block list.

    Placed after WriteObjects and before CommitShard, it leaves a shard's objects written and
    uncommitted: the case the commit protocol must recover from.
    """

    needs, provides = ("results",), ()

    def __init__(self, cfg, folder: str) -> None:
        self.fired = Path(folder) / "fired"

    def __call__(self, batch: ShardBatch) -> ShardBatch:
        if not self.fired.exists():
            self.fired.write_text(str(os.getpid()))
            os._exit(1)
        return batch


def count_forwards(monkeypatch, adapter, method: str = "states") -> list[int]:
    """The rows of every forward ``adapter.<method>`` runs from now on (the forward itself still runs)."""
    rows: list[int] = []
    real = getattr(adapter, method)

    def counting(inputs):
        rows.append(inputs.target_ids.shape[0])
        return real(inputs)

    monkeypatch.setattr(adapter, method, counting)
    return rows
