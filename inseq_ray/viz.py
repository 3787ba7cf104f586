"""Render aggregated attributions: a rich terminal heatmap, self-contained HTML, and a PNG.

Every renderer shows one matrix per sequence: rows are source tokens then target-prefix tokens,
columns are generated tokens, cells are aggregated scores; step scores follow as extra rows.
"""

from __future__ import annotations

import html
import math
from typing import Any

import torch

from inseq_ray.output import FeatureAttributionOutput, FeatureAttributionSequenceOutput


def _matrix(seq: FeatureAttributionSequenceOutput) -> tuple[list[str], list[str], torch.Tensor, list[str]]:
    """(row labels, column labels, (rows, steps) scores, row kinds) of an aggregated sequence."""
    labels, parts, kinds = [], [], []
    for kind, tokens, t in (
        ("source", seq.source, seq.source_attributions),
        ("target", seq.target, seq.target_attributions),
    ):
        if t is not None:
            labels += [clean(tok.token) for tok in tokens]
            parts.append(t)
            kinds += [kind] * len(tokens)
    cols = [clean(tok.token) for tok in seq.generated]
    return labels, cols, torch.cat(parts) if parts else torch.empty(0, seq.n_steps), kinds


def clean(token: str) -> str:
    """Readable token text: byte-level/sentencepiece space markers shown as a visible space."""
    return token.replace("Ġ", "␣").replace("▁", "␣").replace("Ċ", "⏎") or "∅"


def _aggregated(out: FeatureAttributionOutput, **agg_kwargs: Any) -> FeatureAttributionOutput:
    if any(s.attribution_dims for s in out.sequence_attributions):
        return out.aggregate(**agg_kwargs)
    return out


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False


def show(
    out: FeatureAttributionOutput,
    return_html: bool = False,
    display: bool = True,
    width: int | None = None,
    **agg_kwargs: Any,
) -> str | None:
    """Terminal table outside notebooks, HTML inside; ``return_html=True`` returns the HTML string."""
    agg = _aggregated(out, **agg_kwargs)
    if return_html:
        return to_html(agg)
    if _in_notebook():  # pragma: no cover - needs a kernel
        from IPython.display import HTML
        from IPython.display import display as ipy_display

        ipy_display(HTML(to_html(agg)))
        return None
    if display:
        from rich.console import Console

        console = Console(width=width)
        for i, seq in enumerate(agg.sequence_attributions):
            for table in rich_tables(seq, console.width, title=f"{i}: {caption_text(seq)}"):
                console.print(table)
    return None


def caption_text(seq: FeatureAttributionSequenceOutput, limit: int = 160) -> str:
    """``source → generated`` as text (decoder-only: ``prompt → continuation``), shortened to ``limit``."""

    def text(tokens) -> str:
        return (
            "".join(t.token if t.token[:1] in "Ġ▁" else " " + t.token for t in tokens)
            .replace("Ġ", " ")
            .replace("▁", " ")
            .strip()
        )

    source = text(seq.source) if seq.source_attributions is not None or seq.source else ""
    full = f"{source} → {text(seq.generated)}"
    return full if len(full) <= limit else full[: limit - 1] + "…"


def _color(value: float, vmax: float) -> tuple[int, int, int]:
    """White -> red for positive, white -> blue for negative, scaled by vmax."""
    if not math.isfinite(value) or vmax == 0:
        return (255, 255, 255)
    a = min(abs(value) / vmax, 1.0)
    return (
        (255, int(255 * (1 - a)), int(255 * (1 - a))) if value >= 0 else (int(255 * (1 - a)), int(255 * (1 - a)), 255)
    )


def number_format(values: list[float]) -> str:
    """One format for every number of a table: 2 decimals, or scientific when every value is tiny or one is huge.

    (Exact values are in the HTML cells' tooltips and in the saved tensors.)
    """
    finite = [abs(v) for v in values if math.isfinite(v)]
    if finite and (max(finite) < 0.01 or max(finite) >= 1000):
        return "{:.1e}"
    return "{:.2f}"


