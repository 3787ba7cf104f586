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
        h.table(data.top_pairs(run), token_cols=("target_token", "attributed_token")),
        "<h2>Records the model was least sure of</h2>",
        h.table(least, links),
        f"<h2>Sequences ({len(links)} pages)</h2>",
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


def _charts(run: data.Run) -> str:
    items = [charts.score_curve(df, name) for name, df in data.step_score_curves(run).items() if df.height]
    flow = data.throughput_over_time(run)
    if flow.height:
        items.append(charts.throughput(flow))
    hist = data.profile_histograms(run)
    if hist:
        items.append(charts.histogram(hist["entropy"], "attribution entropy per step", "entropy (nats)"))
        side = "source" if run.has_rows("source_attributions") else "prompt"
        items.append(
            charts.histogram(hist["input_share"], f"share of attribution on the {side}", f"{side} share of the step")
        )
    return h.panels(items) if items else "<p class='muted'>no step scores or attributions in this run</p>"


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
