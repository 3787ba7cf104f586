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
            for table in rich_tables(seq, console.width, title=f"Sequence {i}"):
                console.print(table)
    return None


def _color(value: float, vmax: float) -> tuple[int, int, int]:
    """White -> red for positive, white -> blue for negative, scaled by vmax."""
    if not math.isfinite(value) or vmax == 0:
        return (255, 255, 255)
    a = min(abs(value) / vmax, 1.0)
    return (
        (255, int(255 * (1 - a)), int(255 * (1 - a))) if value >= 0 else (int(255 * (1 - a)), int(255 * (1 - a)), 255)
    )


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return ""
    return f"{value:.2f}".replace("0.", ".", 1) if abs(value) < 1 else f"{value:.1f}"


def _fmt_score(value: float) -> str:
    """Step scores: two decimals, or scientific notation for small magnitudes (fits 5 chars)."""
    if math.isfinite(value) and 0 < abs(value) < 0.01:
        return f"{value:.0e}".replace("e-0", "e-")
    return _fmt(value)


def rich_tables(seq: FeatureAttributionSequenceOutput, width: int = 80, title: str = "") -> list:
    """One or more rich Tables (columns split so each fits ``width`` characters)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows, cols, m, kinds = _matrix(seq)
    vmax = float(m.nan_to_num().abs().max()) if m.numel() else 0.0
    label_w = min(14, max([len(r) for r in rows] + [len(k) for k in seq.step_scores] + [6]))
    cell_w = 5
    per_table = max(1, (width - label_w - 2) // (cell_w + 1))
    tables = []
    for start in range(0, max(len(cols), 1), per_table):
        chunk = range(start, min(start + per_table, len(cols)))
        part = f" (steps {start}-{chunk[-1]})" if len(cols) > per_table and len(chunk) else ""
        table = Table(title=f"{title}{part}", pad_edge=False, box=box.SIMPLE_HEAD, header_style="bold")
        table.add_column("", max_width=label_w, no_wrap=True, overflow="ellipsis")
        for j in chunk:
            table.add_column(cols[j][:cell_w], justify="right", width=cell_w, no_wrap=True)
        for i, label in enumerate(rows):
            if i > 0 and kinds[i] != kinds[i - 1]:
                table.add_section()
            cells = []
            for j in chunk:
                v = float(m[i, j])
                r, g, b = _color(v, vmax)
                style = f"black on rgb({r},{g},{b})" if math.isfinite(v) else ""
                cells.append(Text(_fmt(v), style=style))
            table.add_row(label, *cells)
        if seq.step_scores:
            table.add_section()
            for name, values in seq.step_scores.items():
                table.add_row(Text(name, style="italic"), *[_fmt_score(float(values[j])) for j in chunk])
        tables.append(table)
    return tables


HTML_STYLE = """
<style>
.inseq-ray { font-family: system-ui, sans-serif; font-size: 13px; margin: 12px 0; }
.inseq-ray table { border-collapse: collapse; }
.inseq-ray th, .inseq-ray td { padding: 2px 5px; text-align: right; border: 1px solid #eee; }
.inseq-ray th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
  font-weight: 600; vertical-align: bottom; white-space: nowrap; max-height: 10em; }
.inseq-ray th.row { text-align: left; font-weight: 600; white-space: nowrap; }
.inseq-ray tr.sep td, .inseq-ray tr.sep th { border-top: 2px solid #888; }
.inseq-ray td.nan { background: #f4f4f4; }
.inseq-ray .score th.row { font-style: italic; font-weight: 400; }
.inseq-ray caption { text-align: left; font-weight: 600; padding-bottom: 4px; }
</style>
"""


def to_html(out: FeatureAttributionOutput) -> str:
    """A self-contained HTML document (inline CSS, no scripts) with one table per sequence."""
    body = "".join(_html_table(seq, i) for i, seq in enumerate(_aggregated(out).sequence_attributions))
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>inseq_ray attributions</title>{HTML_STYLE}</head><body>{body}</body></html>"


def _html_table(seq: FeatureAttributionSequenceOutput, index: int) -> str:
    rows, cols, m, kinds = _matrix(seq)
    vmax = float(m.nan_to_num().abs().max()) if m.numel() else 0.0
    head = "".join(f"<th class='col'>{html.escape(c)}</th>" for c in cols)
    lines = [f"<tr><th></th>{head}</tr>"]
    for i, label in enumerate(rows):
        sep = " class='sep'" if i > 0 and kinds[i] != kinds[i - 1] else ""
        cells = []
        for j in range(len(cols)):
            v = float(m[i, j])
            if math.isfinite(v):
                r, g, b = _color(v, vmax)
                cells.append(f"<td style='background:rgb({r},{g},{b})' title='{v:.4g}'>{_fmt(v)}</td>")
            else:
                cells.append("<td class='nan'></td>")
        lines.append(f"<tr{sep}><th class='row'>{html.escape(label)}</th>{''.join(cells)}</tr>")
    for k, (name, values) in enumerate(seq.step_scores.items()):
        sep = " sep" if k == 0 else ""
        cells = "".join(f"<td title='{float(v):.4g}'>{_fmt_score(float(v))}</td>" for v in values)
        lines.append(f"<tr class='score{sep}'><th class='row'>{html.escape(name)}</th>{cells}</tr>")
    caption = f"Sequence {index}: source/prefix tokens (rows) × generated tokens (columns)"
    return f"<div class='inseq-ray'><table><caption>{caption}</caption>{''.join(lines)}</table></div>"


def plot(out: FeatureAttributionOutput, path: str, index: int = 0, dpi: int = 120, **agg_kwargs: Any) -> str:
    """Write a PNG heatmap of sequence ``index``; the figure grows with the token counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq = _aggregated(out, **agg_kwargs).sequence_attributions[index]
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
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("source / target prefix tokens")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
