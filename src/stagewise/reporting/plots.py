"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

No pyplot: figures are plain objects (no global state, no GUI backend, nothing leaks between
reports), and each function returns its Figure so tests can inspect what was drawn. Markers carry
a gid ("stage-boundary", "unfreeze") so they can be found again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from ..io import write_with
from ..metrics import Panel, curves
from .history import RunHistory

BOUNDARY_GID = "stage-boundary"
UNFREEZE_GID = "unfreeze"
MAX_CONFUSION_CLASSES = 50  # a heatmap beyond this is unreadable; the report lists pairs instead
MAX_BAR_CLASSES = 50

# (axes index, metric) for the training curves: the metric registry says which panel draws what.
_PANELS: tuple[Panel, ...] = ("loss", "accuracy")
_CURVES = tuple((i, m) for i, panel in enumerate(_PANELS) for m in curves(panel))


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1,
               layout: Literal["constrained", "compressed", "tight"] | None = "constrained",
               ) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Write a PNG atomically (a reader never sees half an image)."""
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return path


def mark_stages(ax: Any, history: RunHistory) -> None:
    """Vertical lines at stage boundaries (solid) and unfreeze events (dotted); stage names on
    a top axis, centred over each stage's epochs."""
    for x, _name in history.boundaries:
        ax.axvline(x, color="0.35", lw=1.2, gid=BOUNDARY_GID, label="_stage boundary")
    for stage in history.stages:
        for x, text in stage.events:
            ax.axvline(x, color="tab:purple", lw=1, ls=":", gid=UNFREEZE_GID, label="_" + text)
    if history.kind == "pipeline" and history.stages:
        top = ax.secondary_xaxis("top")
        top.set_xticks([s.offset + (max(s.epochs_run, 1) + 1) / 2 for s in history.stages],
                       [_short(s.name, 16) for s in history.stages], fontsize=8, color="0.3")
        top.tick_params(length=0)


def plot_curves(history: RunHistory) -> Figure:
    """Loss (left) and accuracy (right) on the global epoch axis, every stage one after another."""
    fig, axes = new_figure(11, 4, 1, 2)
    loss_ax, acc_ax = axes[0]
    colors = {m.name: f"C{i}" for i, (_, m) in enumerate(_CURVES)}
    for ax_i, m in _CURVES:
        ax, key, label, style = axes[0][ax_i], m.name, m.label, m.style
        for stage in history.stages:  # one segment per stage: classes may change between stages
            pts = [(r["x"], r[key]) for r in stage.global_records() if _finite(r.get(key))]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, style, color=colors[key], marker="o", ms=3,
                        label="_" + label if _plotted(ax, label) else label)
    for stage in history.stages:  # the pipeline's baseline run of a stage, where it made one
        baseline = stage.baseline or {}
        curve = baseline.get("curve") or []
        pts = [(stage.offset + i + 1, v) for i, v in enumerate(curve) if _finite(v)]
        if pts:
            label = f"baseline val top-1 ({baseline.get('kind', 'baseline')})"
            acc_ax.plot(*zip(*pts, strict=True), "-.", color="0.5", marker="x", ms=4, gid="baseline",
                        label="_" + label if _plotted(acc_ax, label) else label)
    for ax, title in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        mark_stages(ax, history)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (all stages)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_lines() and any(not t.startswith("_") for t in ax.get_legend_handles_labels()[1]):
            ax.legend(fontsize=8, loc="best")
    acc_ax.set_ylim(-0.02, 1.02)
    if not history.epochs:
        loss_ax.text(0.5, 0.5, "no epochs recorded yet", transform=loss_ax.transAxes, ha="center")
    return fig


def lr_series(history: RunHistory) -> list[tuple[list[str], list[list[tuple[int, float]]]]]:
    """LR per param group as one segment per stage; groups with identical LRs share an entry."""
    per_group: dict[str, list[list[tuple[int, float]]]] = {}
    for si, stage in enumerate(history.stages):
        for r in stage.global_records():
            for group, lr in (r.get("lr") or {}).items():
                if _finite(lr):
                    segments = per_group.setdefault(group, [[] for _ in history.stages])
                    segments[si].append((r["global_epoch"], float(lr)))
    merged: dict[str, tuple[list[str], list[list[tuple[int, float]]]]] = {}
    for group, segments in per_group.items():
        key = repr(segments)
        merged.setdefault(key, ([], segments))[0].append(group)
    return list(merged.values())


def plot_lr(history: RunHistory) -> Figure:
    """The LR of every param group at the end of each epoch."""
    series = lr_series(history)
    fig, axes = new_figure(9.5, 3.6)
    ax = axes[0][0]
    cmap = _colormap(len(series))
    for (groups, segments), colour in zip(series, cmap, strict=True):
        label = groups[0] if len(groups) == 1 else f"{groups[0]} … {groups[-1]} ({len(groups)} groups)"
        for seg in segments:
            if seg:
                xs, ys = zip(*seg, strict=True)
                ax.plot(xs, ys, "-o", ms=2.5, lw=1.2, color=colour,
                        label="_" + label if _plotted(ax, label) else label)
    values = [y for _, segs in series for seg in segs for _, y in seg if y > 0]
    if values and max(values) / min(values) > 30:  # several decades: log scale, zeros not drawn
        ax.set_yscale("log", nonpositive="mask")
    else:
        ax.set_ylim(bottom=0)
    mark_stages(ax, history)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (all stages)")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate per param group (end of epoch)")
    ax.grid(alpha=0.3, which="both")
    if series:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5),
                  ncol=max(1, math.ceil(len(series) / 16)), title="param group", title_fontsize=8)
    else:
        ax.text(0.5, 0.5, "no learning rates recorded yet", transform=ax.transAxes, ha="center")
    return fig