def _fmt(value: float, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if math.isfinite(value) else ""


def _table_values(m: torch.Tensor, seq: FeatureAttributionSequenceOutput) -> list[float]:
    return m.flatten().tolist() + [float(v) for vs in seq.step_scores.values() for v in vs]


def _short_labels(labels: list[str], width: int, prefix: str) -> tuple[list[str], list[str]]:
    """Labels longer than ``width`` become ``<prefix><k>`` keys; returns (labels, legend lines)."""
    shown, legend = [], []
    for k, label in enumerate(labels):
        if len(label) <= width:
            shown.append(label)
        else:
            shown.append(f"{prefix}{k}")
            legend.append(f"{prefix}{k} = {label}")
    return shown, legend


def rich_tables(seq: FeatureAttributionSequenceOutput, width: int = 80, title: str = "") -> list:
    """Rich renderables (panels of columns, each fitting ``width``), nothing truncated: column tokens
    wider than a cell appear as ``#k`` keys explained in a legend under the table."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows, cols, m, kinds = _matrix(seq)
    vmax = float(m.nan_to_num().abs().max()) if m.numel() else 0.0
    fmt = number_format(_table_values(m, seq))
    cell_w = max(5, max((len(_fmt(v, fmt)) for v in _table_values(m, seq) if math.isfinite(v)), default=4))
    label_w = max([len(r) for r in rows] + [len(k) for k in seq.step_scores] + [6])
    label_w = min(label_w, max(8, width // 3))
    rows, row_legend = _short_labels(rows, label_w, "r")
    heads, col_legend = _short_labels(cols, cell_w, "#")
    per_table = max(1, (width - label_w - 4) // (cell_w + 3))
    out: list = []
    for start in range(0, max(len(cols), 1), per_table):
        chunk = range(start, min(start + per_table, len(cols)))
        part = f" (steps {start}-{chunk[-1]})" if len(cols) > per_table and len(chunk) else ""
        table = Table(title=f"{title}{part}", pad_edge=False, box=box.SIMPLE_HEAD, header_style="bold")
        table.add_column("", width=label_w, no_wrap=True)
        for j in chunk:
            table.add_column(heads[j], justify="right", width=cell_w, no_wrap=True)
        for i, label in enumerate(rows):
            if i > 0 and kinds[i] != kinds[i - 1]:
                table.add_section()
            cells = []
            for j in chunk:
                v = float(m[i, j])
                r, g, b = _color(v, vmax)
                style = f"black on rgb({r},{g},{b})" if math.isfinite(v) else ""
                cells.append(Text(_fmt(v, fmt), style=style))
            table.add_row(label, *cells)
        if seq.step_scores:
            table.add_section()
            for name, values in seq.step_scores.items():
                table.add_row(Text(name, style="italic"), *[_fmt(float(values[j]), fmt) for j in chunk])
        out.append(table)
    legend = row_legend + col_legend
    if legend:
        out.append(Text(_wrap("  ".join(legend), width), style="dim"))
    return out


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width, break_long_words=True, break_on_hyphens=False))


HTML_STYLE = """
<style>
.inseq-ray { font-family: system-ui, sans-serif; font-size: 13px; margin: 12px 0; overflow-x: auto; }
.inseq-ray table { border-collapse: separate; border-spacing: 0; }
.inseq-ray th, .inseq-ray td { padding: 2px 5px; text-align: right; border: 1px solid #eee; }
.inseq-ray th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
  font-weight: 600; vertical-align: bottom; white-space: nowrap; max-height: 10em; }
.inseq-ray th.row { text-align: left; font-weight: 600; white-space: nowrap; position: sticky; left: 0;
  background: #fff; z-index: 1; }
.inseq-ray th.group { text-align: left; font-weight: 400; color: #666; font-size: 11px; background: #fafafa; }
.inseq-ray tr.sep td, .inseq-ray tr.sep th { border-top: 2px solid #888; }
.inseq-ray tr.divider td, .inseq-ray tr.divider th { border-top: 2px dashed #c00; }
.inseq-ray td.nan { background: #f4f4f4; }
.inseq-ray .score th.row { font-style: italic; font-weight: 400; }
.inseq-ray caption { text-align: left; font-weight: 600; padding-bottom: 4px; caption-side: top; }
.inseq-ray .legend { display: flex; align-items: center; gap: 6px; margin: 6px 0; font-size: 11px; color: #444; }
.inseq-ray .legend .bar { width: 160px; height: 10px; border: 1px solid #ccc; }
</style>
"""


def html_fragment(out: FeatureAttributionOutput) -> str:
    """The heatmap tables (one per sequence) with their inline style, to embed in a page."""
    return HTML_STYLE + "".join(_html_table(seq, i) for i, seq in enumerate(_aggregated(out).sequence_attributions))


def to_html(out: FeatureAttributionOutput) -> str:
    """A self-contained HTML document (inline CSS, no scripts) with one table per sequence."""
    body = html_fragment(out)
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>inseq_ray attributions</title></head><body>{body}</body></html>"


def _legend(vmin: float, vmax: float, fmt: str) -> str:
    """A colour bar from the smallest to the largest score of the table."""
    stops = "rgb(0,0,255),rgb(255,255,255),rgb(255,0,0)" if vmin < 0 else "rgb(255,255,255),rgb(255,0,0)"
    return (
        f"<div class='legend'><span>score</span><span>{_fmt(vmin, fmt)}</span>"
        f"<span class='bar' style='background:linear-gradient(to right,{stops})'></span>"
        f"<span>{_fmt(vmax, fmt)}</span><span>grey: not generated yet</span></div>"
    )


def _html_table(seq: FeatureAttributionSequenceOutput, index: int) -> str:
    rows, cols, m, kinds = _matrix(seq)
    finite = m[m.isfinite()]
    vmax = float(m.nan_to_num().abs().max()) if m.numel() else 0.0
    fmt = number_format(_table_values(m, seq))
    decoder_only = seq.source_attributions is None
    group_names = {"source": "source", "target": "prompt + generated" if decoder_only else "target prefix"}
    head = "".join(f"<th class='col'>{html.escape(c)}</th>" for c in cols)
    lines = [f"<tr><th class='row'></th>{head}</tr>"]
    for i, label in enumerate(rows):
        classes = []
        if i == 0 or kinds[i] != kinds[i - 1]:
            lines.append(
                f"<tr class='sep'><th class='row group' colspan='{len(cols) + 1}'>{group_names[kinds[i]]}</th></tr>"
            )
        if decoder_only and kinds[i] == "target" and i == seq.attr_pos_start:
            classes.append("divider")  # the first generated token: prompt above, generation below
        cells = []
        for j in range(len(cols)):
            v = float(m[i, j])
            if math.isfinite(v):
                r, g, b = _color(v, vmax)
                cells.append(f"<td style='background:rgb({r},{g},{b})' title='{v:.4g}'>{_fmt(v, fmt)}</td>")
            else:
                cells.append("<td class='nan'></td>")
        cls = f" class='{' '.join(classes)}'" if classes else ""
        lines.append(f"<tr{cls}><th class='row'>{html.escape(label)}</th>{''.join(cells)}</tr>")
    for k, (name, values) in enumerate(seq.step_scores.items()):
        sep = " sep" if k == 0 else ""
        row = "".join(f"<td title='{float(v):.4g}'>{_fmt(float(v), fmt)}</td>" for v in values)
        lines.append(f"<tr class='score{sep}'><th class='row'>{html.escape(name)}</th>{row}</tr>")
    caption = html.escape(f"{index}: {caption_text(seq, limit=400)}")
    vmin = float(finite.min()) if finite.numel() else 0.0
    legend = _legend(min(vmin, 0.0), vmax, fmt)
    return (
        f"<div class='inseq-ray'>{legend}<table><caption>{caption}<br><small>rows: attributed tokens · columns: "
        f"generated tokens</small></caption>{''.join(lines)}</table></div>"
    )


def plot(
    out: FeatureAttributionOutput, path: str, index: int | None = None, dpi: int = 120, **agg_kwargs: Any
) -> list[str]:
    """Write one PNG heatmap per sequence (or only sequence ``index``); returns the paths written.

    With several sequences, ``x.png`` becomes ``x_0.png``, ``x_1.png``, ...
    """
    agg = _aggregated(out, **agg_kwargs).sequence_attributions
    picked = range(len(agg)) if index is None else [index]
    stem, dot, ext = path.rpartition(".") if "." in path.rsplit("/", 1)[-1] else (path, ".", "png")
    paths = []
    for i in picked:
        target = path if len(picked) == 1 else f"{stem}_{i}{dot}{ext}"
        paths.append(_plot_one(agg[i], target, dpi, f"{i}: {caption_text(agg[i], limit=90)}"))
    return paths


def _plot_one(seq: FeatureAttributionSequenceOutput, path: str, dpi: int, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, m, kinds = _matrix(seq)
    data = m.numpy()
    fig_w = max(4.0, 1.8 + 0.22 * len(cols))
    fig_h = max(3.0, 1.6 + 0.2 * len(rows))
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=dpi)
    vmax = float(m.nan_to_num().abs().max()) or 1.0
    signed = bool((m.nan_to_num() < 0).any())
    cmap = plt.get_cmap("RdBu_r" if signed else "Reds").with_extremes(bad="#eeeeee")
    im = ax.imshow(data, cmap=cmap, vmin=-vmax if signed else 0, vmax=vmax, aspect="auto", interpolation="nearest")
    font = 8 if max(len(rows), len(cols)) <= 60 else 6
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=font)
    ax.set_yticks(range(len(rows)), rows, fontsize=font)
    ax.xaxis.tick_top()
    for i in range(1, len(kinds)):
        if kinds[i] != kinds[i - 1]:
            ax.axhline(i - 0.5, color="black", linewidth=1)
    if seq.source_attributions is None and 0 < seq.attr_pos_start < len(rows):  # prompt / generation divider
        ax.axhline(seq.attr_pos_start - 0.5, color="#c00", linewidth=1, linestyle="--")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("source / target prefix tokens")
    ax.set_title(title, fontsize=font, loc="left", pad=4)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
