"""HTML of the run report: self-contained pages (inline CSS and SVG, no scripts, no external URLs)."""

from __future__ import annotations

from html import escape
from typing import Any

import polars as pl

STYLE = """
<style>
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d1d1f; background: #f6f7f9;
  font-size: 14px; line-height: 1.45; }
main { max-width: 1400px; margin: 0 auto; padding: 16px clamp(10px, 3vw, 32px) 48px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #555; margin: 0 0 12px; overflow-wrap: anywhere; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; }
.card { background: #fff; border: 1px solid #e3e5e8; border-radius: 8px; padding: 10px 12px; }
.card .v { font-size: 20px; font-weight: 600; } .card .k { color: #666; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 420px), 1fr)); gap: 12px; }
.panel { background: #fff; border: 1px solid #e3e5e8; border-radius: 8px; padding: 10px; min-width: 0; }
.scroll { overflow-x: auto; }
table.t { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
table.t th, table.t td { border-bottom: 1px solid #eceef1; padding: 4px 8px; text-align: left; vertical-align: top; }
table.t th { background: #fafbfc; font-weight: 600; white-space: nowrap; }
table.t td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.t td.txt { min-width: 12em; max-width: 38em; overflow-wrap: anywhere; }
code, .tok { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
.tok { background: #eef2f7; border-radius: 3px; padding: 0 3px; white-space: pre; }
a { color: #1f5fa6; } .muted { color: #777; }
details summary { cursor: pointer; color: #1f5fa6; margin: 6px 0; }
</style>
"""


def page(title: str, body: str, back: str | None = None) -> str:
    nav = f'<p><a href="{escape(back)}">&larr; run report</a></p>' if back else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title>{STYLE}</head><body><main>{nav}{body}</main></body></html>"
    )


def cards(items: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<div class='card'><div class='v'>{escape(str(v))}</div><div class='k'>{escape(k)}</div></div>"
                    for k, v in items)  # fmt: skip
    return f"<div class='cards'>{cells}</div>"


def table(df: pl.DataFrame, links: dict[str, str] | None = None, token_cols: tuple[str, ...] = ()) -> str:
    """A frame as an HTML table; ``links`` maps a seq_id to its page; numbers right-aligned."""
    if df.is_empty():
        return "<p class='muted'>none</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in df.columns)
    rows = []
    for row in df.iter_rows(named=True):
        cells = []
        for col, value in row.items():
            cells.append(_cell(col, value, links or {}, col in token_cols))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='scroll'><table class='t'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def _cell(col: str, value: Any, links: dict[str, str], token: bool) -> str:
    if isinstance(value, float):
        return f"<td class='n'>{value:.4g}</td>"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"<td class='n'>{value:,}</td>"
    text = "" if value is None else str(value)
    if col == "seq_id" and text in links:
        return f"<td><a href='{escape(links[text])}'><code>{escape(text)}</code></a></td>"
    if token:
        return f"<td><span class='tok'>{escape(text)}</span></td>"
    return f"<td class='txt'>{escape(text)}</td>"


def key_values(d: dict) -> str:
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td class='txt'><code>{escape(_short(v))}</code></td></tr>"
        for k, v in d.items()
        if v not in (None, {}, [])
    )
    return f"<div class='scroll'><table class='t'>{rows}</table></div>"


def _short(v: Any) -> str:
    text = v if isinstance(v, str) else repr(v)
    return text if len(text) <= 300 else text[:297] + "..."


def panels(items: list[str]) -> str:
    return "<div class='grid'>" + "".join(f"<div class='panel'>{x}</div>" for x in items) + "</div>"
