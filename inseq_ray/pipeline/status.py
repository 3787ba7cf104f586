"""``inseq-ray status RUN_URL``: how far, how fast, what failed, from the run prefix alone.

Reads only what the run writes as it goes (``_run.json``, the ``_shards/`` markers with their timing, the
``_failed/`` markers, the ``_drivers/`` leases, ``manifest.json``), so it works from any machine, while the
job runs (also after ``ray job submit``, when the driver's terminal is elsewhere) and after it ends.
:func:`summarize` is pure; :func:`read_status` does the reading; :func:`render` the one screen.
"""

from __future__ import annotations

import json
import time
from typing import Any

from inseq_ray.pipeline.lease import TTL_S
from inseq_ray.pipeline.storage import Storage
from inseq_ray.redact import redact_url

RECENT_SHARDS = 20  # the current rate is taken over the last this many committed shards


def read_status(url: str, now: float | None = None) -> dict[str, Any]:
    """The status of the run at ``url`` (see :func:`summarize`); a prefix without ``_run.json`` is no run."""
    storage = Storage(url)
    if not storage.exists("_run.json"):
        raise ValueError(f"{redact_url(storage.prefix)}: no _run.json, so no run was started there (check the URL).")
    run = storage.read_json("_run.json")
    markers = _read_all(storage, "_shards")
    failures = _read_all(storage, "_failed")
    leases = _read_all(storage, "_drivers")
    manifest = storage.read_json("manifest.json") if storage.exists("manifest.json") else None
    return summarize(redact_url(storage.prefix), run, markers, failures, leases, manifest, now)


def _read_all(storage: Storage, folder: str) -> list[dict]:
    """Every JSON file directly under ``folder`` (concurrent reads on object stores)."""
    names = [n for n in storage.list_names(folder) if n.endswith(".json")]
    if not names:
        return []
    paths = [storage.path(folder, n) for n in names]
    try:
        blobs = storage.fs.cat(paths, on_error="omit")
    except FileNotFoundError:
        return []
    out = []
    for data in blobs.values():
        try:
            out.append(json.loads(data))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # being replaced right now: the next look sees it
    return out


def summarize(
    prefix: str,
    run: dict,
    markers: list[dict],
    failures: list[dict],
    leases: list[dict],
    manifest: dict | None,
    now: float | None = None,
) -> dict[str, Any]:
    """One dict: state, shards committed/planned, records ok/errors by reason, rates, ETA, failures, drivers."""
    now = time.time() if now is None else now
    planned = list(run.get("shards") or [])
    committed = {m["shard_id"] for m in markers}
    live = [d for d in leases if now - float(d.get("heartbeat", 0)) < TTL_S]
    rate = _rates(markers, now)
    total_bytes = sum(int(f.get("size") or 0) for f in (run.get("inputs") or {}).values())
    done_bytes = sum(int(m.get("input_bytes") or 0) for m in markers)
    eta = None
    if manifest is None and rate["bytes_per_s"] and total_bytes > done_bytes:
        eta = now + (total_bytes - done_bytes) / rate["bytes_per_s"]
    state = "complete" if manifest else ("running" if live else ("stopped" if markers or failures else "starting"))
    config = run.get("config") or {}
    return {
        "run": prefix,
        "state": state,
        "model": config.get("model"),
        "method": config.get("method"),
        "fingerprint": run.get("fingerprint"),
        "shards": {"committed": len(committed & set(planned)) if planned else len(committed), "planned": len(planned)},
        "records": _records(markers),
        "input_bytes": {"done": done_bytes, "total": total_bytes},
        **rate,
        "eta": eta,
        "failed_shards": sorted(
            (
                {k: f.get(k) for k in ("shard_id", "error", "at", "worker")}
                for f in failures
                if f.get("shard_id") not in committed
            ),
            key=lambda f: f["shard_id"],
        ),
        "drivers_alive": [{k: d.get(k) for k in ("host", "pid", "heartbeat")} for d in live],
        "per_node": _per_node(markers),
    }


