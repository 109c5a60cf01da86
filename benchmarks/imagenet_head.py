"""What the pretrained ImageNet-1k head already knows: a matched head against a fresh one.

Links ../shared/data/hymenoptera's classes as ImageNet wnids (n02219486 ant, n02206856 bee), then
trains a probe of tf_efficientnet_lite0 twice with the same budget and seed: `head: match` (rows
copied from the ImageNet classifier) and `head: reset` (fresh rows). Prints val top-1 per epoch,
epoch 0 being the starting weights before any training.

    python benchmarks/imagenet_head.py --out runs/imagenet-head
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import stagewise

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WNIDS = {"ants": "n02219486", "bees": "n02206856"}


def wnid_folder(src: Path, dst: Path) -> Path:
    for split in ("train", "val"):
        (dst / split).mkdir(parents=True, exist_ok=True)
        for old, new in WNIDS.items():
            (dst / split / new).symlink_to(src / split / old, target_is_directory=True)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/imagenet-head"))
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    data = wnid_folder(SHARED / "data" / "hymenoptera", Path(tempfile.mkdtemp()) / "hymenoptera-wnid")
    base = {"data": str(data), "model": "tf_efficientnet_lite0", "strategy": "probe", "lr": 3e-3,
            "weights": str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"),
            "epochs": args.epochs, "batch_size": 32, "seed": 0, "augmentation": "standard"}
    curves = {}
    for head in ("match", "reset"):
        out = args.out / head
        shutil.rmtree(out, ignore_errors=True)
        start = stagewise.train({**base, "epochs": 0, "head": head}, out=args.out / f"{head}-epoch0",
                                reporter="quiet") if head == "reset" else None
        result = stagewise.train({**base, "head": head}, out=out, reporter="quiet")
        first = start.history[0]["val_top1"] if start else None
        curve = [r["val_top1"] for r in result.history]
        if first is not None:
            curve = [first, *curve]
        curves[head] = curve
        print(f"head {head}: {result.head}; curve {[round(c, 3) for c in curve]}", flush=True)
    n = max(len(c) for c in curves.values())
    print("\n| head | " + " | ".join(f"ep {i}" for i in range(n)) + " |")
    print("| --- |" + " ---: |" * n)
    for head, curve in curves.items():
        print(f"| {head} | " + " | ".join(f"{100 * c:.1f}" for c in curve) + " |")


if __name__ == "__main__":
    main()
