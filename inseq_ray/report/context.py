"""``inseq-ray report`` of a context-mode run: summary cards, errors, the distribution of CTI scores, the most
frequent context-sensitive tokens with their top cue, and one page per record with the most context-sensitive
tokens (the output with its selected tokens and their cues, from the stored AttributeContextOutput)."""

from __future__ import annotations

import gzip
import json
from html import escape
from pathlib import Path

from inseq_ray.context.output import AttributeContextOutput
from inseq_ray.context.viz import html_body
from inseq_ray.report import SEQ_ID, charts, data
from inseq_ray.report import html as h


def build_context_report(run: data.Run, out: Path, sample: int) -> Path:
    """Write ``index.html`` and ``seq/<id>.html`` pages of the context run ``run`` into ``out``."""
    picked = data.context_records(run, sample)
    links: dict[str, str] = {}
    for seq_id in picked["seq_id"].to_list():
        if isinstance(seq_id, str) and SEQ_ID.match(seq_id):  # the run's own form: nothing else becomes a path
            (out / f"seq/{seq_id}.html").write_text(_page(run, seq_id), encoding="utf-8")
            links[seq_id] = f"seq/{seq_id}.html"
    index = out / "index.html"
    index.write_text(_index(run, picked, links), encoding="utf-8")
    return index


def _page(run: data.Run, seq_id: str) -> str:
    url = f"{run.prefix}/sequences/{seq_id[:2]}/{seq_id}.json.gz"
    try:
        import fsspec

        from inseq_ray.report.data import storage_options

        with fsspec.open(url, "rb", **storage_options(url)) as f:
            saved = json.loads(gzip.decompress(f.read()))
        style = "<style>.sel{background:#fd8;font-weight:bold}</style>"
        body = style + html_body(AttributeContextOutput.from_dict(saved))
    except Exception as e:  # a missing or unreadable object: a placeholder, the report goes on
        body = f"<p class='muted'>object unreadable: {escape(type(e).__name__)}</p>"
    return h.page(f"context reliance of {seq_id}", body, back="../index.html")


def _index(run: data.Run, picked, links: dict[str, str]) -> str:
    m, cfg = run.manifest, run.manifest.get("config", {})
    counts = data.context_counts(run)
    share = counts["selected"] / counts["tokens"] if counts["tokens"] else 0.0
    title = f"inseq_ray context-reliance report: {cfg.get('model', '?')} / {cfg.get('method', '?')}"
    cards = [("records", f"{m.get('records', 0):,}"), ("attributed", f"{m.get('ok', 0):,}"),
             ("errors", f"{m.get('errors', 0):,}"), ("generated tokens", f"{counts['tokens']:,}"),
             ("context-sensitive", f"{counts['selected']:,} ({share:.1%})"), ("mean CTI", f"{counts['mean_cti']:.3f}")]  # fmt: skip
    hist = data.cti_histogram(run) if counts["tokens"] else None
    chart = charts.histogram(hist, "CTI score per generated token", f"|{cfg.get('context_sensitivity_metric')}|") \
        if hist is not None else "<p class='muted'>no generated tokens</p>"  # fmt: skip
    body = [
        f"<h1>{escape(title)}</h1>", f"<p class='sub'><code>{escape(run.prefix)}</code></p>", h.cards(cards),
        "<h2>Errors by reason</h2>", h.table(data.errors_by_reason(run)),
        "<h2>Context sensitivity</h2>", chart,
        "<p class='muted'>How much each generated token's next-token distribution changes without the context; "
        "tokens above mean + k std (the run's threshold) are context-sensitive.</p>",
        "<h2>Most frequent context-sensitive tokens and their top cue</h2>",
        h.table(data.context_sensitive_tokens(run), token_cols=("token", "top_cue")),
        f"<h2>Records with the most context-sensitive tokens ({len(links)} pages)</h2>", h.table(picked, links),
        "<h2>Run</h2>", h.panels(["<b>configuration</b>" + h.key_values(cfg)]),
    ]  # fmt: skip
    return h.page(title, "".join(body))
