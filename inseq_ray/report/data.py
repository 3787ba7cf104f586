"""What the run report shows, computed with polars lazy scans over a run's tables (streaming engine).

Every query returns a small frame (per position, per histogram bin, top-k). Queries that group by sequence or
step run shard by shard (a sequence's rows never span shards) and combine exact partial results, so memory is
bounded by one shard, not by the run. Nothing here renders.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import fsspec
import polars as pl

from inseq_ray.pipeline.storage import storage_options

MAX_POSITION = 64  # step-score curves stop here (later positions are few)
BINS = 20
_ERR = {"reason": pl.String, "records": pl.UInt32, "example": pl.String}


@dataclass(frozen=True)
class Run:
    """A finished run: its prefix and manifest; with ``shard``, a view of that shard's table files only (a
    sequence's rows never span shards, so per-sequence groups computed shard by shard are exact)."""

    prefix: str
    manifest: dict
    shard: str | None = None

    def scan(self, table: str) -> pl.LazyFrame:
        if self.shard is None:
            return pl.scan_parquet(f"{self.prefix.rstrip('/')}/tables/{table}/*.parquet")
        return pl.scan_parquet(f"{self.prefix}/tables/{table}/{self.shard}.parquet")

    def has_rows(self, table: str) -> bool:
        return int(self.manifest.get("table_rows", {}).get(table, 0)) > 0

    def shards(self) -> list[Run]:
        """One view per shard (the files of the sequences table name them)."""
        url = f"{self.prefix}/tables/sequences"
        fs, root = fsspec.core.url_to_fs(url, **storage_options(url))
        stems = sorted(p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in fs.glob(f"{root}/*.parquet"))
        return [Run(self.prefix, self.manifest, stem) for stem in stems]

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


FINE_BINS = 400  # per-shard entropy histograms use this grid; shown coarsened to BINS up to the observed max


def profile_histograms(run: Run) -> dict[str, pl.DataFrame]:
    """Histograms of the per-step entropy (0 .. its observed max) and input share (0 .. 1), computed shard by shard
    (memory bounded by one shard); {} without attributions."""
    bound = _entropy_bound(run)
    entropy = share = None
    top = 0.0
    for part in run.shards():
        profiles = _collect(step_profiles(part)).lazy()
        e = histogram(profiles, "entropy", 0.0, bound, FINE_BINS)
        i = histogram(profiles, "input_share", 0.0, 1.0)
        top = max(top, _collect(profiles.select(pl.col("entropy").max().fill_null(0.0)))[0, 0])
        entropy = e if entropy is None else entropy.with_columns(pl.col("count") + e["count"])
        share = i if share is None else share.with_columns(pl.col("count") + i["count"])
    if entropy is None or share is None or int(share["count"].sum()) == 0:
        return {}
    return {"entropy": _coarsened(entropy, top), "input_share": share}


def _entropy_bound(run: Run) -> float:
    """ln(the most tokens any step can attribute): an upper bound of every step's entropy."""
    lengths = run.scan("sequences").select(
        (pl.col("source_tokens").list.len() + pl.col("target_tokens").list.len()).max()
    )
    return math.log(max(2, int(_collect(lengths)[0, 0] or 2)))


