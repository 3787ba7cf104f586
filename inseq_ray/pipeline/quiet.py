"""Drop Ray's known-harmless C++ log lines from this process's stderr (unless ``--verbose``).

Ray's core worker logs an ERROR line for every Ray Data actor ("has constructor arguments in the
object store", ray#53727) straight to file descriptor 2, below Python's logging. A pipe on fd 2 with a
forwarding thread drops those lines and passes everything else through at once (progress bars included).
It stays for the life of the process: child processes may hold the pipe, so it must keep being read.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable

NOISE = (b"has constructor arguments in the object store",)
_state = {"installed": False}


def filter_stderr(noise: tuple[bytes, ...] = NOISE) -> None:
    """Install the filter once per process (no-op where stderr has no file descriptor)."""
    if _state["installed"]:
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return
    sys.stderr.flush()
    original = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    threading.Thread(target=_pump, args=(read_end, original, noise), daemon=True, name="stderr-filter").start()
    _state["installed"] = True


def _pump(read_end: int, out: int, noise: tuple[bytes, ...]) -> None:
    pending = b""
    while chunk := os.read(read_end, 65536):
        parts = re.split(rb"(?<=[\r\n])", pending + chunk)
        pending = parts.pop()
        for part in parts:
            if not any(n in part for n in noise):
                os.write(out, part)
        if pending and not pending.startswith(b"["):  # not a C++ log line: show partial output (progress) now
            os.write(out, pending)
            pending = b""
    if pending:
        os.write(out, pending)


RAY_RECOVERY_NOISE = (
    "has been marked dead",  # a lost node (followed by its raylet log's last lines)
    "Raylet is terminated",  # the same, seen from the node's own raylet
    "actor is temporarily unavailable",  # each retry of a shard that was in flight on it
    "task will be retried",
)


def mute_ray_error_stream(noise: tuple[str, ...] = RAY_RECOVERY_NOISE) -> Callable[[], None]:
    """Ray's driver prints the errors its cluster publishes (a dead node with 20+ lines of its raylet log, one
    line per retried call) from a thread, through ``ray._private.worker.print_to_stdstream``. Without
    ``--verbose`` those about recovery are dropped (:class:`~inseq_ray.pipeline.nodes.NodeWatch` says what
    happened in one line) and any other keeps its first line. Returns the function that restores Ray's own."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream

    def first_lines_only(data: dict, ignore_prefix: bool) -> None:
        lines = [str(line).strip().splitlines()[0] for line in data.get("lines", []) if str(line).strip()]
        kept = [line for line in lines if not any(n in line for n in noise)]
        if kept:
            original({**data, "lines": kept}, ignore_prefix)

    ray_worker.print_to_stdstream = first_lines_only
    return lambda: setattr(ray_worker, "print_to_stdstream", original)
