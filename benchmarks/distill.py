"""Distillation with the teacher's logits cached against computed every epoch, in one process.

A teacher (resnet18 at 64 px, its weights as a 0-epoch run left them: only the time matters
here) teaches test_resnet on generated images without augmentation, the same seed and epochs;
one run computes the teacher's forward every step (`distill.cache: false`), the other once per
image before training (`distill.cache: true`, what it does by default without augmentation).
Prints the mean epoch time of each, the one-off caching time, and their ratio; a plain run
without a teacher is the floor.

    python benchmarks/distill.py --epochs 4 --out runs/bench-distill
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

import torch

import stagewise
from stagewise.training.progress import QuietReporter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_image_folder  # noqa: E402


class Listening(QuietReporter):
    """Keeps the messages (the caching time is one of them)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def run(name: str, args: argparse.Namespace, data: Path, **extra: object) -> dict:
    out = args.out / name
    shutil.rmtree(out, ignore_errors=True)
    rep = Listening()
    start = time.perf_counter()
    result = stagewise.train({"data": str(data), "model": "test_resnet", "image_size": 64,
                              "epochs": args.epochs, "batch_size": 32, "augmentation": "none",
                              "num_workers": 0, "seed": 0, "report": False, "out": str(out), **extra},
                             reporter=rep)
    total = time.perf_counter() - start
    found = [re.search(r"computed once in ([\d.]+)s", line) for line in rep.lines]
    epochs = [r["epoch_seconds"] for r in result.history if r.get("epoch", 0) > 0]
    return {"run": name, "seconds": total, "epoch_seconds": sum(epochs) / len(epochs),
            "cache_seconds": next((float(m.group(1)) for m in found if m), None),
            "best_val_top1": result.best_top1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-distill"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = args.out / "data"
    if not data.is_dir():
        make_image_folder(data, classes=("a", "b", "c", "d"), per_class=args.per_class, size=64)
    teacher = args.out / "teacher"
    shutil.rmtree(teacher, ignore_errors=True)
    stagewise.train({"data": str(data), "model": "resnet18", "image_size": 64, "epochs": 0,
                     "num_workers": 0, "report": False, "out": str(teacher)}, reporter="quiet")
    rows = [run("plain", args, data),
            run("cached", args, data, teacher=str(teacher)),
            run("computed", args, data, teacher=str(teacher), distill={"cache": False})]
    for r in rows:
        extra = f" (+{r['cache_seconds']:.1f}s caching, once)" if r["cache_seconds"] else ""
        print(f"{r['run']:9s}: {r['epoch_seconds']:6.2f}s per epoch{extra}; total {r['seconds']:6.1f}s")
    plain, cached, computed = (r["epoch_seconds"] for r in rows)
    print(f"per epoch, computed / cached: {computed / cached:.2f}x; cached / plain: {cached / plain:.2f}x; "
          f"total at {args.epochs} epochs, computed / cached: {rows[2]['seconds'] / rows[1]['seconds']:.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
