"""Classification scores (top-1, top-5, the confusion matrix): one implementation, torchmetrics',
for a stage's training and validation epochs, its test split, `stagewise evaluate` and reports.

The states stay on the device (no host sync per batch); `compute` sums them over processes
(torchmetrics all-gathers when torch.distributed is initialised, as Accelerate does), so every
rank must call it at the same point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def class_metrics(num_classes: int, confusion: bool = True, top5: bool = True) -> dict[str, Any]:
    """The torchmetrics objects behind `ClassScores`, by name (`top1`, `top5`, `confusion`), for a
    caller that adds its own (evaluate's per-class precision/recall, calibration)."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

    # validate_args off: the checks move every batch's labels to the host (a sync on a GPU), and
    # labels come from our own class index.
    metrics: dict[str, Any] = {"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro",
                                                          validate_args=False)}
    if top5:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro",
                                             validate_args=False)
    if confusion:
        metrics["confusion"] = MulticlassConfusionMatrix(num_classes, validate_args=False)
    return metrics


@dataclass
class Scores:
    top1: float
    top5: float | None
    confusion: list[list[int]] | None  # rows: true class, columns: predicted


class ClassScores:
    """Accumulates class scores batch by batch; `images` counts what was scored on this rank."""

    def __init__(self, num_classes: int, device: torch.device, *, top5: bool = True,
                 confusion: bool = True) -> None:
        self.metrics = {k: m.to(device) for k, m in class_metrics(num_classes, confusion, top5).items()}
        self.images = 0

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        scores, labels = scores.detach(), labels.detach()
        for m in self.metrics.values():
            m.update(scores, labels)
        self.images += labels.shape[0]

    def compute(self) -> Scores:
        """The scores over every rank's batches so far (a collective with several processes)."""
        out = {k: m.compute() for k, m in self.metrics.items()}
        confusion = out.get("confusion")
        top5 = out.get("top5")
        return Scores(top1=float(out["top1"]), top5=float(top5) if top5 is not None else None,
                      confusion=confusion.long().cpu().tolist() if confusion is not None else None)
