"""Torch datasets and loaders whose augmentation is a pure function of (seed, epoch, sample).

Seeding each sample's augmentation from (seed, epoch, index) makes a run repeatable bit for bit
whatever the number of workers, and lets a resumed epoch skip batches without shifting the random
draws of the batches after them. torch's samplers can't carry the epoch into persistent workers,
so the sampler here encodes it into the index it yields.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from .images import BAD_IMAGE_ERRORS, load_rgb, to_rgb
from .index import Samples
from .objects import item_image

_EPOCH_STRIDE = 1 << 32


class SampleDataset(Dataset):
    """A map-style dataset with one item per sample of `samples` (decoded images, or features
    computed from them): what `make_loader` samples, by label where it groups identities."""

    samples: Samples

    def __len__(self) -> int:
        return len(self.samples)


class ImageDataset(SampleDataset):
    """Decodes one sample; a bad file yields None (dropped by `collate_skip_bad`)."""

    def __init__(self, samples: Samples, transform: Callable, seed: int = 0, seeded: bool = True,
                 seed_numpy: bool = True):
        self.samples = samples
        self.transform = transform
        self.seed = seed
        self.seeded = seeded
        self.seed_numpy = seed_numpy  # only timm's RandAugment draws from numpy's global RNG
        self.cache = None  # set by data.cache when a decoded-image cache is in use
        # epoch -> transform, for progressive resizing (data/resize.py); None: `transform` always
        self.transform_for: Callable[[int], Callable] | None = None
        # Batches also carry each image's sample index (a distillation teacher's cached logits)
        self.indexed = False
        # path -> RGB image: `load_rgb`, or the stage's `decoder:` (data/decode.py)
        self.decode: Callable[[Path], Any] = load_rgb

    def image(self, i: int):
        if self.cache is not None:
            return self.cache.get(i)
        if self.samples.items is not None:  # a dataset passed in: a PIL image, or a ready tensor
            return item_image(self.samples.items[i], i)
        if self.samples.arrays is not None:
            from PIL import Image

            return to_rgb(Image.fromarray(self.samples.arrays[i]))
        return self.decode(self.samples.paths[i])  # type: ignore[index]

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), _EPOCH_STRIDE)
        try:
            img = self.image(i)
        except BAD_IMAGE_ERRORS:
            return None, self.samples.describe(i)
        transform = self.transform if self.transform_for is None else self.transform_for(epoch)
        if isinstance(img, torch.Tensor):  # made by the caller's own transform: used as it is
            x = img
        elif not self.seeded:
            x = transform(img)
        else:
            with _seeded(hash((self.seed, epoch, i)) & 0x7FFF_FFFF, self.seed_numpy):
                x = transform(img)
        return (x, self.samples.labels[i], i) if self.indexed else (x, self.samples.labels[i])


class _seeded:
    """Seed python/numpy/torch for one transform call, then restore the caller's RNG streams.

    Inside a worker process nothing else draws from these streams, so saving and restoring them
    (numpy's costs ~0.15 ms a sample) is skipped there; in the main process it keeps the training
    loop's own random numbers (dropout, mixup) independent of the data.
    """

    def __init__(self, seed: int, numpy: bool = True) -> None:
        self.seed = seed
        self.numpy = numpy
        self.restore = get_worker_info() is None

    def __enter__(self) -> None:
        if self.restore:
            self.state = (random.getstate(), np.random.get_state() if self.numpy else None,
                          torch.get_rng_state())
        random.seed(self.seed)
        if self.numpy:
            np.random.seed(self.seed)
        torch.random.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        if self.restore:
            random.setstate(self.state[0])
            if self.state[1] is not None:
                np.random.set_state(self.state[1])
            torch.set_rng_state(self.state[2])


class EpochSampler(Sampler[int]):
    """Shuffled (or ordered) indices per epoch, sharded across processes, resumable mid-epoch.

    Training (`pad=True`) shards by global batch: in each block of `batch_size x world` samples,
    rank r takes the r-th `batch_size` slice, so N processes at a per-process batch B see the same
    samples per optimizer step as one process at batch N x B (equal per-rank lengths, the tail
    padded by wrapping around, as torch's DistributedSampler does). Evaluation (`pad=False`) gives
    every sample to exactly one rank: shards may differ in length by one, nothing is repeated.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1,
                 batch_size: int = 1, pad: bool = True, groups: list[int] | None = None,
                 m_per_class: int | None = None):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.batch_size, self.pad = batch_size, pad
        self.groups, self.m = groups, m_per_class
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip_samples: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_samples

    def _indices(self) -> list[int]:
        if self.shuffle and self.m and self.groups is not None:
            order = m_per_class_order(self.groups, self.m, self.seed * 1_000_003 + self.epoch)
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world == 1:
            return order
        if not self.pad:
            return order[self.rank :: self.world]
        b, block = self.batch_size, self.batch_size * self.world
        full = len(order) // block * block
        mine = [i for k in range(0, full, block) for i in order[k + self.rank * b : k + (self.rank + 1) * b]]
        rest = order[full:]
        if rest:
            per = -(-len(rest) // self.world)
            rest = rest + order[: per * self.world - len(rest)]
            mine += rest[self.rank * per : (self.rank + 1) * per]
        return mine

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * _EPOCH_STRIDE
        for i in self._indices()[self.skip :]:
            yield base + i

    def __len__(self) -> int:
        return len(self._indices()) - self.skip


def m_per_class_order(labels: Sequence[int], m: int, seed: int) -> list[int]:
    """One epoch's order as runs of `m` images of one class, the runs shuffled: a batch of
    B = k x m then holds k whole runs, so pair and triplet losses always find positives.

    Each class's images are shuffled and cut into runs of m; a class's last short run is filled
    from the start of its own shuffled list (a class with fewer than m images repeats some).
    Every image appears at least once per epoch, and the length is the same every epoch.
    pytorch-metric-learning's MPerClassSampler draws from the global RNG with a fixed length
    unrelated to the data; this one is a pure function of (labels, m, seed), so a resumed epoch
    skips to the same position.
    """
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    runs: list[list[int]] = []
    for label in sorted(by_class):
        idx = by_class[label]
        shuffled = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        padded = shuffled * (-(-m // len(shuffled)))  # at least m items
        n_runs = -(-len(shuffled) // m)
        cycle = (padded * (n_runs + 1))[: n_runs * m]
        runs += [cycle[k * m:(k + 1) * m] for k in range(n_runs)]
    return [i for r in torch.randperm(len(runs), generator=g).tolist() for i in runs[r]]


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    bad: list[str]
    index: torch.Tensor | None = None  # sample indices, from a dataset with `indexed` set


def collate_skip_bad(items: list) -> Batch:
    """Items are (image, label) or (image, label, index); a bad one is (None, its description)."""
    good = [item for item in items if item[0] is not None]
    bad = [item[1] for item in items if item[0] is None]
    indexed = any(len(item) == 3 for item in items)
    index = torch.tensor([item[2] for item in good], dtype=torch.long) if indexed else None
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), bad, index)
    xs, ys = [item[0] for item in good], [item[1] for item in good]
    return Batch(torch.stack(xs), torch.tensor(ys, dtype=torch.long), bad, index)


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # Processes of one run on this machine (torchrun / accelerate launch set it) share its cores.
    cores //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    # Training on the CPU needs the cores for compute; leave the data to half of them.
    return max(0, min(8, cores // 2))


def make_loader(
    dataset: SampleDataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int | None,
    drop_last: bool = False,
    rank: int = 0,
    world: int = 1,
    pin_memory: bool = False,
    m_per_class: int | None = None,
    sampler: EpochSampler | None = None,
) -> DataLoader:
    """`sampler`: another order than `EpochSampler`'s (a shard folder's: data/shard_sampler.py)."""
    workers = default_workers() if num_workers is None else num_workers
    # A shuffled (training) loader pads so that every rank runs the same number of steps;
    # an ordered (evaluation) one counts every sample exactly once.
    groups = list(dataset.samples.labels) if m_per_class else None
    if sampler is None:
        sampler = EpochSampler(len(dataset), seed, shuffle, rank, world, batch_size, pad=shuffle,
                               groups=groups, m_per_class=m_per_class)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skip_bad,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # The workers' base seed must not come from the global RNG: a resumed run would draw it
        # at a different point and shift every later random number of the training loop.
        generator=torch.Generator().manual_seed(seed),
    )
