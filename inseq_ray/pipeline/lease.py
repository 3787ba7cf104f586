"""Driver leases: who is working on a run prefix right now.

Every driver that claims or joins a prefix first writes ``_drivers/<id>.json`` (its fingerprint, host, pid and a
heartbeat time) and renews it every :data:`RENEW_S` seconds until it ends. A lease renewed within
:data:`TTL_S` is live. Two decisions read them:

- a driver whose start failed removes ``_run.json`` (to leave the prefix reusable) only when no other live
  lease exists: a joiner that is still working keeps the claim;
- a driver that finds the prefix free but a live *claimed* lease of another configuration on it is refused.

A lease says ``claimed`` only once its driver holds the run (:meth:`DriverLease.mark_claimed`): two drivers of
different configurations starting at once both register first, and the one whose claim loses must not make
the winner give up too (both would be refused).

Writing the lease *before* claiming closes the race with a driver that is deleting a failed claim: either the
deleter sees the new lease, or the newcomer sees no ``_run.json`` and claims it itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid

from inseq_ray.pipeline.storage import Storage

FOLDER = "_drivers"
RENEW_S = 5.0  # heartbeat period
TTL_S = 30.0  # a lease not renewed for this long belongs to a dead driver (a killed driver's shards wait this long)


class DriverLease:
    """This driver's lease on ``storage``'s prefix; ``with`` it to register, renew in the background and release."""

    def __init__(self, storage: Storage, fingerprint: str, renew_s: float = RENEW_S) -> None:
        self.storage, self.fingerprint, self.renew_s = storage, fingerprint, renew_s
        self.id = uuid.uuid4().hex[:16]
        self.claimed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        record = {
            "driver": self.id,
            "fingerprint": self.fingerprint,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
            "claimed": self.claimed,
        }
        self.storage.write_json(record, FOLDER, f"{self.id}.json")

    def __enter__(self) -> DriverLease:
        self._write()
        self._thread = threading.Thread(target=self._renew, name="driver-lease", daemon=True)
        self._thread.start()
        return self

    def mark_claimed(self) -> None:
        """Say (now, not at the next beat) that this driver holds the run on the prefix."""
        self.claimed = True
        self._write()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            with contextlib.suppress(Exception):  # a missed beat is not a failure; TTL_S spans several
                self._write()

    def release(self) -> None:
        """Stop renewing and remove the lease (best effort: an unreachable store lets it expire instead)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(Exception):
            self.storage.delete(FOLDER, f"{self.id}.json")

    def __exit__(self, *exc) -> None:
        self.release()

    def others(self, now: float | None = None) -> list[dict]:
        """The other drivers' live leases on this prefix."""
        now = time.time() if now is None else now
        out = []
        for name in self.storage.list_names(FOLDER):
            if not name.endswith(".json") or name == f"{self.id}.json":
                continue
            try:
                lease = self.storage.read_json(FOLDER, name)
            except Exception:  # removed between listing and reading: that driver ended
                continue
            if now - float(lease.get("heartbeat", 0)) < TTL_S:
                out.append(lease)
        return out


def describe(lease: dict) -> str:
    """One lease in words, for messages."""
    age = max(0.0, time.time() - float(lease.get("heartbeat", 0)))
    return f"driver pid {lease.get('pid')} on {lease.get('host')} (alive {age:.0f}s ago)"