def normalise_rows(matrix: ArrayLike) -> np.ndarray:
    """Each true class's row as fractions (recall per predicted class); empty rows stay zero."""
    m = np.asarray(matrix, dtype=float)
    sums = m.sum(axis=1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums > 0)


def plot_confusion(matrix: Sequence[Sequence[int]], names: list[str], title: str = "") -> Figure:
    """Row-normalised confusion matrix; values written in the cells up to 15 classes."""
    counts = np.asarray(matrix, dtype=int)
    n = counts.shape[0]
    if n > MAX_CONFUSION_CLASSES:
        raise ValueError(f"{n} classes: too many for a readable heatmap (max {MAX_CONFUSION_CLASSES})")
    side = min(14.0, 3.5 + 0.24 * n)
    fig, axes = new_figure(side + 1.2, side)
    ax = axes[0][0]
    image = ax.imshow(normalise_rows(counts), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    font = max(6.0, min(9.0, 240.0 / max(n, 1)))
    labels = [_short(s) for s in names[:n]]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 15:
        norm = normalise_rows(counts)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center",
                            fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"{title} ({int(counts.sum())} validation images)".strip())
    return fig


def top_confused(matrix: Sequence[Sequence[int]], names: list[str], k: int = 10
                 ) -> list[tuple[str, str, int, float]]:
    """The k most frequent (true, predicted) mistakes: names, count and share of the true class."""
    counts = np.asarray(matrix, dtype=int)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:k]
    rows = counts.sum(axis=1)
    out = []
    for flat in order:
        i, j = divmod(int(flat), counts.shape[1])
        if off[i, j] == 0:
            break
        out.append((names[i], names[j], int(off[i, j]), float(off[i, j] / max(rows[i], 1))))
    return out


def per_class_accuracy(matrix: Sequence[Sequence[int]]) -> np.ndarray:
    """Diagonal over row sums; NaN for a class without validation images."""
    m = np.asarray(matrix, dtype=float)
    rows = m.sum(axis=1)
    return np.divide(np.diag(m), rows, out=np.full(len(rows), np.nan), where=rows > 0)


def plot_per_class(matrix: Sequence[Sequence[int]], names: list[str], title: str = "") -> Figure:
    """Horizontal bars, worst class at the top; beyond 50 classes the 25 worst and 25 best."""
    acc = per_class_accuracy(matrix)
    order = [i for i in np.argsort(np.nan_to_num(acc, nan=-1.0), kind="stable") if not math.isnan(acc[i])]
    half = MAX_BAR_CLASSES // 2
    cut = len(order) > MAX_BAR_CLASSES
    if cut:
        order = order[:half] + order[-half:]
        title = f"{title} ({half} worst and {half} best of {len(acc)} classes)"
    fig, axes = new_figure(7, 1.2 + 0.22 * max(len(order), 3))
    ax = axes[0][0]
    ys = np.arange(len(order))[::-1]
    values = [acc[i] for i in order]
    ax.barh(ys, values, color=[_bar_colour(v) for v in values])
    ax.set_yticks(ys, [_short(names[i]) for i in order], fontsize=8)
    for y, v in zip(ys, values, strict=True):
        ax.text(min(v + 0.01, 0.9), y, f"{100 * v:.0f}%", va="center", fontsize=7)
    if cut:  # where the classes in the middle were left out
        ax.axhline(len(order) - half - 0.5, color="0.4", ls="--", lw=1)
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("validation accuracy")
    ax.set_title(title.strip() or "per-class accuracy")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_image_grid(tiles: list[tuple[np.ndarray, str, str]], cols: int, title: str = "") -> Figure:
    """Images with a caption each; the caption colour (e.g. green/red) is given per tile."""
    rows = max(1, math.ceil(len(tiles) / cols))
    # A fixed grid: constrained layout costs seconds with dozens of image axes.
    height = 2.05 * rows + 0.4
    fig, axes = new_figure(1.9 * cols, height, rows, cols, layout=None)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.75 / height,
                        wspace=0.06, hspace=0.45)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < len(tiles):
            img, caption, colour = tiles[k]
            ax.imshow(img)
            ax.set_title(caption, fontsize=7.5, color=colour)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    return fig


def _bar_colour(v: float) -> str:
    return "tab:red" if v < 0.5 else "tab:orange" if v < 0.8 else "tab:green"


def _colormap(n: int) -> list[Any]:
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def _plotted(ax: Any, label: str) -> bool:
    return any(line.get_label() == label for line in ax.get_lines())


def _short(text: str, width: int = 20) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
