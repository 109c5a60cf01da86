"""The plain-data files of a stage's run folder: model.json, history.jsonl and confusion.json.

Each is rewritten whole and atomically (io.write_*), so a reader or a resumed run never finds
half a file. The checkpoints themselves (best.safetensors, last/) live in checkpoint.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import __version__
from .data import DatasetIndex, Preprocess
from .io import write_json, write_text

MODEL_FORMAT = "stagewise.model/1"
# The metrics of the best epoch that model.json keeps (the full record is in history.jsonl).
CARD_METRICS = ("epoch", "val_top1", "val_top5", "val_loss", "train_top1", "train_loss")


class ModelCard:
    """Writes model.json: everything needed to use the weights without the training config."""

    def __init__(self, model: str, strategy: str, index: DatasetIndex, pre: Preprocess,
                 head: dict[str, Any]) -> None:
        self.model, self.strategy, self.index, self.pre, self.head = model, strategy, index, pre, head

    def write(self, run_dir: Path, metrics: dict[str, Any]) -> None:
        write_json(run_dir / "model.json", {
            "format": MODEL_FORMAT,
            "architecture": self.model,
            "num_classes": self.index.num_classes,
            "class_ids": self.index.class_ids,
            "class_names": self.index.class_names,
            "preprocess": self.pre.as_dict(),
            "weights": "best.safetensors",
            "metrics": {k: metrics[k] for k in CARD_METRICS if k in metrics},
            "strategy": self.strategy,
            "head": self.head,
            "data": str(self.index.root),
            "layout": self.index.layout,
            "stagewise_version": __version__,
        })

    def write_confusion(self, run_dir: Path, epoch: int, matrix: list[list[int]]) -> None:
        """confusion.json of `epoch`: rows are the true class, columns the predicted one."""
        write_json(run_dir / "confusion.json", {"class_ids": self.index.class_ids, "epoch": epoch,
                                                "matrix": matrix})


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    write_text(run_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in history))


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The records of history.jsonl ([] before the first epoch has ended)."""
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
