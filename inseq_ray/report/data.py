"""What the run report shows, computed with polars lazy scans over a run's tables (streaming engine).

Every query returns a small frame (per position, per histogram bin, top-k): memory is bounded by the
groups, not by the run, so a million-sequence run reports in bounded memory. Nothing here renders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import fsspec
import polars as pl

from inseq_ray.pipeline.report import table_glob
from inseq_ray.pipeline.storage import storage_options

MAX_POSITION = 64  # step-score curves stop here (later positions are few)
BINS = 20


@dataclass(frozen=True)
class Run:
    """A finished run: its prefix and manifest."""

    prefix: str
    manifest: dict

    def scan(self, table: str) -> pl.LazyFrame:
        return pl.scan_parquet(table_glob(self.prefix, table))

    def has_rows(self, table: str) -> bool:
        return int(self.manifest.get("table_rows", {}).get(table, 0)) > 0

    @property
    def step_score_names(self) -> list[str]:
        return list(self.manifest.get("config", {}).get("step_scores") or [])


def open_run(prefix: str) -> Run:
    """Read ``manifest.json`` (a run without one is not finished: a one-line error says so)."""
    prefix = prefix.rstrip("/")
    url = f"{prefix}/manifest.json"
    try:
        with fsspec.open(url, "r", **storage_options(url)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(
            f"{prefix}: no manifest.json, so this is not a finished run; finish (or resume) it with "
            "`inseq-ray attribute-dataset` first."
        ) from None
    return Run(prefix, manifest)


def _collect(lf: pl.LazyFrame) -> pl.DataFrame:
    return lf.collect(engine="streaming")


def errors_by_reason(run: Run) -> pl.DataFrame:
    """reason, records, example message; most frequent first."""
    if not run.has_rows("errors"):
        return pl.DataFrame({"reason": [], "records": [], "example": []}, schema=_ERR)
    q = run.scan("errors").group_by("reason").agg(pl.len().alias("records"), pl.col("message").first().alias("example"))
    return _collect(q).sort("records", "reason", descending=[True, False])


_ERR = {"reason": pl.String, "records": pl.UInt32, "example": pl.String}


def step_score_curves(run: Run) -> dict[str, pl.DataFrame]:
    """score -> (step, mean, p10, p90, n) for steps < MAX_POSITION."""
    if not run.has_rows("step_scores"):
        return {}
    out = {}
    for name in run.step_score_names:
        col = pl.col(name)
        q = (
            run.scan("step_scores")
            .filter((pl.col("step") < MAX_POSITION) & col.is_not_null() & col.is_finite())
            .group_by("step")
            .agg(
                col.mean().alias("mean"),
                col.quantile(0.1).alias("p10"),
                col.quantile(0.9).alias("p90"),
                pl.len().alias("n"),
            )
        )
        out[name] = _collect(q).sort("step")
    return out


def _cells(run: Run) -> pl.LazyFrame:
    """(seq_id, step, side, a = |score|) over both attribution tables; side "prompt" for a decoder-only run's
    prompt tokens, "source" for an encoder-decoder's source, "target" for the generated prefix."""
    parts = []
    if run.has_rows("source_attributions"):
        parts.append(run.scan("source_attributions").select("seq_id", "step", pl.lit("source").alias("side"), "score"))
    if run.has_rows("target_attributions"):
        starts = run.scan("sequences").select("seq_id", "attr_pos_start")
        tgt = run.scan("target_attributions").join(starts, on="seq_id", how="left")
        side = pl.when(pl.col("attributed_pos") < pl.col("attr_pos_start")).then(pl.lit("prompt"))
        parts.append(tgt.select("seq_id", "step", side.otherwise(pl.lit("target")).alias("side"), "score"))
    if not parts:
        return pl.LazyFrame(schema={"seq_id": pl.String, "step": pl.Int32, "side": pl.String, "a": pl.Float64})
    return pl.concat(parts).select("seq_id", "step", "side", pl.col("score").abs().cast(pl.Float64).alias("a"))


def step_profiles(run: Run) -> pl.LazyFrame:
    """Per (seq_id, step): entropy of the step's attribution distribution (nats, over |scores|) and the share
    of attribution that goes to the input (source or prompt) rather than the generated prefix."""
    a = pl.col("a")
    sums = (
        _cells(run)
        .filter(a > 0)
        .group_by("seq_id", "step")
        .agg(
            a.sum().alias("s"),
            (a * a.log()).sum().alias("t"),
            a.filter(pl.col("side") != "target").sum().alias("i"),
            pl.len().alias("tokens"),
        )
    )  # H = -sum (a/S) ln(a/S) = ln S - (sum a ln a) / S: one group-by pass, no window
    return sums.select(
        "seq_id",
        "step",
        (pl.col("s").log() - pl.col("t") / pl.col("s")).alias("entropy"),
        (pl.col("i") / pl.col("s")).alias("input_share"),
        "tokens",
    )


