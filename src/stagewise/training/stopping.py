"""When a stage keeps its weights and when it stops early: the monitored metric's best epoch,
early stopping (patience), a target val top-1 and a time budget.

`StopTracker` travels inside the `last/` checkpoint as plain data (`as_dict`), so a resumed stage
stops exactly where an uninterrupted one would. "Better" is the metric registry's (metrics.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..config import TrainConfig
from ..metrics import metric


@dataclass
class StopTracker:
    """The monitor's best so far and the counters the stop rules read."""

    best: float | None = None  # the monitored value of the best epoch
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the last improvement (early stopping's patience)
    elapsed: float = 0.0  # training seconds so far, across resumes (max_minutes)
    best_record: dict[str, Any] | None = None  # the best epoch's record, scalars only
    stopped: str | None = None  # why the stage stopped, so a resume does not train past it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopTracker:
        """Read back `as_dict`; keys a checkpoint of an older version lacks take their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def improved(cfg: TrainConfig, tracker: StopTracker, record: Mapping[str, Any]) -> bool:
    """Whether `record` beats the best epoch so far on `cfg.monitor`; updates `tracker`.

    A NaN/inf metric is never a new best; it counts as an epoch without improvement.
    """
    value = record.get(cfg.monitor)
    if metric(cfg.monitor).better(value, tracker.best) and isinstance(value, (int, float)):
        tracker.best, tracker.best_epoch, tracker.bad_epochs = float(value), int(record["epoch"]), 0
        tracker.best_record = {k: v for k, v in record.items() if not isinstance(v, dict)}
        return True
    tracker.bad_epochs += 1
    return False


def stop_reason(cfg: TrainConfig, tracker: StopTracker, record: Mapping[str, Any]) -> str | None:
    """Why the stage should stop after `record`'s epoch, or None to go on."""
    if cfg.target is not None and record.get("val_top1", 0.0) >= cfg.target:
        return f"target val_top1 {cfg.target} reached ({record['val_top1']:.4f})"
    if cfg.early_stopping and tracker.bad_epochs >= cfg.early_stopping:
        return f"early stopping: no {cfg.monitor} improvement in {cfg.early_stopping} epochs"
    if cfg.max_minutes is not None and tracker.elapsed >= cfg.max_minutes * 60:
        return f"time budget of {cfg.max_minutes} minutes used"
    return None
