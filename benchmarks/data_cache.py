"""Epoch time of the data pipeline with and without the decoded-image cache.

Generates N 64 px JPEGs (the synthetic curriculum's level-3 images: textured backgrounds,
clutter, noise), then times full passes of stagewise's own loader (ImageDataset + make_loader,
the same objects `stagewise train` uses) over them: uncached, cache=memory and cache=disk. The
first pass of each cached variant includes building the cache and is reported separately; the
steady-state figure is the median of the later passes. Only data loading is timed (no model), so
the ratio is what the cache saves, not diluted by compute.

    python benchmarks/data_cache.py [--images 3000] [--epochs 3] [--image-size 64] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stagewise.data.cache import attach_cache
from stagewise.data.index import Samples
from stagewise.data.loader import ImageDataset, make_loader
from stagewise.data.synth import CLASS_ORDER, CURRICULUM, render
from stagewise.data.transforms import Preprocess, build_transform


def make_jpegs(folder: Path, n: int, seed: int = 0) -> Samples:
    level = CURRICULUM[-1]
    paths, labels = [], []
    for i in range(n):
        label = i % level.classes
        img = render(CLASS_ORDER[label], level, np.random.default_rng([seed, i]))
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)
        labels.append(label)
    return Samples(labels=labels, paths=paths)


def epoch_seconds(ds: ImageDataset, epochs: int, workers: int, batch: int) -> list[float]:
    loader = make_loader(ds, batch, shuffle=True, seed=0, num_workers=workers)
    times = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        n = sum(len(b.labels) for b in loader)
        times.append(time.perf_counter() - start)
        assert n == len(ds), (n, len(ds))
    return times


def run(samples: Samples, aug: str, size: int, epochs: int, workers: int, cache_dir: Path) -> dict:
    pre = Preprocess(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    out = {}
    for mode in ("none", "memory", "disk"):
        ds = ImageDataset(samples, build_transform(pre, aug, training=aug != "none"), seed=0)
        start = time.perf_counter()
        attach_cache([ds], mode, pre, cache_dir=cache_dir / aug / str(size))
        build = time.perf_counter() - start
        times = epoch_seconds(ds, epochs, workers, batch=64)
        out[mode] = {"build": build, "first": times[0], "steady": statistics.median(times[1:])}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=3, help="passes per variant (>= 2)")
    p.add_argument("--image-size", type=int, nargs="+", default=[64, 32])
    p.add_argument("--augmentation", nargs="+", default=["none", "light"])
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)  # data loading is per-sample work; keep threads out of the comparison
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        start = time.perf_counter()
        samples = make_jpegs(folder, args.images)
        print(f"{args.images} 64px JPEGs generated in {time.perf_counter() - start:.1f}s; "
              f"{os.cpu_count()} cores, workers={args.workers}, torch threads=1")
        print(f"{'aug':<8}{'size':>5}{'uncached s':>12}{'memory s':>10}{'disk s':>9}"
              f"{'mem x':>7}{'disk x':>8}{'disk build s':>14}")
        for aug in args.augmentation:
            for size in args.image_size:
                r = run(samples, aug, size, args.epochs, args.workers, Path(tmp) / "cache")
                base = r["none"]["steady"]
                print(f"{aug:<8}{size:>5}{base:>12.3f}{r['memory']['steady']:>10.3f}"
                      f"{r['disk']['steady']:>9.3f}{base / r['memory']['steady']:>7.2f}"
                      f"{base / r['disk']['steady']:>8.2f}{r['disk']['build']:>14.2f}")


if __name__ == "__main__":
    main()
