"""The report's Grad-CAM grid: where the model looked in its most confident mistakes (the top
losses), with inference.explain's maps. Optional and cheap: without the grad-cam package the
section is a one-line note; with it, one forward and backward pass over `TOP_K` images.

Called by the predictions grid with what it already has (the weights, the validation samples and
the mistakes it picked), so the grid may get its predictions however it likes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..data import Preprocess, Samples, build_transform
from ..data.images import BAD_IMAGE_ERRORS
from . import plots
from .document import Block, Image, Text
from .samples import decoded

TOP_K = 8  # overlays in the grid: the most confident mistakes
log = logging.getLogger(__name__)


def gradcam_top_losses(weights: Path, samples: Samples, mistakes: Sequence[tuple[int, int, int, float]],
                       names: list[str], plot_dir: Path,
                       loaded: tuple[nn.Module, Preprocess] | None = None) -> list[Block]:
    """Grad-CAM of the predicted class for `mistakes` (sample index, true, predicted, confidence;
    most confident first, the first TOP_K used) as a grid image; [] without mistakes. `loaded`:
    the model of `weights` and its preprocessing when the caller has them (else loaded here)."""
    mistakes = list(mistakes)[:TOP_K]
    if not mistakes:
        return []
    from ..inference.explain import ExplainError, cam_maps, overlay, require_gradcam

    try:
        require_gradcam()
    except ExplainError as exc:
        return [Text(f"Grad-CAM of the top losses is left out: {exc}", note=True)]
    if loaded is None:
        from ..inference import load

        clf = load(weights, device="cpu")
        loaded = clf.model, clf.preprocess
    model, pre = loaded
    kept, x = decoded(samples, [m[0] for m in mistakes], build_transform(pre, "none", False))
    if x is None:
        return []
    by_index = {m[0]: m for m in mistakes}
    try:
        maps = cam_maps(model, x, [by_index[i][2] for i in kept], pre.image_size)
    except (ExplainError, RuntimeError, *BAD_IMAGE_ERRORS) as exc:  # a figure, never a failed report
        log.warning("Grad-CAM of the top losses failed: %s", exc)
        return [Text(f"Grad-CAM of the top losses could not be computed: {str(exc)[:200]}", note=True)]
    tiles = []
    for k, i in enumerate(kept):
        _, true, pred, conf = by_index[i]
        image = overlay(x[k], maps[k], pre)
        tiles.append((np.asarray(image), f"{names[pred][:14]} {100 * conf:.0f}%\ntrue: {names[true][:14]}",
                      "tab:red"))
    fig = plots.plot_image_grid(tiles, cols=min(8, len(tiles)), title="Grad-CAM of the top losses")
    path = plots.save_figure(fig, plot_dir / "gradcam.png")
    return [Image(path, "Grad-CAM (grad-cam package) of the most confident mistakes: where the "
                        "model looked for the class it wrongly predicted (red: most weight).")]


def top_losses(preds: Sequence[Any]) -> list[tuple[int, int, int, float]]:
    """(index, true, pred, confidence) of the wrong predictions, most confident first: with one
    label per image, the highest-confidence mistakes are those with the largest loss."""
    wrong = sorted((p for p in preds if p.true != p.pred), key=lambda p: -p.confidence)
    return [(p.index, p.true, p.pred, p.confidence) for p in wrong[:TOP_K]]
