"""Shard claims: drivers of one configuration on one prefix split the shards instead of each doing them all.

Before a worker attributes a shard it creates ``_claims/<shard_id>.json`` naming its driver (a conditional
create, like ``_run.json``). A shard already committed, or claimed by another driver whose lease is live
(:mod:`inseq_ray.pipeline.lease`), is skipped; a claim of this driver (an actor retried after a crash) or of a
dead driver is taken over. The claim is removed when the shard ends. A driver that skipped shards waits for
their markers, and attributes any whose claimant died meanwhile. Claims only save work: correctness still
rests on deterministic names and the marker written last, so two workers that both take a shard (two
stealers of one dead claim) write the same files.
"""

from __future__ import annotations

import contextlib
import json
import time

from inseq_ray.pipeline.lease import FOLDER as LEASES
from inseq_ray.pipeline.lease import TTL_S
from inseq_ray.pipeline.storage import Storage

FOLDER = "_claims"


def lease_alive(storage: Storage, driver: str, now: float | None = None) -> bool:
    """Whether ``driver``'s lease was renewed within :data:`TTL_S`."""
    if not driver:
        return False
    try:
        lease = storage.read_json(LEASES, f"{driver}.json")
    except Exception:  # no lease: that driver ended (or never was)
        return False
    return (time.time() if now is None else now) - float(lease.get("heartbeat", 0)) < TTL_S


def holder(storage: Storage, shard_id: str) -> str:
    """The driver id in a shard's claim ("" if none or unreadable)."""
    try:
        return str(storage.read_json(FOLDER, f"{shard_id}.json").get("driver", ""))
    except Exception:
        return ""


def claim_shard(storage: Storage, shard_id: str, driver: str) -> bool:
    """True when ``driver`` should attribute the shard now (see the module docstring)."""
    if storage.exists("_shards", f"{shard_id}.json"):
        return False
    record = json.dumps({"driver": driver, "at": time.time()}).encode()
    if storage.create_exclusive(record, FOLDER, f"{shard_id}.json"):
        return True
    current = holder(storage, shard_id)
    if current != driver and lease_alive(storage, current):
        return False
    storage.write_bytes(record, FOLDER, f"{shard_id}.json")  # ours already, or its driver is gone: take it over
    return True


def release_shard(storage: Storage, shard_id: str) -> None:
    with contextlib.suppress(Exception):
        storage.delete(FOLDER, f"{shard_id}.json")


def orphaned(storage: Storage, shard_ids: list[str]) -> list[str]:
    """Of ``shard_ids`` (skipped, not yet committed), those whose claimant is no longer alive."""
    return [s for s in shard_ids if not lease_alive(storage, holder(storage, s))]
