"""A report as plain data (sections of tables, figures, text), rendered by html.py and markdown.py.

Building the content once and rendering it twice keeps report.html and report.md in step: a
section added for one appears in the other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    """A PNG written under the report folder; `path` is absolute, the renderers relativise it."""

    path: Path
    caption: str = ""


@dataclass
class Text:
    text: str
    note: bool = False  # a warning-style remark (something could not be drawn)


@dataclass
class Code:
    text: str
    summary: str = ""  # shown folded in HTML (<details>), as a heading line in markdown
    language: str = ""  # markdown fence language, e.g. "yaml"


Block = Table | Image | Text | Code


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2


@dataclass
class Document:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)


def fmt_pct(value: Any, digits: int = 1) -> str:
    """0.8734 -> '87.3%'; missing or non-finite values as '-'."""
    if not _finite(value):
        return "-"
    return f"{100.0 * float(value):.{digits}f}%"


def fmt_float(value: Any, digits: int = 4) -> str:
    return f"{float(value):.{digits}f}" if _finite(value) else "-"


def fmt_count(value: Any) -> str:
    """Parameter counts: 372979 -> '373.0K', 5.3e6 -> '5.30M'."""
    if not _finite(value):
        return "-"
    n = float(value)
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f}K"
    return f"{int(n)}"


def fmt_seconds(value: Any) -> str:
    if not _finite(value):
        return "-"
    s = float(value)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_signed_pct(value: Any) -> str:
    """A difference in accuracy points: +12.5 pp."""
    return f"{100.0 * float(value):+.1f} pp" if _finite(value) else "-"


def is_numeric(text: str) -> bool:
    """A table cell that reads as a number ('87.3%', '+2.1 pp', '1.2M', '3/10', '-')."""
    return bool(_NUMBER.match(text.strip()))


_NUMBER = re.compile(r"^([-+]?\d[\d.,]*\s*(%|pp|[KMG]|px|s|m\d+s|h\d+m|MB)?(\s*/\s*[\d.,]+[KMG]?)?"
                     r"(\s*\([\d.]+%\))?|-)$")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
