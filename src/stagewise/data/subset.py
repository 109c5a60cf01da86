"""A seeded, stratified subset of a split (`train_subset:` / `val_subset:`), to try a recipe on
"500 images" before the whole dataset.

Deterministic: the same (split, rule, seed) picks the same files, whatever order they were listed
in, since each class's candidates are shuffled by the seed from their sorted positions. The
picked files are what split.json records, so a resume or a report sees the same subset.
"""

from __future__ import annotations

import random
from collections import defaultdict

from ..errors import DataError
from .index import Samples


def subset_counts(class_sizes: list[int], per_class: int | None, total: int | None) -> list[int]:
    """Images to keep per class: `per_class` each (or all a class has), or `total` spread in
    proportion to the class sizes (largest remainders), every non-empty class keeping at least
    one while `total` allows."""
    if per_class is not None:
        return [min(per_class, n) for n in class_sizes]
    assert total is not None
    available = sum(class_sizes)
    if total >= available:
        return list(class_sizes)
    present = [i for i, n in enumerate(class_sizes) if n > 0]
    counts = [0] * len(class_sizes)
    floor = 1 if total >= len(present) else 0
    for i in present:
        counts[i] = floor
    left = total - floor * len(present)
    spare = [class_sizes[i] - floor for i in range(len(class_sizes))]
    room = sum(max(s, 0) for s in spare)
    shares = [left * max(s, 0) / room if room else 0.0 for s in spare]
    for i, share in enumerate(shares):
        counts[i] += int(share)
    # Largest remainders first; ties to the lower class index, so the split is deterministic.
    order = sorted(range(len(shares)), key=lambda i: (-(shares[i] - int(shares[i])), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def take_subset(samples: Samples, num_classes: int, per_class: int | None, total: int | None,
                seed: int, split: str = "train") -> Samples:
    """The subset of `samples` the rule keeps (see the module docstring). A training subset
    smaller than the number of classes is refused: every class needs a training image."""
    labels = [int(v) for v in samples.labels]
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    sizes = [len(by_class.get(c, [])) for c in range(num_classes)]
    present = sum(1 for n in sizes if n)
    if split == "train" and total is not None and total < present:
        raise DataError(f"train_subset: {total} images for {present} classes; every class needs at "
                        f"least one training image: use at least {present}, or 'K/class'")
    counts = subset_counts(sizes, per_class, total)
    rng = random.Random(f"{seed}-{split}-subset")
    paths = samples.paths
    keep: list[int] = []
    for c in range(num_classes):
        idx = by_class.get(c, [])
        if paths is not None:  # by file name, not listing order (arrays: their order is fixed)
            idx = sorted(idx, key=lambda i: str(paths[i]))
        rng.shuffle(idx)
        keep += idx[: counts[c]]
    return samples.subset(sorted(keep))
