"""Render a Document as one self-contained HTML file.

Self-contained means the page makes no request at all when opened: images are embedded as
base64 data URIs, the style sheet is inline, there is no script and no web font (system font
stacks only), and the favicon is an empty data URI so browsers do not go looking for one.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from .document import Code, Document, Image, Section, Table, Text, is_numeric

_STYLE = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1180px; padding: 1.5rem 2rem 4rem; color: #1d2430; background: #fff;
       line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #d8dde6; padding-bottom: 0.25rem; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.6rem; }
.subtitle { color: #5b6475; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.86rem; }
th, td { border: 1px solid #d8dde6; padding: 0.28rem 0.55rem; text-align: left; white-space: nowrap; }
th { background: #f2f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
caption { caption-side: top; text-align: left; color: #5b6475; padding-bottom: 0.3rem; }
figure { margin: 0.8rem 0 1.2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eef0f4; }
figcaption { color: #5b6475; font-size: 0.85rem; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 0.4rem 0.7rem; }
pre { background: #f6f8fa; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem;
      font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
nav ul { columns: 2; font-size: 0.9rem; }
"""


def render_html(doc: Document) -> str:
    """The whole page as a string; images are read from disk and embedded."""
    toc = "".join(f'<li><a href="#s{i}">{escape(s.title)}</a></li>'
                  for i, s in enumerate(doc.sections) if s.level == 2)
    body = "\n".join(_section(s, i) for i, s in enumerate(doc.sections))
    subtitle = f'<p class="subtitle">{escape(doc.subtitle)}</p>' if doc.subtitle else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{escape(doc.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{escape(doc.title)}</h1>\n{subtitle}\n<nav><ul>{toc}</ul></nav>\n{body}\n"
        "</body>\n</html>\n"
    )


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _section(section: Section, i: int) -> str:
    level = min(max(section.level, 2), 4)
    head = f'<h{level} id="s{i}">{escape(section.title)}</h{level}>'
    return head + "\n" + "\n".join(_block(b) for b in section.blocks)


def _cell(value: object) -> str:
    text = str(value)
    cls = ' class="num"' if is_numeric(text) else ""
    return f"<td{cls}>{escape(text)}</td>"


def _block(block: Table | Image | Text | Code) -> str:
    if isinstance(block, Table):
        caption = f"<caption>{escape(block.caption)}</caption>" if block.caption else ""
        head = "".join(f"<th>{escape(c)}</th>" for c in block.columns)
        rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in block.rows)
        table = f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        return f'<div class="scroll">{table}</div>'  # wide tables scroll, not the page
    if isinstance(block, Image):
        if not Path(block.path).is_file():
            return f'<p class="note">image missing: {escape(str(block.path))}</p>'
        cap = f"<figcaption>{escape(block.caption)}</figcaption>" if block.caption else ""
        alt = escape(Path(block.path).stem)
        return f'<figure><img src="{data_uri(block.path)}" alt="{alt}">{cap}</figure>'
    if isinstance(block, Code):
        pre = f"<pre>{escape(block.text)}</pre>"
        return f"<details><summary>{escape(block.summary)}</summary>{pre}</details>" if block.summary else pre
    cls = ' class="note"' if block.note else ""
    return f"<p{cls}>{escape(block.text)}</p>"
