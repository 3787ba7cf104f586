"""Inseq's other views: ``show_attributions`` (the heatmap of :mod:`inseq_ray.viz`), ``show_granular_attributions``
(each step's per-token scores along one extra dimension: hidden units, layers, heads) and
``show_token_attributions`` (the generated text, each token opening the scores of the tokens it was attributed
to, optionally highlighted by a step score). HTML with inline styles (no scripts: ``<details>`` open on click);
outside notebooks the same views print to the terminal (Inseq refuses there)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import torch

from inseq_ray.output import FeatureAttributionOutput, FeatureAttributionSequenceOutput
from inseq_ray.viz import _color, _in_notebook, number_format, show

Seqs = FeatureAttributionOutput | FeatureAttributionSequenceOutput | Sequence[FeatureAttributionSequenceOutput]
STYLE = (
    "<style>.ir-v{font-family:sans-serif;font-size:13px}.ir-v table{border-collapse:collapse;margin:4px 0}"
    ".ir-v td,.ir-v th{border:1px solid #ddd;padding:2px 5px;text-align:right}.ir-v .tok{padding:1px 3px;"
    "margin:1px;border-radius:3px;display:inline-block}.ir-v summary{cursor:pointer}</style>"
)


def _seqs(attributions: Seqs) -> list[FeatureAttributionSequenceOutput]:
    if isinstance(attributions, FeatureAttributionSequenceOutput):
        return [attributions]
    if isinstance(attributions, FeatureAttributionOutput):
        return list(attributions.sequence_attributions)
    return list(attributions)


def show_attributions(
    attributions: Seqs, min_val: float | None = None, max_val: float | None = None, display: bool = True,
    return_html: bool = False,
) -> str | None:  # fmt: skip
    """Inseq's ``show_attributions``: the aggregated heatmap (terminal, notebook HTML, or the HTML returned).
    ``min_val``/``max_val`` are accepted for Inseq's signature; the colour scale is each table's own."""
    return show(FeatureAttributionOutput(_seqs(attributions)), return_html=return_html, display=display)


def _emit(body: str, display: bool, return_html: bool, terminal: str) -> str | None:
    page = f"{STYLE}<div class='ir-v'>{body}</div>"
    if return_html:
        return page
    if display and _in_notebook():  # pragma: no cover - needs a kernel
        from IPython.display import HTML
        from IPython.display import display as ipy_display

        ipy_display(HTML(page))
    elif display:
        print(terminal)
    return None


def _span(token: str, value: float, vmax: float) -> str:
    r, g, b = _color(value, vmax)
    title = f"{value:.4g}" if math.isfinite(value) else ""
    return f"<span class='tok' style='background:rgb({r},{g},{b})' title='{title}'>{html.escape(token)}</span>"


def _clean(token: str, replace_char: dict[str, str]) -> str:
    for old, new in replace_char.items():
        token = token.replace(old, new)
    return token


def _wrapped(tokens: list[str], wrap_after: int | str | Sequence[str] | None) -> list[bool]:
    """Whether a line break follows each token: every ``wrap_after`` tokens (int), or after tokens ending in one
    of the given strings or characters."""
    if wrap_after is None:
        return [False] * len(tokens)
    if isinstance(wrap_after, int):
        return [(i + 1) % wrap_after == 0 for i in range(len(tokens))]
    ends = tuple(wrap_after) if not isinstance(wrap_after, str) or len(wrap_after) > 1 else (wrap_after,)
    return [t.strip().endswith(ends) for t in tokens]


def show_token_attributions(
    attributions: Seqs, min_val: float | None = None, max_val: float | None = None, display: bool = True,
    return_html: bool = False, replace_char: dict[str, str] | None = None,
    wrap_after: int | str | Sequence[str] | None = None, step_score_highlight: str | None = None,
) -> str | None:  # fmt: skip
    """Inseq's token view: per sequence the generated text (highlighted by ``step_score_highlight``), each token
    opening its source and target scores; ``replace_char`` cleans token strings, ``wrap_after`` breaks lines."""
    seqs = [s.aggregate() if s.attribution_dims else s for s in _seqs(attributions)]
    parts, lines = [], []
    for seq in seqs:
        if step_score_highlight is not None and step_score_highlight not in seq.step_scores:
            raise ValueError(
                f"step_score_highlight={step_score_highlight!r}: not among this output's step scores "
                f"({', '.join(seq.step_scores) or 'none'}); add it to step_scores=[...] when attributing."
            )
        body, text = _token_view(seq, max_val, replace_char or {}, wrap_after, step_score_highlight)
        parts.append(body)
        lines.append(text)
    return _emit("".join(parts), display, return_html, "\n\n".join(lines))


def _token_view(seq, max_val, replace_char, wrap_after, highlight) -> tuple[str, str]:
    """One sequence's token view: (HTML, terminal text)."""
    scores = [m for m in (seq.source_attributions, seq.target_attributions) if m is not None]
    vmax = max_val or max((float(m.nan_to_num().abs().max()) for m in scores), default=1.0)
    generated = [_clean(t.token, replace_char) for t in seq.generated]
    lights = seq.step_scores[highlight].float() if highlight else None
    light_max = float(lights.abs().max()) if lights is not None else 1.0
    title = f"Generated text with {highlight} highlights" if highlight else "Generated text"
    items, text = [f"<p><b>{html.escape(title)}</b></p>"], [title + ":"]
    for t, (tok, brk) in enumerate(zip(generated, _wrapped(generated, wrap_after), strict=True)):
        head = _span(tok, float(lights[t]), light_max) if lights is not None else html.escape(tok)
        inner = [_side(seq, side, t, vmax, replace_char, wrap_after, tok) for side in ("source", "target")]
        items.append(f"<details style='display:inline-block'><summary>{head}</summary>{''.join(inner)}</details>")
        items.append("<br>" if brk else "")
        text.append(f"  {tok!r}: " + _terminal_row(seq, t))
    return "<div>" + "".join(items) + "</div>", "\n".join(text)


