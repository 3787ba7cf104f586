"""The end-of-run summary and a few polars queries over the written tables (what users will run)."""

from __future__ import annotations


def table_glob(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/tables/{name}/*.parquet"


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


def print_report(prefix: str) -> None:
    import polars as pl

    pl.Config.set_tbl_rows(8)
    pl.Config.set_fmt_str_lengths(40)
    src = pl.scan_parquet(table_glob(prefix, "source_attributions"))
    top = (
        src.sort("score", descending=True)
        .group_by("seq_id", "step", maintain_order=True)
        .first()
        .group_by("target_token", "attributed_token")
        .agg(pl.len().alias("times_top"))
        .sort("times_top", descending=True)
        .head(8)
        .collect()
    )
    if top.height:
        print("\nMost frequent (generated token -> its top-attributed source token):")
        print(top)
    scores = pl.scan_parquet(table_glob(prefix, "step_scores")).collect()
    if scores.height and "probability" in scores.columns:
        print(f"\nmean probability of generated tokens: {scores['probability'].mean():.3f}")
    errors = pl.scan_parquet(table_glob(prefix, "errors")).group_by("reason").agg(pl.len()).collect()
    if errors.height:
        print("\nerrors by reason:")
        print(errors)
    first = pl.scan_parquet(table_glob(prefix, "sequences")).select("seq_id", "object_uri").head(1).collect()
    if first.height:
        from inseq_ray.output import FeatureAttributionOutput

        seq_id, uri = first.row(0)
        print(f"\nsequence {seq_id}, from {uri}:")
        FeatureAttributionOutput.load(uri).show()
