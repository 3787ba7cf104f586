"""Node loss, said in our words: which nodes can run an attribution actor, watched while a run is on Ray.

What recovers what (the rest of the protocol is in runner.py's docstring):
- Ray restarts a lost actor on any node that can host it, and Ray Data resubmits the shards that were in flight
  on it, without limit (``max_restarts=-1``, ``max_task_retries=-1``: Ray Data's defaults for an actor pool, which
  is what a run wants, so the runner does not pass them (passing them is deprecated in Ray 2.60);
  ``tests/test_nodes.py`` pins these defaults, so an upgrade that changes them fails there). A shard that fails
  with an error of ours (an exception in a block) is not retried: the run stops with its one line;
- our commit protocol makes a resubmitted shard safe: its objects and table files have deterministic names and
  its marker is written last, so a shard cut off mid-way is simply written again and never counted twice.

Ray reports a lost node with its own multi-line messages (``(raylet) ... marked dead``, the raylet log's last
lines, "actor temporarily unavailable" per retry); :func:`node_changes` turns what changed into one line each.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

NO_HOST = "no actor alive: waiting for nodes; Ctrl-C to stop, rerun to resume"


def hosts(nodes: list[dict], cpus: float, gpus: float) -> dict[str, str]:
    """node id -> address of the alive nodes whose resources fit one actor (``ray.nodes()`` entries)."""
    out = {}
    for node in nodes:
        res = node.get("Resources") or {}
        if node.get("Alive") and res.get("CPU", 0) >= cpus and res.get("GPU", 0) >= gpus:
            out[node["NodeID"]] = node.get("NodeManagerAddress", "?")
    return out


def node_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """One line per change between two :func:`hosts` snapshots."""
    lines = [
        f"node lost: {address} ({len(after)} left that can run actors); its shards in flight are retried"
        for node, address in sorted(before.items())
        if node not in after
    ]
    if before and not after:
        lines.append(NO_HOST)
    gained = [address for node, address in sorted(after.items()) if node not in before]
    if gained:
        lines.append(f"node joined: {', '.join(gained)} ({len(after)} can run actors)")
    return lines


class NodeWatch:
    """A driver thread: polls ``list_nodes`` every ``every_s`` and says each change in one line."""

    def __init__(
        self,
        list_nodes: Callable[[], list[dict]],
        cpus: float,
        gpus: float,
        say: Callable[[str], None] | None = None,
        every_s: float = 5.0,
    ) -> None:
        self.list_nodes, self.cpus, self.gpus, self.every_s = list_nodes, cpus, gpus, every_s
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NodeWatch:
        self._thread = threading.Thread(target=self._watch, name="node-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _snapshot(self) -> dict[str, str] | None:
        try:
            return hosts(self.list_nodes(), self.cpus, self.gpus)
        except Exception:  # the cluster's control plane is busy or gone: try again at the next beat
            return None

    def _watch(self) -> None:
        before = self._snapshot()
        while not self._stop.wait(self.every_s):
            after = self._snapshot()
            if before is not None and after is not None:
                for line in node_changes(before, after):
                    self.say(line)
            before = after if after is not None else before
