"""The speed levers, each measured before it becomes a default (issue 12, item 4).

1. channels_last: training steps of a convnet, NCHW vs NHWC, same process, alternating.
2. torch.compile: first-step (compile) time and steady-state steps against eager.
3. Per-sample RNG seeding in ImageDataset: __getitem__ with and without the seeded context.
4. DataLoader workers: images/s of the training loader alone at 0, 1, 2 workers.

    python benchmarks/levers.py --model resnet10t --image-size 64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
from torch import nn


def steps_per_second(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def channels_last(args: argparse.Namespace) -> str:
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch_size,))
    nchw, nhwc = [], []
    for r in range(args.repeats + 1):
        torch.manual_seed(0)
        a = timm.create_model(args.model, num_classes=10)
        s1 = steps_per_second(a, x, y, args.steps)
        torch.manual_seed(0)
        b = timm.create_model(args.model, num_classes=10).to(memory_format=torch.channels_last)
        s2 = steps_per_second(b, x.contiguous(memory_format=torch.channels_last), y, args.steps)
        if r:
            nchw.append(s1)
            nhwc.append(s2)
    a, b = statistics.median(nchw), statistics.median(nhwc)
    return f"channels_last: {b:.2f} vs {a:.2f} steps/s (ratio {b / a:.2f})"


def compiled(args: argparse.Namespace) -> str:
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch_size,))
    torch.manual_seed(0)
    eager = steps_per_second(timm.create_model(args.model, num_classes=10), x, y, args.steps)
    torch.manual_seed(0)
    model = torch.compile(timm.create_model(args.model, num_classes=10))
    start = time.perf_counter()
    steps_per_second(model, x, y, 1)
    first = time.perf_counter() - start
    steady = steps_per_second(model, x, y, args.steps)
    return (f"torch.compile: first step {first:.1f}s; then {steady:.2f} vs eager {eager:.2f} steps/s "
            f"(ratio {steady / eager:.2f}); pays off after ~{first / max(1e-9, 1 / eager - 1 / steady):.0f} "
            "steps if faster" if steady > eager else
            f"torch.compile: first step {first:.1f}s; then {steady:.2f} vs eager {eager:.2f} steps/s "
            f"(ratio {steady / eager:.2f})")


def seeding(folder: Path) -> str:
    from stagewise.data import ImageDataset, build_transform, load_dataset
    from stagewise.data.transforms import Preprocess

    index = load_dataset(folder)
    pre = Preprocess(image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    tf = build_transform(pre, "light", True)
    out = []
    for seeded in (False, True):
        ds = ImageDataset(index.splits["train"], tf, seed=0, seeded=seeded, seed_numpy=False)
        n = len(ds)
        start = time.perf_counter()
        for i in range(n):
            ds[i]
        out.append((time.perf_counter() - start) / n * 1e3)
    return f"per-sample seeding: {out[1]:.3f} ms vs {out[0]:.3f} ms a sample (+{out[1] - out[0]:.3f} ms)"


def workers(folder: Path, batch_size: int) -> str:
    from stagewise.data import ImageDataset, build_transform, load_dataset, make_loader
    from stagewise.data.transforms import Preprocess

    index = load_dataset(folder)
    pre = Preprocess(image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    ds = ImageDataset(index.splits["train"], build_transform(pre, "light", True), seed=0)
    rates = []
    for w in (0, 1, 2):
        loader = make_loader(ds, batch_size, True, 0, w)
        start = time.perf_counter()
        n = sum(len(b.labels) for b in loader)
        rates.append(f"{w}: {n / (time.perf_counter() - start):.0f}")
    return "loader images/s by workers: " + ", ".join(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()
    print(f"{args.model} {args.image_size}px batch {args.batch_size}, {torch.get_num_threads()} threads, cpu")
    print(channels_last(args))
    if not args.skip_compile:
        print(compiled(args))
    with tempfile.TemporaryDirectory() as tmp:
        from stagewise.data.synth import generate

        folder = generate(Path(tmp), "curriculum", 0)[-1]
        print(seeding(folder))
        print(workers(folder, args.batch_size))


if __name__ == "__main__":
    main()
