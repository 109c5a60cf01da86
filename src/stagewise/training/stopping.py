"""When a stage keeps its weights and when it stops early: the monitored metric's best epoch,
early stopping (patience), a target val top-1 and a time budget.

The tracker is a plain dict so it travels inside the `last/` checkpoint and a resumed stage
stops exactly where an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import TrainConfig


def new_tracker() -> dict[str, Any]:
    """The state of a stage that has not finished an epoch yet."""
    return {"best": None, "best_epoch": 0, "bad_epochs": 0, "elapsed": 0.0}


def improved(cfg: TrainConfig, tracker: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether `record` beats the best epoch so far on `cfg.monitor`; updates `tracker`.

    A NaN/inf metric is never a new best; it counts as an epoch without improvement.
    """
    value = record.get(cfg.monitor)
    best = tracker.get("best")
    finite = value is not None and math.isfinite(value)
    better = finite and (best is None or (value < best if cfg.monitor == "val_loss" else value > best))
    if better:
        tracker.update(best=value, best_epoch=record["epoch"], bad_epochs=0,
                       best_record={k: v for k, v in record.items() if not isinstance(v, dict)})
    else:
        tracker["bad_epochs"] = tracker.get("bad_epochs", 0) + 1
    return better


def stop_reason(cfg: TrainConfig, tracker: dict[str, Any], record: dict[str, Any]) -> str | None:
    """Why the stage should stop after `record`'s epoch, or None to go on."""
    if cfg.target is not None and record.get("val_top1", 0.0) >= cfg.target:
        return f"target val_top1 {cfg.target} reached ({record['val_top1']:.4f})"
    if cfg.early_stopping and tracker.get("bad_epochs", 0) >= cfg.early_stopping:
        return f"early stopping: no {cfg.monitor} improvement in {cfg.early_stopping} epochs"
    if cfg.max_minutes is not None and tracker.get("elapsed", 0.0) >= cfg.max_minutes * 60:
        return f"time budget of {cfg.max_minutes} minutes used"
    return None
