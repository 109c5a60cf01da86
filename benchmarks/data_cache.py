"""Epoch time of the data pipeline with and without the decoded-image cache.

Generates N 64 px JPEGs (the synthetic curriculum's level-3 images: textured backgrounds,
clutter, noise), then times full passes of stagewise's own loader (ImageDataset + make_loader,
the same objects `stagewise train` uses) over them: uncached, cache=memory and cache=disk. Building
a cache (decoding everything once, before the first epoch) is reported separately. Passes of the
three variants are interleaved and the fastest pass of each is compared (the least disturbed by
other load on a shared machine). Only data loading is timed (no model), so the ratio is what the
cache saves, not diluted by compute.

    python benchmarks/data_cache.py [--images 3000] [--epochs 3] [--image-size 64] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
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

MODES = ("none", "memory", "disk")


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


def one_epoch(loader, epoch: int) -> float:
    loader.sampler.set_epoch(epoch)
    start = time.perf_counter()
    n = sum(len(b.labels) for b in loader)
    assert n == len(loader.dataset), (n, len(loader.dataset))
    return time.perf_counter() - start


def run(samples: Samples, aug: str, size: int, epochs: int, workers: int, cache_dir: Path) -> dict:
    """Per variant: cache build time, and the fastest of `epochs` passes (variants interleaved)."""
    pre = Preprocess(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    loaders, build = {}, {}
    for mode in MODES:
        # As stage.py builds it: no per-sample seeding without augmentation, numpy only for 'strong'.
        ds = ImageDataset(samples, build_transform(pre, aug, training=aug != "none"), seed=0,
                          seeded=aug != "none", seed_numpy=aug == "strong")
        start = time.perf_counter()
        attach_cache([ds], mode, pre, cache_dir=cache_dir / aug / str(size))
        build[mode] = time.perf_counter() - start
        loaders[mode] = make_loader(ds, 64, shuffle=True, seed=0, num_workers=workers)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    # Round-robin over the variants, so a burst of load on a shared machine hits all of them.
    for epoch in range(epochs):
        for mode in MODES:
            times[mode].append(one_epoch(loaders[mode], epoch))
    return {m: {"build": build[m], "best": min(times[m])} for m in MODES}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=5, help="passes per variant")
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
        print(f"{'aug':<9}{'size':>5}{'uncached s':>11}{'memory s':>10}{'disk s':>8}"
              f"{'memory x':>10}{'disk x':>8}{'disk build s':>14}")
        for aug in args.augmentation:
            for size in args.image_size:
                r = run(samples, aug, size, args.epochs, args.workers, Path(tmp) / "cache")
                base = r["none"]["best"]
                print(f"{aug:<9}{size:>5}{base:>11.3f}{r['memory']['best']:>10.3f}"
                      f"{r['disk']['best']:>8.3f}{base / r['memory']['best']:>10.2f}"
                      f"{base / r['disk']['best']:>8.2f}{r['disk']['build']:>14.2f}")


if __name__ == "__main__":
    main()
