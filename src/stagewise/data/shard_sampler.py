"""The training order of a shard folder: each rank reads its own shards, a few at a time.

Per epoch, a pure function of (seed, epoch, rank, world): the shards are permuted; rank r takes
every world-th of them (its own files: with shards cached per node or streamed, a rank touches
1/world of the data); its samples are shuffled within windows of `window` consecutive shards, so
reads stay within a few files at a time while batches mix (the writer already shuffled the
training samples across shards). Like `EpochSampler` (whose resume and epoch encoding this
keeps), the order is recomputed from that tuple, so a resumed epoch skips to the same position.

Every rank yields `ceil(N / world)` samples per epoch, so ranks run the same number of steps and
the schedule's length is fixed: a rank whose shards hold fewer samples repeats some of its own,
one whose shards hold more leaves the rest for a later epoch (at most one shard's worth, and which
ones changes with the epoch's permutation). With fewer shards than ranks, the ranks share every
shard and take disjoint slices of the windowed order instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .index import DatasetIndex, Samples
from .loader import EpochSampler
from .shards import shard_numbers

WINDOW = 4  # shards shuffled together; 4 x 256MB is a few seconds of reading per window


class ShardSampler(EpochSampler):
    """`EpochSampler` over a shard folder's training split (`shard_of[i]`: sample i's shard)."""

    def __init__(self, shard_of: np.ndarray, seed: int, rank: int = 0, world: int = 1,
                 window: int = WINDOW):
        super().__init__(len(shard_of), seed, True, rank, world)
        self.shard_of, self.window = np.asarray(shard_of), window

    def _indices(self) -> list[int]:
        return shard_order(self.shard_of, self.seed * 1_000_003 + self.epoch, self.rank,
                           self.world, self.window)


def shard_order(shard_of: np.ndarray, seed: int, rank: int, world: int, window: int = WINDOW) -> list[int]:
    """Rank `rank`'s sample positions for one epoch (see the module's docstring)."""
    g = torch.Generator().manual_seed(seed)
    shards = np.unique(shard_of)
    perm = shards[torch.randperm(len(shards), generator=g).numpy()]
    per_rank = -(-len(shard_of) // world)
    own = len(shards) >= world
    mine = perm[rank::world] if own else perm
    by_shard = {int(s): np.flatnonzero(shard_of == s) for s in mine}
    order: list[int] = []
    for k in range(0, len(mine), window):
        block = np.concatenate([by_shard[int(s)] for s in mine[k:k + window]])
        order += block[torch.randperm(len(block), generator=g).numpy()].tolist()
    if not own:
        order = order[rank::world]
    if not order:
        return []
    if len(order) < per_rank:  # pad by wrapping around one's own samples, as DistributedSampler does
        order = (order * (-(-per_rank // len(order))))[:per_rank]
    return order[:per_rank]


def shard_sampler(index: DatasetIndex, samples: Samples, cfg: Any, rank: int,
                  world: int) -> ShardSampler | None:
    """The training sampler of a shard folder; None (the usual `EpochSampler`) for other layouts
    and for `m_per_class`, whose runs of one class need the whole split to choose from."""
    if index.layout != "shards" or cfg.m_per_class:
        return None
    return ShardSampler(shard_numbers(samples), cfg.seed, rank, world)
