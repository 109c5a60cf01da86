"""The LR range test's plot: loss against LR (log scale), raw and smoothed, suggestions marked."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from ..runfolder import LRFindResult
from .plots import new_figure


def plot_lr_find(result: LRFindResult) -> Figure:
    """Loss against LR (log scale): raw and smoothed, the suggestions marked."""
    fig, axes = new_figure(7.5, 4.2)
    ax = axes[0][0]
    if result.lrs:
        ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="loss")
        ax.plot(result.lrs, result.smoothed, color="C0", lw=1.8, label="smoothed loss")
        ax.set_ylim(*_loss_range(result.smoothed))
    for value, name, colour in ((result.steepest, "steepest", "C3"), (result.valley, "valley", "C2")):
        if value is not None:
            y = float(np.interp(math.log10(value), np.log10(result.lrs), result.smoothed))
            ax.plot([value], [y], "o", color=colour, ms=7, gid=f"suggestion-{name}",
                    label=f"{name}: {value:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (largest param group)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({len(result.lrs)} steps, {result.stopped})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _loss_range(smoothed: list[float]) -> tuple[float, float]:
    """From the lowest smoothed loss to the highest before it (the divergence tail is cut off);
    the whole curve when it never falls."""
    lowest = int(np.argmin(smoothed))
    low = smoothed[lowest]
    high = max(smoothed[: lowest + 1]) if lowest > 0 else max(smoothed)
    pad = 0.1 * (high - low) + 1e-3
    return low - pad, high + pad
