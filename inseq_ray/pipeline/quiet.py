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