def _records(markers: list[dict]) -> dict[str, Any]:
    """Records total / ok / errors, and errors by reason (most frequent first), over the committed shards."""
    reasons: dict[str, int] = {}
    for m in markers:
        for reason, n in (m.get("errors_by_reason") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + n
    return {
        "total": sum(int(m.get("records", 0)) for m in markers),
        "ok": sum(int(m.get("ok", 0)) for m in markers),
        "errors": sum(int(m.get("errors", 0)) for m in markers),
        "errors_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
    }


def _rates(markers: list[dict], now: float) -> dict[str, Any]:
    """Records/s and input bytes/s: overall (first start to last commit) and over the most recent shards."""
    timed = sorted((m for m in markers if m.get("finished_at")), key=lambda m: m["finished_at"])
    out: dict[str, Any] = {"records_per_s": None, "recent_records_per_s": None, "bytes_per_s": None}
    if not timed:
        return out
    start = min(start_of(m) for m in timed)
    span = max(1e-9, timed[-1]["finished_at"] - start)
    out["records_per_s"] = sum(m.get("records", 0) for m in timed) / span
    out["bytes_per_s"] = sum(m.get("input_bytes", 0) for m in timed) / span
    recent = timed[-RECENT_SHARDS:]
    recent_span = recent[-1]["finished_at"] - min(start_of(m) for m in recent)
    if recent_span > 0:
        out["recent_records_per_s"] = sum(m.get("records", 0) for m in recent) / recent_span
        out["bytes_per_s"] = sum(m.get("input_bytes", 0) for m in recent) / recent_span
    out["started_at"], out["last_commit_at"] = start, timed[-1]["finished_at"]
    return out


def node_of(m: dict) -> str:
    """The Ray node a marker's shard ran on, or its worker's host when not on Ray."""
    return m.get("node") or (m.get("worker") or "?").rsplit(":", 1)[0]


def start_of(m: dict) -> float:
    """When a shard was taken (markers of older versions have no start: their commit time)."""
    return float(m["started_at"]) if m.get("started_at") is not None else float(m["finished_at"])


def _per_node(markers: list[dict]) -> list[dict[str, Any]]:
    """Shards, records and busy seconds per node (or per worker process when not on Ray)."""
    nodes: dict[str, dict[str, Any]] = {}
    for m in markers:
        key = node_of(m)
        n = nodes.setdefault(key, {"node": key, "shards": 0, "records": 0, "busy_s": 0.0})
        n["shards"] += 1
        n["records"] += int(m.get("records", 0))
        if m.get("finished_at") and m.get("started_at"):
            n["busy_s"] += float(m["finished_at"]) - float(m["started_at"])
    return sorted(nodes.values(), key=lambda n: -n["records"])


def _clock(t: float | None) -> str:
    return "-" if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def render(s: dict[str, Any], now: float | None = None) -> str:
    """The status as one screen of text."""
    now = time.time() if now is None else now
    sh, rec = s["shards"], s["records"]
    pct = 100.0 * sh["committed"] / sh["planned"] if sh["planned"] else 0.0
    lines = [
        f"run {s['run']}: {s['state']} ({s['model']} / {s['method']}, fingerprint {s['fingerprint']})",
        f"shards: {sh['committed']}/{sh['planned']} committed ({pct:.0f}%)",
        f"records: {rec['total']:,} ({rec['ok']:,} ok, {rec['errors']:,} errors"
        + ("".join(f"; {k} {v:,}" for k, v in rec["errors_by_reason"].items()) + ")"),
    ]
    if s["records_per_s"]:
        recent = f", last {RECENT_SHARDS} shards {s['recent_records_per_s']:.1f}/s" if s["recent_records_per_s"] else ""
        lines.append(f"throughput: {s['records_per_s']:.1f} records/s since {_clock(s.get('started_at'))}{recent}")
    if s["eta"]:
        lines.append(f"eta: {_clock(s['eta'])} (in {max(0.0, s['eta'] - now) / 60:.0f} min, from input bytes left)")
    for d in s["drivers_alive"]:
        lines.append(f"driver: pid {d['pid']} on {d['host']} (heartbeat {now - float(d['heartbeat']):.0f}s ago)")
    if s["state"] == "stopped":
        lines.append("no live driver: rerun the same command to resume")
    for n in s["per_node"][:8]:
        lines.append(f"node {n['node'][:16]}: {n['shards']} shards, {n['records']:,} records, {n['busy_s']:.0f}s busy")
    for f in s["failed_shards"][:10]:
        lines.append(f"failed shard {f['shard_id']} at {_clock(f['at'])} on {f['worker']}: {f['error']}")
    if len(s["failed_shards"]) > 10:
        lines.append(f"... and {len(s['failed_shards']) - 10} more failed shards (--json lists all)")
    return "\n".join(lines)
