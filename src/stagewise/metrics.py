"""The one table of what an epoch record holds: every key of `runfolder.EpochRecord`, with what a
consumer needs to know about it (which task measures it, whether higher or lower is better, how it
is labelled and formatted, whether trackers log it, which plot panel draws it, whether model.json
keeps it).

Every consumer reads this table: the loop's records, `monitor` validation, stopping and the plateau
schedule, trackers, progress lines, plots, reports and compare. Adding a metric is one entry here
plus the code that computes it (tests/test_metrics.py fails when the record and the table drift).
Pure data, no torch: the CLI and config validation import it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Goal = Literal["max", "min"]
TaskName = Literal["classify", "embed"]
Panel = Literal["loss", "accuracy", "retrieval"]


@dataclass(frozen=True)
class Metric:
    """One key of the epoch record.

    `goal` is None for bookkeeping (counts, sizes, times), which is never "better" or "worse".
    `task` None means any task measures it. `short` names it in the one-line epoch summary, where
    it appears in table order; None keeps it out of that line.
    """

    name: str
    label: str
    goal: Goal | None = None
    task: TaskName | None = None
    monitor: bool = False  # may be a stage's `monitor` (picks the best epoch, early stopping)
    tracked: bool = True  # logged to TensorBoard/MLflow (numbers only; `lr` per group apart)
    card: bool = False  # kept among model.json's metrics of the best epoch
    panel: Panel | None = None  # the training-curves panel that draws it
    style: str = "-"  # its line style there
    short: str | None = None
    fmt: str = ".4f"

    def format(self, value: Any) -> str:
        return "-" if not is_number(value) else format(value, self.fmt)

    def better(self, value: Any, best: Any) -> bool:
        """Whether `value` strictly beats `best` (None: nothing yet). Non-finite never does."""
        if self.goal is None or not is_number(value) or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value < best if self.goal == "min" else value > best


_TABLE = (
    # bookkeeping of the epoch
    Metric("epoch", "epoch", tracked=False, card=True, fmt="d"),
    Metric("global_step", "optimizer steps", tracked=False, fmt="d"),
    Metric("image_size", "train image size", fmt="d"),
    # what progressive learning set for the epoch (config: progressive)
    Metric("randaugment_magnitude", "RandAugment magnitude", fmt="g"),
    Metric("mixup", "mixup alpha", fmt="g"),
    Metric("drop_rate", "classifier dropout", fmt="g"),
    Metric("lr", "learning rate per param group", tracked=False, fmt=".2e"),
    Metric("event", "event", tracked=False, fmt="s"),
    # epoch 0 of an embed stage with a new head measures the pretrained features with the head
    # bypassed: a reference, not a candidate for best.safetensors (no weights file holds it)
    Metric("head_bypassed", "epoch 0 measured without the new head", tracked=False, fmt="s"),
    # training
    Metric("train_loss", "train loss", "min", card=True, panel="loss", short="train loss"),
    Metric("train_top1", "train top-1", "max", card=True, panel="accuracy", short="acc"),
    Metric("train_distill_loss", "train distillation loss", "min", short="distill"),
    # classification validation
    Metric("val_loss", "val loss", "min", "classify", monitor=True, card=True, panel="loss",
           style="--", short="loss"),
    Metric("val_top1", "val top-1", "max", "classify", monitor=True, card=True, panel="accuracy",
           style="--", short="top1"),
    Metric("val_top5", "val top-5", "max", "classify", monitor=True, card=True, panel="accuracy",
           style=":", short="top5"),
    # retrieval validation (task: embed), leave-one-out over the validation identities
    Metric("val_recall1", "recall@1", "max", "embed", monitor=True, card=True, panel="retrieval",
           short="R@1"),
    Metric("val_recall5", "recall@5", "max", "embed", monitor=True, card=True, panel="retrieval",
           style="--", short="R@5"),
    Metric("val_recall10", "recall@10", "max", "embed", card=True),
    Metric("val_map", "mAP", "max", "embed", monitor=True, card=True, panel="retrieval", short="mAP"),
    Metric("val_map_at_r", "mAP@R", "max", "embed", monitor=True, card=True, panel="retrieval",
           style=":", short="mAP@R"),
    Metric("val_threshold", "open-set threshold (cosine distance)", task="embed", card=True),
    Metric("val_identities", "val identities", task="embed", fmt="d"),
    # what trained, how fast, what was skipped
    Metric("val_images", "val images", fmt="d"),
    Metric("trainable_params", "trainable parameters", fmt=",d"),
    Metric("total_params", "parameters", tracked=False, fmt=",d"),
    Metric("groups_unfrozen", "layer groups unfrozen", fmt="d"),
    Metric("groups_total", "layer groups", tracked=False, fmt="d"),
    Metric("epoch_seconds", "epoch seconds (training steps)", fmt=".1f"),
    # The epoch's wall time: training, validation, writing the record and weights. Pipelines sum
    # it to say whether a handoff reached its baseline's best sooner (runs/pipeline.py).
    Metric("wall_seconds", "epoch wall seconds", fmt=".1f"),
    Metric("images_per_sec", "images per second", fmt=".0f"),
    Metric("bad_images", "undecodable train images", fmt="d"),
    Metric("bad_val_images", "undecodable val images", fmt="d"),
    Metric("skipped_steps", "skipped optimizer steps (non-finite)", fmt="d"),
)

METRICS: dict[str, Metric] = {m.name: m for m in _TABLE}

def metric(name: str) -> Metric:
    """The entry for `name`; a KeyError listing the known names otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric '{name}'; known: {', '.join(METRICS)}") from None


def monitors(task: str | None = None) -> tuple[str, ...]:
    """Names a stage of `task` (any task: None) may monitor, in table order."""
    return tuple(m.name for m in _TABLE if m.monitor and (task is None or m.task == task))


def tracked() -> tuple[str, ...]:
    return tuple(m.name for m in _TABLE if m.tracked)


def card_metrics() -> tuple[str, ...]:
    return tuple(m.name for m in _TABLE if m.card)


def curves(panel: Panel) -> tuple[Metric, ...]:
    return tuple(m for m in _TABLE if m.panel == panel)


def lower_is_better(name: str) -> bool:
    return metric(name).goal == "min"


def summary(record: Mapping[str, Any]) -> str:
    """The epoch's numbers in one line, in table order: training, then validation."""
    train = " ".join(f"{m.short} {m.format(record[m.name])}" for m in _TABLE
                     if m.short and m.name.startswith("train_") and is_number(record.get(m.name)))
    return f"{train or 'train -'} | val {val_summary(record)}"


def val_summary(record: Mapping[str, Any]) -> str:
    """The validation metrics `record` holds, whatever its task measured ("-": none yet)."""
    return " ".join(f"{m.short} {m.format(record.get(m.name))}" for m in _TABLE
                    if m.short and m.name.startswith("val_") and m.name in record) or "-"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)
