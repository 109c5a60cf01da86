"""stagewise's training step against a bare PyTorch + timm loop: same model, data, batch, threads.

Prints images/s for both and their ratio (goal >= 0.95). Runs alternate (bare, stagewise, bare,
...) in one process so that machine noise hits both alike; the median of the repeats is reported.

    python benchmarks/overhead.py --model resnet10t --image-size 64 --batch-size 32 --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from torch import nn


def batches(n: int, batch: int, size: int, classes: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def bare_loop(model: nn.Module, data, lr: float) -> float:
    """What people write by hand: AdamW, cross-entropy, zero_grad/backward/step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    model.train()
    start = time.perf_counter()
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return sum(len(y) for _, y in data) / (time.perf_counter() - start)


def stagewise_loop(model: nn.Module, data, lr: float, epochs: int) -> float:
    """The engine's `train_one_epoch` with everything stagewise sets up for a finetune stage."""
    from stagewise.config import TrainConfig
    from stagewise.data.loader import Batch
    from stagewise.training.loop import LoopParts, StopFlag, train_one_epoch
    from stagewise.training.optim import Schedule, create_optimizer
    from stagewise.training.progress import QuietReporter
    from stagewise.training.runtime import make_accelerator
    from stagewise.training.strategies import apply_strategy, set_train_mode

    cfg = TrainConfig(data=".", model="resnet10t", lr=lr, epochs=epochs, strategy="finetune")
    acc = make_accelerator("auto")
    optimizer = create_optimizer(model, cfg)
    schedule = Schedule(optimizer, cfg, len(data))
    model, optimizer = acc.prepare(model, optimizer)
    loader = [Batch(x, y, []) for x, y in data]
    parts = LoopParts(accelerator=acc, model=model, optimizer=optimizer, schedule=schedule,
                      criterion=nn.CrossEntropyLoss(), train_loader=loader, val_loader=[],
                      num_classes=10)
    apply_strategy(acc.unwrap_model(model), "finetune", 0)
    set_train_mode(model)
    stats = train_one_epoch(parts, QuietReporter(), StopFlag(), lambda _batches: None)
    return stats.images / stats.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    data = batches(args.steps, args.batch_size, args.image_size, 10)
    bare, ours = [], []
    for r in range(args.repeats + 1):
        torch.manual_seed(0)
        m1 = timm.create_model(args.model, num_classes=10)
        b = bare_loop(m1, data, 1e-3)
        torch.manual_seed(0)
        m2 = timm.create_model(args.model, num_classes=10)
        s = stagewise_loop(m2, data, 1e-3, 1)
        if r:  # the first round warms up allocators and kernels
            bare.append(b)
            ours.append(s)
    b, s = statistics.median(bare), statistics.median(ours)
    print(f"model {args.model} {args.image_size}px batch {args.batch_size}, {args.steps} steps x {args.repeats}, "
          f"threads {torch.get_num_threads()}, device cpu")
    print(f"bare PyTorch+timm loop: {b:8.1f} img/s")
    print(f"stagewise engine:       {s:8.1f} img/s")
    print(f"ratio stagewise/bare:   {s / b:8.3f}")


if __name__ == "__main__":
    main()
