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
    extra = [a for a in ("layer_decay", "group_lrs") if len({_axis_value(r, a) for r in rows}) > 1]
    columns = ["cell", "model", "strategy", "optimizer", "scheduler", *(_AXES[a] for a in extra),
               "train acc", "val acc"]
    columns += ["test acc"] if with_test else []
    columns += ["task", "val mAP", "search R@1", "search mAP"] if with_search else []
    columns += ["time", "trainable params", "trainable %", "size MB", "images/s"]
    body = []
    for r in rows:
        line = [r["cell"], r["model"], r["strategy"], str(r.get("optimizer") or "-"),
                str(r.get("scheduler") or "-"), *(_axis_value(r, a) for a in extra),
                fmt_pct(r.get("train_top1")), fmt_pct(r.get("val_top1"))]
        line += [fmt_pct(r.get("test_top1"))] if with_test else []
        line += [str(r.get("task") or "classify"), fmt_pct(r.get("val_map")),
                 fmt_pct(r.get("retrieval_recall1")), fmt_pct(r.get("retrieval_map"))] if with_search else []
        pct = r.get("trainable_pct")
        line += [fmt_seconds(r.get("seconds")), fmt_count(r.get("trainable_params")),
                 "-" if pct is None else f"{pct:.2f}%" if pct < 1 else f"{pct:.0f}%",
                 fmt_float(r.get("size_mb"), 1), fmt_float(r.get("images_per_sec"), 0)]
        body.append(line)
    return Table(columns, body)


# The grid's axes, in the order a channel of the plot is offered to them (and their labels).
_AXES = {"model": "model", "strategy": "strategy", "optimizer": "optimizer", "scheduler": "scheduler",
         "task": "task", "layer_decay": "layer decay", "group_lrs": "group LRs"}
# Plot channels with how many clearly different values each has: colour, marker, line style.
_CHANNELS = (("colour", 10), ("marker", len(_MARKERS)), ("line", len(_STYLES)))


def plot_styles(rows: Sequence[CompareRow]) -> tuple[list[dict[str, Any]], str]:
    """A matplotlib style per row such that cells differing in any axis look different, and the
    legend of the channels ('colour: model · marker: optimizer').

    Only the axes that vary (and tell cells apart) get a channel: the axis with the most values gets colour (10), the
    next marker (8), the next line style (4); further varying axes share the last channel,
    one value per combination, so no two different cells are drawn alike."""
    values = {a: list(dict.fromkeys(_axis_value(r, a) for r in rows)) for a in _AXES}
    varying: list[str] = []
    for axis in sorted(_AXES, key=lambda a: -len(values[a])):
        # An axis that follows from those already chosen (a resolved layer_decay that differs
        # only because the strategy does) would spend a channel on no new distinction.
        if _distinct(rows, [*varying, axis]) > _distinct(rows, varying):
            varying.append(axis)
    groups: list[list[str]] = [[a] for a in varying[:len(_CHANNELS) - 1]]
    if varying[len(_CHANNELS) - 1:]:
        groups.append(varying[len(_CHANNELS) - 1:])
    combos = [list(dict.fromkeys(tuple(_axis_value(r, a) for a in g) for r in rows)) for g in groups]
    styles = []
    for r in rows:
        index = [c.index(tuple(_axis_value(r, a) for a in g)) for g, c in zip(groups, combos, strict=True)]
        index += [0] * (len(_CHANNELS) - len(index))
        styles.append({"color": f"C{index[0] % 10}", "marker": _MARKERS[index[1] % len(_MARKERS)],
                       "ls": _STYLES[index[2] % len(_STYLES)], "ms": 4})
    legend = " · ".join(f"{name}: {' x '.join(_AXES[a] for a in g)}"
                        for (name, _), g in zip(_CHANNELS, groups, strict=False))
    return styles, legend


def _distinct(rows: Sequence[CompareRow], axes: list[str]) -> int:
    return len({tuple(_axis_value(r, a) for a in axes) for r in rows})


def _axis_value(row: CompareRow, axis: str) -> str:
    value = row.get(axis)
    return "-" if value is None else str(value)


def plot_compare(rows: Sequence[CompareRow]) -> Figure:
    """Validation top-1 against wall time (left) and against epochs (right), one line per
    cell, drawn so that cells differing in any axis of the grid look different (plot_styles)."""
    fig, axes = new_figure(11, 4.2, 1, 2)
    by_time, by_epoch = axes[0]
    styles, legend = plot_styles(rows)
    for r, style in zip(rows, styles, strict=True):
        pts = [p for p in r.get("curve", []) if p[1] is not None]
        if not pts:
            continue
        by_time.plot([p[0] for p in pts], [p[1] for p in pts], label=r["cell"], **style)
        by_epoch.plot([p[2] for p in pts], [p[1] for p in pts], label=r["cell"], **style)
    for ax, xlabel in ((by_time, "wall time (s)"), (by_epoch, "epoch")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val top-1")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.set_title("validation accuracy against wall time")
    by_epoch.set_title("validation accuracy per epoch")
    if legend:
        fig.suptitle(legend, fontsize=8)
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
                              "weights on the test split); time is wall time summed over epochs "
                              "(training, validation, and a probe's one-off feature extraction).")]
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
