"""The report's parts for embed stages: retrieval curves per epoch, and queries with their top-5.

An embed stage has no confusion matrix or class predictions: its validation identities were never
trained on. What a user wants to see is whether searching works: recall@k and mAP over the epochs
(epoch 0 is the pretrained features), and real queries next to what the search returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from ..data import build_transform
from ..defaults import FEW_IDENTITIES
from ..kinds import embeds
from ..metrics import curves
from ..ranking import flat_index, search_index
from .document import Block, Image, Table, Text, fmt_pct
from .history import RunHistory, StageRun
from .plots import _finite, mark_stages, new_figure, plot_image_grid, save_figure
from .samples import decoded, split_samples, spread, thumbnail

MAX_SEARCHED = 256  # validation images embedded for the example grid
QUERIES = 8
TOP_K = 5
_SERIES = curves("retrieval")  # the metric registry's retrieval panel


def is_embed(stage: StageRun) -> bool:
    """The stage's task (its config, or model.json of a stage whose config is gone) embeds."""
    return embeds(stage.config.get("task") or stage.model_info.get("task"))


def retrieval_curves(history: RunHistory, plot_dir: Path) -> list[Block]:
    """Recall@k and mAP of the validation identities per epoch, epoch 0 included."""
    fig, axes = new_figure(7, 4)
    ax = axes[0][0]
    for i, m in enumerate(_SERIES):
        key, label, style = m.name, m.label, m.style
        for stage in history.stages:
            if not is_embed(stage):
                continue
            pts = [(r["x"], r[key]) for r in stage.global_records() if _finite(r.get(key))]
            if pts:
                shown = any(line.get_label() == label for line in ax.get_lines())
                ax.plot(*zip(*pts, strict=True), style, color=f"C{i}", marker="o", ms=3,
                        label="_" + label if shown else label)
    mark_stages(ax, history)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch (all stages; 0: before training)", title="retrieval on validation identities",
           ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=8, loc="best")
    path = save_figure(fig, plot_dir / "retrieval.png")
    rows = [[s.name, str(s.best.get("epoch", "-")), *(fmt_pct(s.best.get(m.name)) for m in _SERIES),
             fmt_pct(_start(s).get("val_map"))] for s in history.stages if is_embed(s)]
    return [Image(path, "Leave-one-out search over the validation identities (never trained on): "
                        "each image queries all the others."),
            Table(["stage", "best epoch", *(m.label for m in _SERIES), "mAP at epoch 0"],
                  rows, caption="Best epoch of each embed stage (by its monitor)"),
            *(_few_identities(s) for s in history.stages if is_embed(s) and _few(s))]


def _identities(stage: StageRun) -> list[int]:
    return [n for r in stage.records if isinstance(n := r.get("val_identities"), int)]


def _few(stage: StageRun) -> bool:
    counts = _identities(stage)
    return bool(counts) and min(counts) < FEW_IDENTITIES


def _few_identities(stage: StageRun) -> Block:
    """With a handful of validation identities one identity's ranking moves the monitor a lot:
    show how far it moved, so nobody reads one epoch's value as the truth."""
    values = [v for r in stage.records if isinstance(v := r.get("val_map"), float)]
    spread = f"{fmt_pct(min(values))} to {fmt_pct(max(values))}" if values else "-"
    n = min(_identities(stage))
    return Text(f"{stage.name}: only {n} validation identities, so the monitor is a weak guide "
                f"(val mAP ranged {spread} over the epochs). Hold out more identities, or measure on "
                "identities of their own with `stagewise evaluate --retrieval`.", note=True)


def _start(stage: StageRun) -> dict[str, Any]:
    return next((r for r in stage.records if r.get("epoch") == 0), {})


def retrieval_examples(stage: StageRun, plot_dir: Path, slug: str = "") -> list[Block]:
    """A grid of validation queries (wrong first) with their top-5 gallery matches."""
    from ..inference import load

    if stage.weights is None:
        return [Text("No trained weights yet.", note=True)]
    clf = load(stage.weights, device="cpu")
    samples, ids = split_samples(stage.config, stage.run_dir, "val")
    chosen = spread(len(samples), MAX_SEARCHED)
    kept, vectors = _embed(clf, samples, chosen)
    if len(kept) < 2:
        return [Text("Fewer than two readable validation images: nothing to search.", note=True)]
    dist, rows = search_index(flat_index(vectors), vectors, min(TOP_K + 1, len(kept)))
    labels = [samples.labels[i] for i in kept]
    results = []
    for q, (d_row, r_row) in enumerate(zip(dist, rows, strict=True)):
        matches = [(int(r), float(d)) for r, d in zip(r_row, d_row, strict=True) if r != q][:TOP_K]
        results.append((q, matches, bool(matches) and labels[matches[0][0]] == labels[q]))
    wrong = _one_per_identity([r for r in results if not r[2]], labels)
    right = [r for r in results if r[2]]
    picked = wrong[:QUERIES // 2] + [right[i] for i in spread(len(right), QUERIES - min(len(wrong), QUERIES // 2))]
    tiles = []
    for q, matches, _ in picked:
        tiles.append((thumbnail(samples, kept[q]), f"query\n{ids[labels[q]][:14]}", "black"))
        for r, d in matches:
            same = labels[r] == labels[q]
            tiles.append((thumbnail(samples, kept[r]), f"{'✓' if same else '✗'} {ids[labels[r]][:12]}\n"
                          f"d={d:.2f}", "tab:green" if same else "tab:red"))
        tiles += [(np.ones((8, 8, 3)), "", "black")] * (TOP_K - len(matches))
    fig = plot_image_grid(tiles, cols=TOP_K + 1, title=f"{stage.name}: queries and their top-{TOP_K}")
    path = save_figure(fig, plot_dir / f"retrieval-examples{slug}.png")
    return [Image(path, f"Each row: a validation image (left) and the {TOP_K} nearest other validation "
                        "images by cosine distance d; green: same identity, red: another. Queries "
                        f"whose nearest match is wrong come first (one per identity; "
                        f"{sum(not r[2] for r in results)} of {len(results)} queries).")]


def _one_per_identity(results: list[Any], labels: list[int]) -> list[Any]:
    seen: set[int] = set()
    out = []
    for r in results:
        if labels[r[0]] not in seen:
            seen.add(labels[r[0]])
            out.append(r)
    return out


@torch.inference_mode()
def _embed(clf: Any, samples: Any, indices: list[int]) -> tuple[list[int], np.ndarray]:
    kept, x = decoded(samples, indices, build_transform(clf.preprocess, "none", False))
    return kept, clf.embed(x).numpy() if x is not None else np.zeros((0, 1), np.float32)