def histogram(lf: pl.LazyFrame, column: str, lo: float, hi: float, bins: int = BINS) -> pl.DataFrame:
    """(left, right, count) of ``column`` over [lo, hi] in ``bins`` equal bins (values outside are clipped)."""
    width = (hi - lo) / bins if hi > lo else 1.0
    idx = ((pl.col(column) - lo) / width).floor().clip(0, bins - 1).cast(pl.Int32)
    counts = _collect(lf.select(idx.alias("bin")).group_by("bin").agg(pl.len().alias("count")))
    full = pl.DataFrame({"bin": list(range(bins))}, schema={"bin": pl.Int32}).join(counts, on="bin", how="left")
    return full.select(
        (lo + pl.col("bin") * width).alias("left"),
        (lo + (pl.col("bin") + 1) * width).alias("right"),
        pl.col("count").fill_null(0),
    )


def profile_histograms(run: Run) -> dict[str, pl.DataFrame]:
    """Histograms of the per-step entropy (0 .. its max) and input share (0 .. 1); {} without attributions."""
    profiles = step_profiles(run)
    top = _collect(profiles.select(pl.col("entropy").max(), pl.len().alias("n")))
    if top["n"][0] == 0:
        return {}
    hi = float(top["entropy"][0] or 0.0) or 1.0
    return {
        "entropy": histogram(profiles, "entropy", 0.0, hi),
        "input_share": histogram(profiles, "input_share", 0.0, 1.0),
    }


def top_pairs(run: Run, k: int = 25) -> pl.DataFrame:
    """The most frequent (generated token <- its top-attributed input token) pairs: target_token,
    attributed_token, times (the number of steps where that input token scored highest), share of steps."""
    tables = [t for t in ("source_attributions", "target_attributions") if run.has_rows(t)]
    if not tables:
        return pl.DataFrame(schema={"target_token": pl.String, "attributed_token": pl.String, "times": pl.UInt32})
    rows = pl.concat(
        [run.scan(t).select("seq_id", "step", "target_token", "attributed_token", "score") for t in tables]
    )
    best = rows.group_by("seq_id", "step").agg(
        pl.col("target_token").first(),
        pl.col("attributed_token").sort_by(pl.col("score").abs(), descending=True).first(),
    )
    q = best.group_by("target_token", "attributed_token").agg(pl.len().alias("times"))
    steps = _collect(best.select(pl.len()))[0, 0]
    out = _collect(q.sort("times", "target_token", "attributed_token", descending=[True, False, False]).head(k))
    return out.with_columns((pl.col("times") / max(1, steps)).alias("share"))


def least_sure(run: Run, k: int = 15) -> pl.DataFrame:
    """The records the model was least sure of: lowest mean probability of its generated tokens (or, without
    a probability step score, highest mean entropy); seq_id, the score, n_steps, source_text, target_text."""
    names = run.step_score_names
    if not run.has_rows("step_scores") or not ({"probability", "entropy"} & set(names)):
        return pl.DataFrame()
    name, lowest = ("probability", True) if "probability" in names else ("entropy", False)
    per_seq = run.scan("step_scores").group_by("seq_id").agg(pl.col(name).mean().alias(f"mean_{name}"))
    picked = _collect(per_seq.sort(f"mean_{name}", "seq_id", descending=[not lowest, False]).head(k))
    texts = run.scan("sequences").select("seq_id", "n_steps", "source_text", "target_text")
    return _collect(picked.lazy().join(texts, on="seq_id", how="left")).sort(f"mean_{name}", descending=not lowest)


def sample_sequences(run: Run, n: int, ids: list[str]) -> pl.DataFrame:
    """seq_id, object_uri, texts of ``n`` sequences (the smallest seq_ids: ids are content hashes, so this is an
    even, reproducible sample) plus the asked ``ids``; an asked id that is not in the run is an error."""
    seqs = run.scan("sequences").select("seq_id", "object_uri", "source_text", "target_text", "n_steps")
    sample = _collect(seqs.sort("seq_id").head(n)) if n > 0 else _collect(seqs.head(0))
    if ids:
        asked = _collect(seqs.filter(pl.col("seq_id").is_in(ids)))
        missing = sorted(set(ids) - set(asked["seq_id"].to_list()))
        if missing:
            raise ValueError(f"--ids: {', '.join(missing)} not in this run's sequences table.")
        sample = pl.concat([sample, asked]).unique("seq_id", keep="first", maintain_order=True)
    return sample
