"""The outputs of `stagewise compare`: compare.json, the table, the plot, compare.html/.md."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io import write_json, write_text
from ..kinds import embeds
from ..runfolder import COMPARE, CompareRow
from .document import (
    Document,
    Image,
    Section,
    Table,
    Text,
    fmt_count,
    fmt_float,
    fmt_pct,
    fmt_seconds,
)
from .html import render_html
from .markdown import render_markdown
from .plots import new_figure, save_figure

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_STYLES = ("-", "--", "-.", ":")


def write_compare(out: Path, rows: Sequence[CompareRow], settings: dict[str, Any], cells: list) -> Path:
    """Write every output of a (possibly partial) grid; returns compare.html."""
    out.mkdir(parents=True, exist_ok=True)
    splits = {r.get("split") for r in rows if r.get("split")}
    write_json(out / COMPARE, {
        "settings": settings,
        "grid": [c.name for c in cells],
        "same_split": len(splits) <= 1,
        "cells": rows,
    })
    plot = save_figure(plot_compare(rows), out / "plots" / "compare.png")
    doc = compare_document(rows, settings, len(cells), plot, same_split=len(splits) <= 1)
    write_text(out / "compare.md", render_markdown(doc, out))
    write_text(out / "compare.html", render_html(doc))
    return out / "compare.html"


def table(rows: Sequence[CompareRow]) -> Table:
    """The comparison table; a test-accuracy column only when some cell has a test split, and
    retrieval columns when the grid has embed cells or searched held-out identities (`search`:
    compare --retrieval-data)."""
    with_test = any(r.get("test_top1") is not None for r in rows)
    with_search = any("retrieval_map" in r or embeds(r.get("task")) for r in rows)
    columns = ["cell", "model", "strategy", "optimizer", "scheduler", "train acc", "val acc"]
    columns += ["test acc"] if with_test else []
    columns += ["task", "val mAP", "search R@1", "search mAP"] if with_search else []
    columns += ["time", "trainable params", "trainable %", "size MB", "images/s"]
    body = []
    for r in rows:
        line = [r["cell"], r["model"], r["strategy"], str(r.get("optimizer") or "-"),
                str(r.get("scheduler") or "-"), fmt_pct(r.get("train_top1")), fmt_pct(r.get("val_top1"))]
        line += [fmt_pct(r.get("test_top1"))] if with_test else []
        line += [str(r.get("task") or "classify"), fmt_pct(r.get("val_map")),
                 fmt_pct(r.get("retrieval_recall1")), fmt_pct(r.get("retrieval_map"))] if with_search else []
        pct = r.get("trainable_pct")
        line += [fmt_seconds(r.get("seconds")), fmt_count(r.get("trainable_params")),
                 "-" if pct is None else f"{pct:.2f}%" if pct < 1 else f"{pct:.0f}%",
                 fmt_float(r.get("size_mb"), 1), fmt_float(r.get("images_per_sec"), 0)]
        body.append(line)
    return Table(columns, body)


def plot_compare(rows: Sequence[CompareRow]) -> Figure:
    """Validation top-1 against training time (left) and against epochs (right), one line per
    cell: colour per model, line style and marker per strategy (colour per strategy too when
    there is a single model)."""
    fig, axes = new_figure(11, 4.2, 1, 2)
    by_time, by_epoch = axes[0]
    models = list(dict.fromkeys(r["model"] for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    for r in rows:
        pts = [p for p in r.get("curve", []) if p[1] is not None]
        if not pts:
            continue
        mi, si = models.index(r["model"]), strategies.index(r["strategy"])
        colour = f"C{(si if len(models) == 1 else mi) % 10}"
        style = {"color": colour, "ls": _STYLES[si % 4], "marker": _MARKERS[si % 8], "ms": 4}
        by_time.plot([p[0] for p in pts], [p[1] for p in pts], label=r["cell"], **style)
        by_epoch.plot([p[2] for p in pts], [p[1] for p in pts], label=r["cell"], **style)
    for ax, xlabel in ((by_time, "training time (s)"), (by_epoch, "epoch")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val top-1")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.set_title("validation accuracy against training time")
    by_epoch.set_title("validation accuracy per epoch")
    if rows:
        by_epoch.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def compare_document(rows: Sequence[CompareRow], settings: dict[str, Any], planned: int,
                     plot: Path, same_split: bool = True) -> Document:
    shared = ", ".join(_flat(settings))
    doc = Document(title="stagewise compare",
                   subtitle=f"{settings.get('data')} · {len(rows)} of {planned} cell(s) · {shared}")
    blocks: list[Any] = [table(rows),
                         Text("Accuracies are top-1 at each cell's best validation epoch (test: those "
                              "weights on the test split); time is training time summed over epochs.")]
    if len(rows) < planned:
        blocks.append(Text(f"{planned - len(rows)} cell(s) not trained yet.", note=True))
    if not same_split:
        blocks.append(Text("The cells did not all use the same train/val split.", note=True))
    doc.sections.append(Section("Results", blocks))
    doc.sections.append(Section("Validation accuracy over time", [Image(plot, "One line per cell.")]))
    return doc


def _flat(settings: dict[str, Any]) -> list[str]:
    """'key=value' for the shared settings, 'probe.lr=0.02' for per-cell ones."""
    out = []
    for key, value in settings.items():
        if key == "data":
            continue
        if isinstance(value, dict):
            out += [f"{key}.{k}={v}" for k, v in value.items()]
        else:
            out.append(f"{key}={value}")
    return out