def _side(seq, side: str, t: int, vmax: float, replace_char, wrap_after, tok: str) -> str:
    m = seq.source_attributions if side == "source" else seq.target_attributions
    if m is None:
        return ""
    tokens = [_clean(x.token, replace_char) for x in (seq.source if side == "source" else seq.target)]
    column = m[:, t].tolist()
    spans = [_span(x, v, vmax) + ("<br>" if brk else "")
             for x, v, brk in zip(tokens, column, _wrapped(tokens, wrap_after), strict=True) if math.isfinite(v)]  # fmt: skip
    return f"<p><i>{side.capitalize()} attributions for {html.escape(repr(tok))}</i><br>{''.join(spans)}</p>"


def _terminal_row(seq, t: int) -> str:
    pairs = []
    for m, tokens in ((seq.source_attributions, seq.source), (seq.target_attributions, seq.target)):
        if m is not None:
            pairs += [(x.token, v) for x, v in zip(tokens, m[:, t].tolist(), strict=True) if math.isfinite(v)]
    top = sorted(pairs, key=lambda p: -abs(p[1]))[:5]
    return ", ".join(f"{tok} {v:.2f}" for tok, v in top)


def show_granular_attributions(
    attributions: Seqs, max_show_size: int = 20, min_val: float | None = None, max_val: float | None = None,
    show_dim: int | str | None = None, slice_dims: dict[int | str, tuple[int, int]] | None = None,
    display: bool = True, return_html: bool = False,
) -> str | None:  # fmt: skip
    """Inseq's granular view: per sequence, side and step, the tokens' scores along one extra dimension
    (``show_dim``: its index among the extra dims or its name, default the first; at most ``max_show_size`` of it
    shown), after ``slice_dims`` ({dim: (start, end)}); other extra dimensions are averaged (said in the caption)."""
    parts, lines = [], []
    for seq in _seqs(attributions):
        if not seq.attribution_dims:
            raise ValueError("show_granular needs granular scores (attribute without aggregate_hidden_fn).")
        for side, m, tokens in (("source", seq.source_attributions, seq.source), ("target", seq.target_attributions, seq.target)):  # fmt: skip
            if m is not None:
                grid, caption = _granular(m, seq.attribution_dims, show_dim, slice_dims or {}, max_show_size)
                parts.append(_grid_html(grid, [t.token for t in tokens], seq, side, caption, max_val))
                lines.append(f"{side}: {caption}; scores {tuple(grid.shape)} (tokens, steps, shown)")
    return _emit("".join(parts), display, return_html, "\n".join(lines))


def _granular(m: torch.Tensor, dims: tuple[str, ...], show_dim, slice_dims: dict, max_size: int):
    """(L, T, *dims) -> (L, T, K) along the shown dim (K <= max_size), other extra dims averaged; and a caption."""
    index = {name: i for i, name in enumerate(dims)}

    def position(key: int | str) -> int:
        if isinstance(key, str) and key not in index:
            raise ValueError(f"{key!r} is not a dimension of these scores ({', '.join(dims)}).")
        return index[key] if isinstance(key, str) else int(key)

    for key, (a, b) in slice_dims.items():
        m = m.narrow(2 + position(key), a, b - a)
    shown = 0 if show_dim is None else position(show_dim)
    m = m.movedim(2 + shown, -1)  # (L, T, *others, K)
    averaged = m.dim() > 3
    if averaged:
        m = m.flatten(2, -2).nanmean(2)
    size = m.shape[-1]
    caption = f"{dims[shown]}: {min(size, max_size)} of {size} shown" + (" (other dims averaged)" if averaged else "")
    return m[..., :max_size], caption


def _grid_html(grid: torch.Tensor, tokens: list[str], seq, side: str, caption: str, max_val) -> str:
    vmax = max_val or float(grid.nan_to_num().abs().max()) or 1.0
    fmt = number_format(grid.flatten().tolist())
    blocks = [f"<p><b>{side} · {html.escape(caption)}</b></p>"]
    for t, gen in enumerate(seq.generated):
        rows = []
        for i, tok in enumerate(tokens):
            values = grid[i, t].tolist()
            if not any(math.isfinite(v) for v in values):
                continue
            cells = "".join(f"<td style='background:rgb{_color(v, vmax)}' title='{v:.4g}'>"
                            f"{fmt.format(v) if math.isfinite(v) else ''}</td>" for v in values)  # fmt: skip
            rows.append(f"<tr><th>{html.escape(tok)}</th>{cells}</tr>")
        blocks.append(
            f"<details><summary>step {t}: {html.escape(gen.token)}</summary><table>{''.join(rows)}</table></details>"
        )
    return "".join(blocks)
