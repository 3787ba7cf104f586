"""Whether a run succeeded: a run that attributed nothing, or mostly errors, is not a success.

Two checks, both from the shard summaries (pure functions):
- :func:`early_stop`, while the run goes: when the first :data:`EARLY_RECORDS` records of a run all failed
  for one reason (a wrong column, a bad method argument, a model that cannot run), the rest would too:
  the run stops in one line naming the reason and an example instead of grinding through the corpus;
- :func:`final_verdict`, at the end: 0 ok records, or an error share above ``max_error_rate``, is a failure
  with the breakdown (the results are kept: the manifest says what was done).
"""

from __future__ import annotations

EARLY_RECORDS = 32  # records that must all fail for one reason before a run is stopped early


def _reasons(summaries: list[dict]) -> tuple[dict[str, int], dict[str, str]]:
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    for s in summaries:
        for reason, n in (s.get("errors_by_reason") or {}).items():
            counts[reason] = counts.get(reason, 0) + n
        for reason, message in (s.get("error_examples") or {}).items():
            examples.setdefault(reason, message)
    return counts, examples


def early_stop(summaries: list[dict], max_error_rate: float) -> str | None:
    """A one-line reason to stop now, or None."""
    if max_error_rate >= 1:
        return None
    records = sum(s.get("records", 0) for s in summaries)
    ok = sum(s.get("ok", 0) for s in summaries)
    counts, examples = _reasons(summaries)
    if records < EARLY_RECORDS or ok or len(counts) != 1:
        return None
    (reason,) = counts
    return (
        f"stopped early: the first {records} records all failed with {reason} (e.g. {examples.get(reason, '?')!r}); "
        "the rest would too. Fix the cause and rerun with --overwrite (or --max-error-rate 1 to go on anyway)."
    )


def final_verdict(manifest: dict, max_error_rate: float) -> str | None:
    """A one-line failure of a finished run, or None when it succeeded."""
    records, ok, errors = manifest.get("records", 0), manifest.get("ok", 0), manifest.get("errors", 0)
    if records and not ok:
        return f"nothing was attributed: all {records} records are error rows ({_breakdown(manifest)})."
    if records and errors / records > max_error_rate:
        return (
            f"{errors} of {records} records are error rows ({errors / records:.0%} > --max-error-rate "
            f"{max_error_rate:g}): {_breakdown(manifest)}. See the errors table."
        )
    return None


def _breakdown(manifest: dict) -> str:
    reasons = manifest.get("errors_by_reason") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) or "no reasons recorded"
