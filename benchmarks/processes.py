"""Training throughput with 1 process against N processes (torchrun), same global batch.

Generates a synthetic image folder, trains the same stage once in one process (all cores as its
threads) and once under `torchrun --standalone --nproc_per_node N` (cores split between the
processes), and prints the images/s of the last epoch of each and their ratio. On a GPU machine
run it with --nproc the number of GPUs; on a CPU it measures the gloo path.

    python benchmarks/processes.py --nproc 2 --model resnet10t --image-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def train(cmd: list[str], out: Path, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, env=env, check=True)
    records = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    return float(records[-1]["images_per_sec"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "stagewise", "data", "synth", str(data), "--scale", "2"],
                       check=True, capture_output=True)
        folder = sorted(p for p in data.iterdir() if p.is_dir())[-1]
        common = ["train", "--data", str(folder), "--model", args.model, "--image-size",
                  str(args.image_size), "--epochs", str(args.epochs), "--strategy", "scratch",
                  "--augmentation", "none", "--num-workers", "0", "--quiet", "--set", "report=false"]
        one = train([sys.executable, "-m", "stagewise", *common, "--batch-size", str(args.global_batch),
                     "--out", f"{tmp}/one"], Path(tmp) / "one", cores)
        many = train([sys.executable, "-m", "torch.distributed.run", "--standalone",
                      f"--nproc_per_node={args.nproc}", "-m", "stagewise", *common, "--batch-size",
                      str(args.global_batch // args.nproc), "--out", f"{tmp}/many"],
                     Path(tmp) / "many", max(1, cores // args.nproc))
    print(f"{args.model} {args.image_size}px, global batch {args.global_batch}, {cores} cores")
    print(f"1 process : {one:8.1f} img/s")
    print(f"{args.nproc} processes: {many:8.1f} img/s (ratio {many / one:.2f})")


if __name__ == "__main__":
    main()
