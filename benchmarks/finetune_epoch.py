"""A finetune epoch with augmentation: stagewise's stage against a plain timm loop, same data,
model, weights, transform, batch, workers and threads.

The plain loop is what a timm user writes: torchvision ImageFolder with timm's training transform
(`create_transform(is_training=True)`, the same RandomResizedCrop scale and flip stagewise's
`standard` preset asks for), a DataLoader with the same workers, AdamW and cross-entropy.
stagewise runs its own set-up (`prepare_stage`: the loader with per-sample seeding, the strategy,
the optimizer) and its `train_one_epoch`. Each arm also reports its loader alone (images/s
drawing every batch without a model), which splits a gap into "data path" and "step".

Arms alternate (plain, stagewise, plain, ...) and the median of the rounds after a warm-up is
reported with the ratio; on a shared machine only the ratio means anything.

    python benchmarks/finetune_epoch.py --data /work/shared/data/hymenoptera \
        --weights /work/shared/weights/tf_efficientnet_lite0.in1k.safetensors --rounds 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn


def plain(args: argparse.Namespace) -> tuple[float, float]:
    """(loader img/s, training img/s) of the hand-written timm loop."""
    from safetensors.torch import load_file
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=2)
    state = {k: v for k, v in load_file(str(args.weights)).items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=False)
    conf = resolve_data_config({}, model=model)
    tf = create_transform(conf["input_size"], is_training=True, scale=(0.08, 1.0), hflip=0.5,
                          color_jitter=None, interpolation=conf["interpolation"], mean=conf["mean"],
                          std=conf["std"])
    ds = ImageFolder(str(args.data / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0,
                                         drop_last=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    rate = _loader_rate(loader)
    return rate, (math.nan if args.loader_only else _train(model, loader, opt))


def _loader_rate(loader: Any) -> float:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch[1]) if isinstance(batch, (list, tuple)) else len(batch.labels)
    return n / (time.perf_counter() - start)


def _train(model: nn.Module, loader: Any, opt: torch.optim.Optimizer) -> float:
    model.train()
    start, n = time.perf_counter(), 0
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n / (time.perf_counter() - start)


def ours(args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(loader img/s, training img/s) of stagewise's own set-up and train_one_epoch."""
    from stagewise.config import build_config
    from stagewise.training.loop import StopFlag, train_one_epoch
    from stagewise.training.progress import QuietReporter
    from stagewise.training.setup import prepare_stage, start_epoch

    cfg = build_config({"data": str(args.data), "model": args.model, "weights": str(args.weights),
                        "strategy": "finetune", "freeze_epochs": 0, "epochs": 1, "lr": 1e-4,
                        "batch_size": args.batch_size, "num_workers": args.workers,
                        "augmentation": "standard", "out": str(out), "report": False})
    setup = prepare_stage(cfg, QuietReporter())
    setup.sampler.set_epoch(0)
    loader_rate = _loader_rate(setup.parts.train_loader)
    if args.loader_only:
        return loader_rate, math.nan
    start_epoch(setup, 0)
    setup.sampler.set_epoch(0)
    stats = train_one_epoch(setup.parts, QuietReporter(), StopFlag(), lambda _b: None)
    return loader_rate, stats.images / stats.seconds


def _subset(data: Path, out: Path, per_class: int) -> Path:
    """train/ with the first `per_class` images of each class and the whole val/, as symlinks."""
    for split in ("train", "val"):
        for cls in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            (out / split / cls.name).mkdir(parents=True)
            files = sorted(cls.iterdir())
            for f in files[:per_class] if split == "train" else files:
                (out / split / cls.name / f.name).symlink_to(f)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/hymenoptera"))
    ap.add_argument("--weights", type=Path,
                    default=Path("/work/shared/weights/tf_efficientnet_lite0.in1k.safetensors"))
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loader-only", action="store_true", help="the data path alone (no training)")
    ap.add_argument("--per-class", type=int, default=None,
                    help="use only the first N training images of each class (symlinks), for a loaded machine")
    args = ap.parse_args()
    rates: dict[str, list[tuple[float, float]]] = {"plain": [], "stagewise": []}
    with tempfile.TemporaryDirectory() as tmp:
        if args.per_class:
            args.data = _subset(args.data, Path(tmp) / "subset", args.per_class)
        for r in range(args.rounds + 1):
            p = plain(args)
            s = ours(args, Path(tmp) / f"run{r}")
            print(f"round {r}{' (warm-up)' if r == 0 else ''}: plain loader {p[0]:.1f} train {p[1]:.2f} | "
                  f"stagewise loader {s[0]:.1f} train {s[1]:.2f} img/s", flush=True)
            if r:
                rates["plain"].append(p)
                rates["stagewise"].append(s)
    med = {k: (statistics.median(v[0] for v in vs), statistics.median(v[1] for v in vs)) for k, vs in rates.items()}
    print(f"{args.model}, batch {args.batch_size}, {args.workers} worker(s), threads {torch.get_num_threads()}")
    print(f"loader alone: plain {med['plain'][0]:.1f}, stagewise {med['stagewise'][0]:.1f} img/s "
          f"(ratio {med['stagewise'][0] / med['plain'][0]:.3f})")
    print(f"training:     plain {med['plain'][1]:.2f}, stagewise {med['stagewise'][1]:.2f} img/s "
          f"(ratio {med['stagewise'][1] / med['plain'][1]:.3f})")


if __name__ == "__main__":
    main()
