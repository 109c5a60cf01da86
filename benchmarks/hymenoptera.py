"""Acceptance run for the core: probe, finetune and scratch on the real ants/bees photos.

Uses ../shared/data/hymenoptera and ../shared/weights/tf_efficientnet_lite0.in1k.safetensors,
5 epochs each at 224 px, seed 0, and prints a markdown table of val top-1 per epoch.

    python benchmarks/hymenoptera.py --out runs/hymenoptera
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import stagewise

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Per strategy: the LR that practice uses for it (a probe trains one layer; scratch needs more).
RECIPES = {
    "probe": {"strategy": "probe", "lr": 3e-3},
    # fastai's fine_tune: one epoch on the head alone, then everything with discriminative LRs.
    "finetune": {"strategy": "finetune", "lr": 1e-4, "layer_decay": 0.8, "freeze_epochs": 1,
                 "freeze_bn_stats": True,
                 "group_lrs": {"classifier.*": 3e-3}},
    "gradual": {"strategy": "gradual", "lr": 1e-3, "unfreeze_every": 1},
    "scratch": {"strategy": "scratch", "lr": 3e-3, "weights": None},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/hymenoptera"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--strategies", default="probe,finetune,scratch")
    args = ap.parse_args()
    weights = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
    base = {"data": str(SHARED / "data" / "hymenoptera"), "model": "tf_efficientnet_lite0",
            "weights": str(weights), "epochs": args.epochs, "batch_size": 32, "optimizer": "adamw",
            "scheduler": "cosine", "augmentation": "standard", "seed": 0}
    rows = []
    for name in args.strategies.split(","):
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        result = stagewise.train({**base, **RECIPES[name]}, out=out, reporter="quiet")
        seconds = time.perf_counter() - start
        curve = [r["val_top1"] for r in result.history if r.get("epoch", 0) > 0]
        rows.append((name, curve, result.best_top1, seconds))
        print(f"{name}: best {result.best_top1:.4f} in {seconds:.0f}s; curve {[round(c, 3) for c in curve]}",
              flush=True)
    print("\n| strategy | " + " | ".join(f"ep {i + 1}" for i in range(args.epochs)) + " | best | wall s |")
    print("| --- |" + " ---: |" * (args.epochs + 2))
    for name, curve, best, seconds in rows:
        cells = " | ".join(f"{100 * c:.1f}" for c in curve)
        print(f"| {name} | {cells} | {100 * best:.1f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
