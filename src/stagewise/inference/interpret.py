"""What an evaluation got wrong: the most-confused class pairs and the top losses (as fastai's
ClassificationInterpretation), with a grid image of the top losses.

The grid is drawn here with matplotlib's object API on the Agg canvas (no pyplot, no GUI backend):
`reporting` reads inference, not the other way round, so its helpers cannot be imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import write_with

MOST_CONFUSED = 10
TOP_LOSSES = 9
THUMBNAIL = 160  # px, the longer side of an image in the grid


def most_confused(matrix: Sequence[Sequence[int]], class_ids: list[str], k: int = MOST_CONFUSED
                  ) -> list[dict[str, Any]]:
    """The k largest off-diagonal cells (true row, predicted column), largest first; ties by
    (true, predicted) order so the list is stable."""
    counts = np.asarray(matrix, dtype=np.int64)
    pairs = [(-int(counts[i, j]), i, j) for i in range(counts.shape[0]) for j in range(counts.shape[1])
             if i != j and counts[i, j] > 0]
    return [{"true": class_ids[i], "predicted": class_ids[j], "count": -neg}
            for neg, i, j in sorted(pairs)[:k]]


def top_losses(losses: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, positions: torch.Tensor,
               class_ids: list[str], k: int = TOP_LOSSES) -> list[dict[str, Any]]:
    """The k images with the highest cross-entropy, confident mistakes and unsure right answers
    alike: position in the split, true and predicted class, their probabilities and the loss."""
    order = losses.topk(min(k, losses.numel())).indices.tolist()
    out = []
    for n in order:
        pred = int(probs[n].argmax())
        true = int(labels[n])
        out.append({"position": int(positions[n]), "true": class_ids[true], "predicted": class_ids[pred],
                    "p_true": float(probs[n, true]), "p_predicted": float(probs[n, pred]),
                    "loss": float(losses[n])})
    return out


def thumbnail(img: Any) -> np.ndarray:
    """A small RGB copy of a PIL image for the grid (the full image is not kept in memory)."""
    small = img.copy()
    small.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(small.convert("RGB"))


def draw_top_losses(items: list[dict[str, Any]], images: list[np.ndarray], path: Path) -> Path:
    """A PNG grid: each image titled predicted / true / loss / probability of the true class."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(items))
    rows = -(-len(items) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, item, img in zip(axes.flat, items, images, strict=False):
        ax.imshow(img)
        ax.set_title(f"{item['predicted']} / {item['true']}\nloss {item['loss']:.2f} / "
                     f"p(true) {item['p_true']:.2f}", fontsize=9)
    fig.suptitle("Top losses: predicted / true", fontsize=11)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
