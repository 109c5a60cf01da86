"""Cached-feature probe against the ordinary probe, in one process (issue 12's acceptance run).

Both train tf_efficientnet_lite0 (the shared ImageNet weights) as a probe on the shared
hymenoptera photos at 224 px for the same epochs, augmentation off, same seed; one runs the frozen
backbone every epoch (`cache: none`), the other once (`cache: features`). Prints wall time, the
one-off extraction time, best val top-1 of each and the speed ratio.

    python benchmarks/cached_features.py --epochs 20 --out runs/bench-features
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import stagewise
from stagewise.training.progress import QuietReporter

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class Listening(QuietReporter):
    """Keeps the messages (the feature extraction time is one of them)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def run(cache: str, args: argparse.Namespace) -> dict:
    out = args.out / cache
    shutil.rmtree(out, ignore_errors=True)
    rep = Listening()
    start = time.perf_counter()
    result = stagewise.train(
        {"data": str(SHARED / "data" / "hymenoptera"), "model": "tf_efficientnet_lite0",
         "weights": str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"),
         "strategy": "probe", "epochs": args.epochs, "image_size": 224, "batch_size": 32,
         "augmentation": "none", "cache": cache, "lr": 3e-3, "optimizer": "adamw", "seed": 0,
         "num_workers": args.workers, "report": False, "out": str(out)}, reporter=rep)
    seconds = time.perf_counter() - start
    found = [re.search(r"extracted once in ([\d.]+)s", line) for line in rep.lines]
    extraction = next((float(m.group(1)) for m in found if m), None)
    return {"cache": cache, "seconds": seconds, "extraction_seconds": extraction,
            "best_val_top1": result.best_top1, "best_epoch": result.best.get("epoch")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-features"))
    args = ap.parse_args()
    rows = [run("features", args), run("none", args)]
    for r in rows:
        extra = f", of which extraction {r['extraction_seconds']:.1f}s" if r["extraction_seconds"] else ""
        print(f"cache {r['cache']:8s}: {r['seconds']:7.1f}s{extra}; best val top-1 "
              f"{r['best_val_top1']:.4f} (epoch {r['best_epoch']})")
    print(f"speed-up features vs none at {args.epochs} epochs: {rows[1]['seconds'] / rows[0]['seconds']:.1f}x; "
          f"accuracy difference {100 * (rows[0]['best_val_top1'] - rows[1]['best_val_top1']):+.2f} points")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
