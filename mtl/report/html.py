"""The few HTML pieces the report is made of: escaped text, tables, figures, the page. No JavaScript, no
external resources: every ``src`` / ``href`` is a relative path inside the site."""
from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 0; color: #1b1b1b;
       background: #fafafa; }
header { background: #1f3a5a; color: #fff; padding: 14px 28px; }
header h1 { margin: 0 0 4px 0; font-size: 24px; }
header p { margin: 0; opacity: 0.85; }
nav { background: #e8eef5; padding: 8px 28px; position: sticky; top: 0; border-bottom: 1px solid #c8d3e0; z-index: 2; }
nav a { margin-right: 18px; color: #1f3a5a; text-decoration: none; font-weight: 600; }
main { padding: 6px 28px 40px 28px; max-width: 1500px; }
section { background: #fff; border: 1px solid #dde3ea; border-radius: 6px; padding: 4px 20px 16px 20px;
          margin: 18px 0; }
h2 { font-size: 21px; border-bottom: 2px solid #1f3a5a; padding-bottom: 4px; }
h3 { font-size: 17px; margin-top: 22px; }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 14px 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #0a7a2f; font-weight: 600; }
.fail { color: #b3261e; font-weight: 600; }
.muted { color: #666; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 10px; margin: 8px 0; }
figure { margin: 10px 0 18px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #dde3ea; }
figcaption { color: #555; font-size: 13px; margin-top: 3px; }
.sheet { display: grid; grid-template-columns: repeat(auto-fill, minmax(680px, 1fr)); gap: 14px; }
.card { border: 1px solid #dde3ea; border-radius: 5px; padding: 8px; background: #fff; }
.card .pair { display: flex; gap: 8px; align-items: flex-start; }
.card .pair a { flex: 1 1 0; min-width: 0; }
.card img { width: 100%; height: auto; border: 1px solid #e3e7ec; }
.card h4 { margin: 0 0 6px 0; font-size: 14px; word-break: break-all; }
.thumbs { display: flex; flex-wrap: wrap; gap: 10px; }
.thumbs figure { width: 460px; margin: 0; }
details { margin: 6px 0; }
summary { cursor: pointer; font-weight: 600; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 13px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the tables show it ('-' for missing)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:              # NaN
            return "-"
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], raw: bool = False) -> str:
    """An HTML table; numbers right-aligned. Cells are escaped unless ``raw`` (already HTML)."""
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = []
        for v in row:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            text = v if raw and isinstance(v, str) else esc(fmt(v))
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def figure(src: str, caption: str, alt: str | None = None, width: int | None = None) -> str:
    """An image (linking to itself at full size) with a caption."""
    w = f' width="{width}"' if width else ""
    return (f'<figure><a href="{esc(src)}"><img src="{esc(src)}" alt="{esc(alt or caption)}"{w}></a>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def status(passed: bool | None, text: str | None = None) -> str:
    if passed is None:
        return esc(text or "-")
    return f'<span class="{"pass" if passed else "fail"}">{esc(text or ("PASS" if passed else "FAIL"))}</span>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


@dataclass
class Section:
    """One input's part of the site: its HTML, the files it needs (site-relative path -> bytes) and the
    headline metrics it contributes to the overview (``{"source", "what", "frames", "miou", "pixel_acc", "map"}``)."""

    anchor: str
    title: str
    kind: str
    path: str
    body: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    key_metrics: list[dict[str, Any]] = field(default_factory=list)


def page(title: str, subtitle: str, sections: Sequence[Section], overview: str) -> str:
    """The whole index.html."""
    nav = " ".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>\n"
            f'<nav><a href="#overview">Overview</a> {nav}</nav>\n<main>\n'
            f'<section id="overview"><h2>Overview</h2>\n{overview}\n</section>\n{body}\n</main>\n</body></html>\n')
