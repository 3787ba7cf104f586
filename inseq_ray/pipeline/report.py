"""The end-of-run summary line, from the manifest (the figures of the tables: :mod:`inseq_ray.report.summary`)."""

from __future__ import annotations


def print_summary(manifest: dict) -> None:
    if manifest.get("already_complete"):
        print(f"already complete: {manifest['records']} records (see manifest.json); nothing to do")
        return
    this = manifest["this_run"]
    rate = (
        f"{this['records_per_s']:.1f} sentences/s, {this['target_tokens_per_s']:.1f} target tokens/s"
        if this["records_per_s"]
        else "nothing new to do"
    )
    size = sum(manifest["bytes"].values())
    print(
        f"done: {manifest['records']} records ({manifest['ok']} ok, {manifest['errors']} errors) in "
        f"{manifest['shards']} shards; this run: {this['records']} records in {this['seconds']:.1f}s ({rate}); "
        f"{size / 1e6:.2f} MB written"
    )
