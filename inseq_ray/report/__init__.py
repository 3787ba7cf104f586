"""A static, self-contained HTML report of a finished run (``inseq-ray report RUN_URL``).

``build_report`` reads the manifest and the tables with polars lazy scans (:mod:`inseq_ray.report.data`),
draws charts as inline SVG (:mod:`inseq_ray.report.charts`), and writes ``index.html`` plus one page per
sampled sequence (``seq/<seq_id>.html``, the sequence's heatmap from its saved object). Open ``index.html`` in
any browser: no server, no scripts, no network requests.
"""

from __future__ import annotations

import os
import re
from html import escape
from pathlib import Path

import polars as pl

from inseq_ray.report import charts, data
from inseq_ray.report import html as h


def build_report(run_url: str, output: str | os.PathLike, sample: int = 20, ids: list[str] | None = None) -> Path:
    """Write the report of the run at ``run_url`` (local or any fsspec URL) into the local folder ``output``;
    returns the path of its ``index.html``."""
    run = data.open_run(run_url)
    out = Path(output)
    (out / "seq").mkdir(parents=True, exist_ok=True)
    if data.is_context_run(run):
        from inseq_ray.report.context import build_context_report

        return build_context_report(run, out, sample)
    least = data.least_sure(run)
    picked = data.sample_sequences(run, sample, list(ids or []))
    if not least.is_empty():  # the least sure records get pages too
        extra = data.sample_sequences(run, 0, least["seq_id"].to_list(), strict=False)
        picked = pl.concat([picked, extra]).unique("seq_id", keep="first", maintain_order=True)
    links, problems = _sequence_pages(run, picked, out)
    index = out / "index.html"
    index.write_text(_index(run, least, picked, links, problems), encoding="utf-8")
    return index


SEQ_ID = re.compile(r"^[0-9a-f]{20}$")  # the pipeline's own form (shards.seq_id_for): nothing else becomes a path


def _sequence_pages(run: data.Run, picked: pl.DataFrame, out: Path) -> tuple[dict[str, str], dict[str, int]]:
    """One page per picked row whose seq_id has the run's own form, from the object at the run's own key for it
    (a table's ``object_uri`` is not followed: it could point anywhere). A missing or unreadable object gets a
    placeholder page. Returns the links and the counts of rows skipped and objects missing."""
    from inseq_ray.errors import AttributionFileError

    links, problems = {}, {"rows skipped (seq_id not of this run's form)": 0, "objects missing or unreadable": 0}
    for row in picked.iter_rows(named=True):
        seq_id = row["seq_id"]
        if not isinstance(seq_id, str) or not SEQ_ID.match(seq_id):
            problems["rows skipped (seq_id not of this run's form)"] += 1
            continue
        try:
            page = _sequence_page(row, f"{run.prefix}/sequences/{seq_id[:2]}/{seq_id}.json.gz")
        except AttributionFileError as e:
            problems["objects missing or unreadable"] += 1
            page = _placeholder_page(row, str(e))
        (out / f"seq/{seq_id}.html").write_text(page, encoding="utf-8")
        links[seq_id] = f"seq/{seq_id}.html"
    return links, {k: v for k, v in problems.items() if v}


def _index(
    run: data.Run, least: pl.DataFrame, picked: pl.DataFrame, links: dict[str, str], problems: dict[str, int]
) -> str:
    m, cfg = run.manifest, run.manifest.get("config", {})
    this = m.get("this_run") or {}
    title = f"inseq_ray run report: {cfg.get('model', '?')} / {cfg.get('method', '?')}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p class='sub'><code>{escape(run.prefix)}</code></p>",
        h.cards(
            [
                ("records", f"{m.get('records', 0):,}"),
                ("attributed", f"{m.get('ok', 0):,}"),
                ("errors", f"{m.get('errors', 0):,}"),
                ("generated tokens", f"{m.get('target_tokens', 0):,}"),
                ("sentences / s (last run)", f"{this.get('records_per_s') or 0:.1f}"),
                ("tokens / s (last run)", f"{this.get('target_tokens_per_s') or 0:.1f}"),
                ("shards", m.get("shards", 0)),
                ("MB written", f"{sum((m.get('bytes') or {}).values()) / 1e6:.1f}"),
            ]
        ),
        "<h2>Errors by reason</h2>",
        h.table(data.errors_by_reason(run)),
        "<h2>Distributions</h2>",
        _charts(run),
        "<h2>Work per node</h2>",
        h.table(data.work_per_node(run)),
        "<h2>Most frequent pairs: generated token &larr; its top-attributed input token</h2>",
        _pairs(run),
        "<h2>Records the model was least sure of</h2>",
        h.table(least, links),
        f"<h2>Sequences ({len(links)} pages)</h2>",
        f"<p class='muted'>{escape(_pages_caption(picked, least, links))}</p>",
        "".join(f"<p class='muted'>{escape(what)}: {n}</p>" for what, n in problems.items()),
        h.table(picked.drop("object_uri"), links),
        "<h2>Run</h2>",
        h.panels(
            [
                "<b>configuration</b>" + h.key_values(cfg),
                "<b>versions</b>" + h.key_values(m.get("versions") or {}) + "<b>last run</b>" + h.key_values(this),
            ]
        ),
    ]
    return h.page(title, "".join(body))


