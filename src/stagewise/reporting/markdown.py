"""Render a Document as markdown, with images linked relative to the report's folder."""

from __future__ import annotations

import os
from pathlib import Path

from .document import Code, Document, Image, Section, Table, Text, is_numeric


def render_markdown(doc: Document, folder: Path) -> str:
    """Markdown for a report written into `folder` (image links are relative to it)."""
    parts = [f"# {doc.title}", ""]
    if doc.subtitle:
        parts += [f"_{_escape(doc.subtitle)}_", ""]
    for section in doc.sections:
        parts += _section(section, Path(folder))
    return "\n".join(parts).rstrip() + "\n"


def _section(section: Section, folder: Path) -> list[str]:
    out = ["#" * min(max(section.level, 2), 4) + " " + section.title, ""]
    for block in section.blocks:
        out += _block(block, folder) + [""]
    return out


def _block(block: Table | Image | Text | Code, folder: Path) -> list[str]:
    if isinstance(block, Table):
        lines = [f"_{_escape(block.caption)}_", ""] if block.caption else []
        lines.append("| " + " | ".join(_cell(c) for c in block.columns) + " |")
        numeric = [bool(block.rows) and all(is_numeric(str(r[i])) for r in block.rows)
                   for i in range(len(block.columns))]
        lines.append("|" + "|".join("---:" if n else ":---" for n in numeric) + "|")
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in block.rows]
        return lines
    if isinstance(block, Image):
        rel = Path(os.path.relpath(block.path, folder)).as_posix()
        lines = [f"![{Path(block.path).stem}]({rel})"]
        return lines + ([f"_{_escape(block.caption)}_"] if block.caption else [])
    if isinstance(block, Code):
        lines = [f"**{block.summary}**", ""] if block.summary else []
        return lines + [f"```{block.language}", block.text.rstrip(), "```"]
    return [f"> **Note:** {block.text}" if block.note else block.text]


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _escape(text: str) -> str:
    return text.replace("_", "\\_").replace("*", "\\*")
