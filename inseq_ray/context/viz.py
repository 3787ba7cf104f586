"""Context reliance at a glance: the output with its context-sensitive tokens, and each one's strongest cues
(context tokens above the attribution threshold), as text for the terminal or a static HTML page."""

from __future__ import annotations

import html

from inseq_ray.context.output import AttributeContextOutput, CCIOutput
from inseq_ray.context.texts import select


def _clean(token: str) -> str:
    return token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n")


def cues(cci: CCIOutput, out: AttributeContextOutput, std_weight: float | None, topk: int | None) -> list[tuple]:
    """(side, token, score) of the context tokens selected for ``cci`` (mean + k x std over its scores, top k)."""
    sides = [("input", out.input_context_tokens or [], cci.input_context_scores or []),
             ("output", out.output_context_tokens or [], cci.output_context_scores or [])]  # fmt: skip
    tokens = [(side, t) for side, toks, scores in sides for t in toks[: len(scores)]]
    scores = [s for _, toks, scores in sides for s in scores[: len(toks)]]
    chosen, _ = select([t for _, t in tokens], scores, std_weight, topk)
    return [(tokens[i][0], _clean(tokens[i][1]), s) for i, s, _ in chosen]


def render_text(out: AttributeContextOutput, std_weight: float | None = 1.0, topk: int | None = None) -> str:
    """Lines: the output current tokens with CTI scores (context-sensitive ones starred), then per selected
    token its cues."""
    picked = {c.cti_idx for c in out.cci_scores}
    tokens = out.output_current_tokens or []
    cells = [f"{'*' if i in picked else ''}{_clean(t).strip() or repr(t)}({s:.3f})"
             for i, (t, s) in enumerate(zip(tokens, out.cti_scores or [], strict=False))]  # fmt: skip
    lines = ["context-sensitive tokens (*), CTI score in brackets:", "  " + " ".join(cells)]
    for c in out.cci_scores:
        found = ", ".join(f"{t.strip()!r} ({side} {s:.3g})" for side, t, s in cues(c, out, std_weight, topk))
        lines.append(f"  {_clean(c.cti_token).strip()!r} @ {c.cti_idx} <- {found or 'no cue above the threshold'}")
    return "\n".join(lines)


def render_html(out: AttributeContextOutput, std_weight: float | None = 1.0, topk: int | None = None) -> str:
    """A self-contained page (no scripts, no URLs) with the same content as :func:`render_text`."""
    style = "body{font-family:sans-serif;margin:2em}.sel{background:#fd8;font-weight:bold}td{padding:2px 8px}"
    return f"<!doctype html><meta charset='utf-8'><title>context reliance</title><style>{style}</style>" + html_body(
        out, std_weight, topk
    )


def html_body(out: AttributeContextOutput, std_weight: float | None = 1.0, topk: int | None = None) -> str:
    """The page's content: the output with its context-sensitive tokens marked (class ``sel``), their cues."""
    picked = {c.cti_idx for c in out.cci_scores}
    spans = "".join(
        f"<span class='{'sel' if i in picked else ''}' title='CTI {s:.4g}'>{html.escape(_clean(t))}</span>"
        for i, (t, s) in enumerate(zip(out.output_current_tokens or [], out.cti_scores or [], strict=False))
    )
    rows = "".join(
        f"<tr><td>{html.escape(_clean(c.cti_token))}</td><td>{c.cti_score:.4g}</td><td>"
        + ", ".join(
            f"{html.escape(t)} <small>({side} {s:.3g})</small>" for side, t, s in cues(c, out, std_weight, topk)
        )
        + "</td></tr>"
        for c in out.cci_scores
    )
    context = html.escape(out.input_context or "")
    return (
        f"<p><b>input context:</b> {context}</p><p><b>output:</b> {spans}</p>"
        f"<table><tr><th>token</th><th>CTI</th><th>cues</th></tr>{rows}</table>"
    )