CAPTIONS = {
    "curve": "Mean of the {name} step score at each generation step (line) and its 10th-90th percentile over the "
    "sequences (band); later steps average fewer sequences. The axis spans the values observed.",
    "throughput": "Records committed over time, per node (steps) and in all (black), from the shard markers' "
    "times: a flat stretch is a node that stopped committing (lost, or busy with a long shard).",
    "entropy": "How spread each step's attribution is: the entropy (nats) of its |scores| normalised to sum 1. "
    "0 = one token takes everything; ln(n) = spread evenly over n tokens. Steps whose attribution is all zero "
    "are left out.",
    "share": "For each step, the share of its attribution on the {side} (the rest goes to the tokens generated "
    "before it). 1 = the step looked only at the {side}.",
}


def _captioned(svg: str, caption: str) -> str:
    return f"{svg}<p class='muted'>{escape(caption)}</p>"


def _charts(run: data.Run) -> str:
    items = [
        _captioned(charts.score_curve(df, name), CAPTIONS["curve"].format(name=name))
        for name, df in data.step_score_curves(run).items()
        if df.height
    ]
    flow = data.throughput_over_time(run)
    if flow.height:
        items.append(_captioned(charts.throughput(flow), CAPTIONS["throughput"]))
    hist = data.profile_histograms(run)
    if hist:
        chart = charts.histogram(hist["entropy"], "attribution entropy per step", "entropy (nats)")
        items.append(_captioned(chart, CAPTIONS["entropy"]))
        if run.has_rows("target_attributions"):  # without target attributions every step's share is 1
            side = "source" if run.has_rows("source_attributions") else "prompt"
            chart = charts.histogram(hist["input_share"], f"share of attribution on the {side}", f"{side} share")
            items.append(_captioned(chart, CAPTIONS["share"].format(side=side)))
    return h.panels(items) if items else "<p class='muted'>no step scores or attributions in this run</p>"


def _pairs(run: data.Run) -> str:
    pairs, zeros = data.top_pairs_and_zero_steps(run)
    note = (
        "For each generation step, the input token with the largest |score|; the table counts how often each "
        "(generated, top input) pair occurs and its share of the scored steps."
        + (f" {zeros:,} steps whose attribution is all zero are left out (no token is on top)." if zeros else "")
    )
    return h.table(pairs, token_cols=("target_token", "attributed_token")) + f"<p class='muted'>{escape(note)}</p>"


def _pages_caption(picked: pl.DataFrame, least: pl.DataFrame, links: dict[str, str]) -> str:
    least_ids = set(least["seq_id"].to_list()) if not least.is_empty() else set()
    sampled = len(set(links) - least_ids)
    return (
        f"{len(links)} heatmap pages: {sampled} from the sample (the smallest seq_ids, an even and reproducible "
        f"sample: --sample) or asked with --ids, and {len(set(links) & least_ids)} for the records the model was "
        "least sure of (listed above)."
    )


def _placeholder_page(row: dict, why: str) -> str:
    body = (
        f"<h1>Sequence <code>{escape(row['seq_id'])}</code></h1>"
        f"<p class='sub'><b>source</b> {escape(row['source_text'] or '')}</p>"
        f"<p>Its attribution object could not be read: {escape(why)}</p>"
    )
    return h.page(f"sequence {row['seq_id']}", body, back="../index.html")


def _sequence_page(row: dict, object_url: str) -> str:
    from inseq_ray.output import FeatureAttributionOutput
    from inseq_ray.viz import html_fragment

    out = FeatureAttributionOutput.load(object_url)
    seq = out[0]
    scores = pl.DataFrame(
        {"step": list(range(seq.n_steps)), "token": [t.token for t in seq.generated]}
        | {k: v.tolist() for k, v in seq.step_scores.items()}
    )
    body = (
        f"<h1>Sequence <code>{escape(row['seq_id'])}</code></h1>"
        f"<p class='sub'><b>source</b> {escape(row['source_text'] or '')}<br><b>target</b> "
        f"{escape(row['target_text'] or '')}</p>"
        f"<div class='panel scroll'>{html_fragment(out)}</div>"
        "<h2>Step scores</h2>" + h.table(scores, token_cols=("token",))
    )
    return h.page(f"sequence {row['seq_id']}", body, back="../index.html")
