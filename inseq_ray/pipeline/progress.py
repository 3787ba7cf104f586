"""Progress by records, updated per attributed batch (not per shard), with rate and ETA.

Blocks report through ``ShardBatch.on_records``. Locally that is the bar itself; on Ray the actors add
to a small counter actor that a driver thread polls twice a second. The total is an estimate from the
preflight sample (bytes per record), so the ETA is one too; the bar ends on the exact count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class RecordProgress:
    """A tqdm bar over records; ``add`` may be called from any thread."""

    def __init__(self, total_estimate: int | None, show: bool) -> None:
        from tqdm.auto import tqdm

        self._lock = threading.Lock()
        self.bar = tqdm(total=total_estimate, unit="rec", desc="Attributing", disable=not show, smoothing=0.05)

    def add(self, n: int) -> None:
        with self._lock:
            self.bar.update(n)

    def finish(self, records: int) -> None:
        with self._lock:
            self.bar.total = records
            self.bar.n = records
            self.bar.refresh()
            self.bar.close()


class ProgressCounter:
    """Ray actor: records attributed since the last ``take``."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> None:
        self.count += n

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


def poll_counter(counter, add: Callable[[int], None], stop: threading.Event, every_s: float = 0.5) -> None:
    """Driver thread: move the counter actor's records to the bar until ``stop`` is set."""
    import ray

    while not stop.wait(every_s):
        try:
            add(ray.get(counter.take.remote(), timeout=5))
        except Exception:  # progress is best effort: never fail a run over it
            continue
    try:
        add(ray.get(counter.take.remote(), timeout=5))
    except Exception:
        pass
