"""The step rate of N gloo processes with two versions of stagewise, back to back (A/B).

The loop's per-batch agreements between processes (a batch some rank cannot train on, a stop
signal, a non-finite loss) used to be blocking collectives: a gather per batch and one per
optimizer step, plus a reduce of the live metrics every 10 batches. They are now one host-side
all-reduce per batch that overlaps the batch before it (training/distributed.py `agreed`). A tiny
model at small batches makes that per-step overhead visible.

Runs `torchrun --standalone --nproc_per_node N -m stagewise train ...` with PYTHONPATH set to each
source tree in turn, alternating (A B A B ...) so that load on a shared machine hits both alike,
and prints each run's training images/s (the epochs after the first) and the ratio of medians.
Absolute numbers are noise on a busy machine; the ratio in one session is the figure.

    python benchmarks/step_sync.py --before /path/to/old/src --after src --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(src: Path, data: Path, out: Path, args: argparse.Namespace) -> float:
    """Images per second over the epochs after the first (the first pays start-up)."""
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={args.nproc}", "-m", "stagewise", "train", "--data", str(data),
           "--model", args.model, "--image-size", str(args.image_size), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--strategy", "scratch", "--augmentation", "none",
           "--num-workers", "0", "--quiet", "--set", "report=false", "--out", str(out)]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    records = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    later = [r for r in records if r.get("epoch", 0) >= 2]
    return sum(r["images_per_sec"] * r["epoch_seconds"] for r in later) / sum(r["epoch_seconds"] for r in later)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="src/ of the version to compare against")
    ap.add_argument("--after", type=Path, default=Path("src"))
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4, help="per process")
    ap.add_argument("--images", type=int, default=640, help="training images (4 classes)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_image_folder  # the tests' generator: small PNGs in class folders

    with tempfile.TemporaryDirectory() as tmp:
        data = make_image_folder(Path(tmp) / "data", classes=("a", "b", "c", "d"),
                                 per_class=args.images // 4, size=args.image_size)
        rates: dict[str, list[float]] = {"before": [], "after": []}
        for i in range(args.rounds):
            for name, src in (("before", args.before), ("after", args.after)):
                rate = run(src, data, Path(tmp) / f"{name}{i}", args)
                rates[name].append(rate)
                print(f"round {i + 1} {name:6s}: {rate:8.1f} img/s", flush=True)
    before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
    print(f"{args.nproc} gloo processes, {args.model} {args.image_size}px, batch {args.batch_size} "
          f"per process: median before {before:.1f} img/s, after {after:.1f} img/s, "
          f"ratio after/before {after / before:.3f}")


if __name__ == "__main__":
    main()
