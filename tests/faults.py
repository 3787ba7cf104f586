"""Fault-injecting blocks for the pipeline's tests (injected with ``run(cfg, blocks=...)``)."""

from __future__ import annotations

import os
import sys
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


class HoldAfterFirst:
    """Each worker (actor) lets its first shard through, then holds every later one until ``<folder>/go`` exists:
    a run that stays in flight for as long as a test needs (actors busy, shards uncommitted), ended by an event."""

    needs, provides = ("records",), ("records",)

    def __init__(self, cfg, folder: str) -> None:
        self.go, self.passed = Path(folder) / "go", 0

    def __call__(self, batch: ShardBatch) -> ShardBatch:
        import time

        while self.passed >= 1 and not self.go.exists():
            time.sleep(0.05)
        self.passed += 1
        return batch


def run_held(inp: str, out: str, folder: str, actors: int = 2) -> None:
    """A driver (``python -c``) running the default blocks with :class:`HoldAfterFirst` on Ray at RAY_ADDRESS."""
    import functools

    import ray

    from inseq_ray.pipeline.blocks import BLOCKS
    from inseq_ray.pipeline.config import PipelineConfig
    from inseq_ray.pipeline.report import print_summary
    from inseq_ray.pipeline.runner import init_ray, run

    init_ray()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module travels to the actors by value
    cfg = PipelineConfig(input=inp, output=out, shard_bytes=1024, num_actors=actors)
    hold = functools.partial(HoldAfterFirst, folder=folder)
    print_summary(run(cfg, blocks=(BLOCKS[0], hold, *BLOCKS[1:])))