def _coarsened(fine: pl.DataFrame, top: float) -> pl.DataFrame:
    """Merge consecutive fine bins into at most BINS bins that end with the one holding ``top``."""
    width = float(fine["right"][0] - fine["left"][0])
    last = min(fine.height - 1, int(top / width)) if width > 0 else 0
    group = max(1, math.ceil((last + 1) / BINS))
    return (
        fine.head(last + 1)
        .with_row_index("k")
        .group_by((pl.col("k") // group).alias("j"))
        .agg(pl.col("left").min(), pl.col("right").max(), pl.col("count").sum())
        .sort("j")
        .drop("j")
    )


def top_pairs(run: Run, k: int = 25) -> pl.DataFrame:
    """The pairs of :func:`top_pairs_and_zero_steps`."""
    return top_pairs_and_zero_steps(run, k)[0]


def top_pairs_and_zero_steps(run: Run, k: int = 25) -> tuple[pl.DataFrame, int]:
    """The most frequent (generated token <- its top-attributed input token) pairs: target_token,
    attributed_token, times (the number of steps where that input token scored highest), share of steps; and
    the number of steps left out because their attribution is all zero (no token is on top: tie-breaking
    would pick one). Counted shard by shard (memory bounded by one shard and the distinct pairs)."""
    tables = [t for t in ("source_attributions", "target_attributions") if run.has_rows(t)]
    keys = ["target_token", "attributed_token"]
    if not tables:
        return pl.DataFrame(schema={"target_token": pl.String, "attributed_token": pl.String, "times": pl.UInt32}), 0
    counts: pl.DataFrame | None = None
    steps = zeros = 0
    for part in run.shards():
        rows = pl.concat(
            [part.scan(t).select("seq_id", "step", "target_token", "attributed_token", "score") for t in tables]
        )
        best = rows.group_by("seq_id", "step").agg(
            pl.col("target_token").first(),
            pl.col("attributed_token").sort_by(pl.col("score").abs(), descending=True).first(),
            (pl.col("score").abs().max().fill_nan(0) > 0).alias("scored"),
        )
        shard_counts = _collect(best.group_by(*keys, "scored").agg(pl.len().cast(pl.Int64).alias("times")))
        zeros += int(shard_counts.filter(~pl.col("scored"))["times"].sum())
        shard_counts = shard_counts.filter(pl.col("scored")).drop("scored")
        steps += int(shard_counts["times"].sum())
        both = shard_counts if counts is None else pl.concat([counts, shard_counts])
        counts = both.group_by(keys).agg(pl.col("times").sum())
    if counts is None:  # no shard
        return pl.DataFrame(schema={"target_token": pl.String, "attributed_token": pl.String, "times": pl.UInt32}), 0
    out = counts.sort("times", *keys, descending=[True, False, False]).head(k)
    return out.with_columns((pl.col("times") / max(1, steps)).alias("share")), zeros


def least_sure(run: Run, k: int = 15) -> pl.DataFrame:
    """The records the model was least sure of: lowest mean probability of its generated tokens (or, without
    a probability step score, highest mean entropy); seq_id, the score, n_steps, source_text, target_text."""
    names = run.step_score_names
    if not run.has_rows("step_scores") or not ({"probability", "entropy"} & set(names)):
        return pl.DataFrame()
    name, lowest = ("probability", True) if "probability" in names else ("entropy", False)
    col = f"mean_{name}"
    picked = None
    for part in run.shards():  # each shard's k least sure, then the k least sure of those
        per_seq = part.scan("step_scores").group_by("seq_id").agg(pl.col(name).mean().alias(col))
        top = _collect(per_seq.sort(col, "seq_id", descending=[not lowest, False]).head(k))
        both = top if picked is None else pl.concat([picked, top])
        picked = both.sort(col, "seq_id", descending=[not lowest, False]).head(k)
    if picked is None:
        return pl.DataFrame()
    texts = run.scan("sequences").select("seq_id", "n_steps", "source_text", "target_text")
    ids = picked["seq_id"].to_list()
    found = _collect(texts.filter(pl.col("seq_id").is_in(ids)))
    return picked.join(found, on="seq_id", how="left").sort(col, "seq_id", descending=[not lowest, False])


def sample_sequences(run: Run, n: int, ids: list[str], strict: bool = True) -> pl.DataFrame:
    """seq_id, object_uri, texts of ``n`` sequences (the smallest seq_ids: ids are content hashes, so this is an
    even, reproducible sample) plus the asked ``ids``; with ``strict``, an asked id not in the run is an error."""
    seqs = run.scan("sequences").select("seq_id", "object_uri", "source_text", "target_text", "n_steps")
    sample = _collect(seqs.sort("seq_id").head(n)) if n > 0 else _collect(seqs.head(0))
    if ids:
        asked = _collect(seqs.filter(pl.col("seq_id").is_in(ids)))
        missing = sorted(set(ids) - set(asked["seq_id"].to_list()))
        if missing and strict:
            raise ValueError(f"--ids: {', '.join(missing)} not in this run's sequences table.")
        sample = pl.concat([sample, asked]).unique("seq_id", keep="first", maintain_order=True)
    return sample


def throughput_over_time(run: Run) -> pl.DataFrame:
    """node, minutes (since the first shard started), records (committed by that node so far), shard_records:
    one row per committed shard, from the markers' times (markers of versions without times are left out)."""
    from inseq_ray.pipeline.status import _read_all, node_of, start_of
    from inseq_ray.pipeline.storage import Storage

    markers = [m for m in _read_all(Storage(run.prefix), "_shards") if m.get("finished_at")]
    schema = {"node": pl.String, "minutes": pl.Float64, "records": pl.Int64, "shard_records": pl.Int64}
    if not markers:
        return pl.DataFrame(schema=schema)
    start = min(start_of(m) for m in markers)
    rows = [
        {
            "node": node_of(m),
            "minutes": (float(m["finished_at"]) - start) / 60,
            "shard_records": int(m.get("records", 0)),
        }
        for m in markers
    ]
    df = pl.DataFrame(rows).sort("minutes")
    return df.with_columns(pl.col("shard_records").cum_sum().over("node").alias("records")).select(list(schema))


def work_per_node(run: Run) -> pl.DataFrame:
    """node, shards, records, busy_s, records_per_busy_s: what each node (or worker host) committed."""
    from inseq_ray.pipeline.status import _per_node, _read_all
    from inseq_ray.pipeline.storage import Storage

    nodes = _per_node(_read_all(Storage(run.prefix), "_shards"))
    if not nodes:
        return pl.DataFrame()
    df = pl.DataFrame(nodes)
    return df.with_columns((pl.col("records") / pl.col("busy_s").clip(1e-9)).round(2).alias("records_per_busy_s"))


# ---- context mode (--context-column) ------------------------------------------------------------------------------
def is_context_run(run: Run) -> bool:
    return bool(run.manifest.get("config", {}).get("context_column"))


def context_counts(run: Run) -> dict[str, float]:
    """Generated tokens, context-sensitive ones, and the mean CTI score, over the run (streaming)."""
    if not run.has_rows("context_tokens"):
        return {"tokens": 0, "selected": 0, "mean_cti": 0.0}
    lf = run.scan("context_tokens").select(
        pl.len().alias("tokens"), pl.col("selected").sum().alias("selected"), pl.col("cti_score").mean().alias("mean")
    )
    row = _collect(lf).row(0)
    return {"tokens": int(row[0]), "selected": int(row[1] or 0), "mean_cti": float(row[2] or 0.0)}


def context_sensitive_tokens(run: Run, k: int = 15) -> pl.DataFrame:
    """The most frequent context-sensitive tokens with their most frequent top cue (the context token with the
    highest |score| for that step): token, top_cue, times; counted shard by shard."""
    keys = ["token", "top_cue"]
    counts: pl.DataFrame | None = None
    for part in run.shards() if run.has_rows("context_cues") else []:
        top = (
            part.scan("context_cues")
            .group_by("seq_id", "step")
            .agg(
                pl.col("token").first(), pl.col("context_token").sort_by(pl.col("score").abs(), descending=True).first()
            )
        )
        shard_counts = _collect(top.rename({"context_token": "top_cue"}).group_by(keys).agg(pl.len().alias("times")))
        both = shard_counts if counts is None else pl.concat([counts, shard_counts])
        counts = both.group_by(keys).agg(pl.col("times").sum())
    if counts is None:
        return pl.DataFrame(schema={"token": pl.String, "top_cue": pl.String, "times": pl.UInt32})
    return counts.sort("times", *keys, descending=[True, False, False]).head(k)


def cti_histogram(run: Run) -> pl.DataFrame:
    """(left, right, count) of every generated token's CTI score over 0 .. its observed maximum (streaming)."""
    top = _collect(run.scan("context_tokens").select(pl.col("cti_score").abs().max())).item() or 1.0
    return histogram(run.scan("context_tokens").select(pl.col("cti_score").abs()), "cti_score", 0.0, float(top))


def context_records(run: Run, n: int) -> pl.DataFrame:
    """The ``n`` records with the most context-sensitive tokens (ties: smallest seq_id), for pages."""
    cols = ("seq_id", "source_text", "target_text", "n_tokens", "n_context_sensitive", "context_share")
    q = run.scan("sequences").select(*cols).sort("n_context_sensitive", "seq_id", descending=[True, False])
    return _collect(q.head(n))
