"""Identity folders for an embed stage: `root/<identity>/*`, or `train/` and `val/` of them.

A re-identification model is judged on identities it never saw, so validation holds out whole
identities, not images: `val/` may name other identities than `train/` (its labels index
`DatasetIndex.eval_ids`), and a folder of identity folders holds out `val_fraction` of the
identities (seeded), every image of each.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from ..errors import ConfigError, DataError
from .folder import class_dirs, scan_folder, split_dirs
from .images import HeaderCheck
from .index import DatasetIndex
from .progress import Advance

LAYOUT = "identities"
EXPECTED = ("train/<identity>/ and val/<identity>/ (the identities may differ), or <identity>/ "
            "folders only (val_fraction of the identities held out)")


def read_identities(root: Path, val_fraction: float, seed: int,
                    advance: Advance | None = None) -> DatasetIndex:
    """Index identity folders; train identities are the classes (a loss's class centres)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    readable = HeaderCheck(advance)
    found = split_dirs(root)
    if found:
        if "train" not in found or "val" not in found:
            raise DataError(f"{root}: task: embed expects {EXPECTED}; found "
                            f"{', '.join(f'{p.name}/' for p in found.values())}")
        ids = [p.name for p in class_dirs(found["train"])]
        eval_ids = [p.name for p in class_dirs(found["val"])]
        splits = {"train": scan_folder(found["train"], ids, readable),
                  "val": scan_folder(found["val"], eval_ids, readable)}
    else:
        every = [p.name for p in class_dirs(root)]
        held = _held_out(every, val_fraction, seed)
        ids = [i for i in every if i not in held]
        eval_ids = [i for i in every if i in held]
        splits = {"train": scan_folder(root, ids, readable), "val": scan_folder(root, eval_ids, readable)}
    index = DatasetIndex(root=root, layout=LAYOUT, class_ids=ids, class_names=list(ids),
                         splits=splits, skipped=readable.skipped, eval_ids=eval_ids)
    check_identities(index)
    return index


def _held_out(identities: list[str], fraction: float, seed: int) -> set[str]:
    """round(n * fraction) identities (at least 1, never all but one) for validation, seeded."""
    if len(identities) < 3:
        raise DataError(f"task: embed needs at least 3 identity folders (2 to train on, 1 to "
                        f"validate), found {len(identities)}; expected {EXPECTED}")
    k = min(len(identities) - 2, max(1, round(len(identities) * fraction)))
    return set(random.Random(seed).sample(sorted(identities), k))


def check_identities(index: DatasetIndex) -> None:
    """At least two trained identities, and one validation identity with two images (a query
    and its match): otherwise no retrieval metric exists."""
    train = Counter(index.splits["train"].labels)
    trained = [index.class_ids[i] for i in train]
    if len(trained) < 2:
        raise DataError(f"{index.root}: task: embed needs at least 2 identities with training images, "
                        f"found {len(trained)}; expected {EXPECTED}")
    val = Counter(index.splits["val"].labels)
    if not any(n >= 2 for n in val.values()):
        raise DataError(f"{index.root}: no validation identity has 2 or more images, so no query can "
                        "find a match; put several images in each validation identity folder")


def shared_identities(index: DatasetIndex) -> list[str]:
    """The validation identities that are also training identities: retrieval measured on them
    is not held out (a val/ folder naming the train/ folder's identities)."""
    trained = {index.class_ids[i] for i in set(index.splits["train"].labels)}
    names = index.eval_ids if index.eval_ids is not None else index.class_ids
    return sorted({names[i] for i in set(index.splits["val"].labels)} & trained)


def check_groups(index: DatasetIndex, m_per_class: int | None) -> None:
    """`m_per_class` no larger than the largest training identity: beyond it every group repeats
    the same images (its positives are copies of the anchor), and a pair loss learns nothing."""
    if not m_per_class:
        return
    counts = Counter(index.splits["train"].labels)
    most = max(counts.values(), default=0)
    if m_per_class > most:
        raise ConfigError(
            f"m_per_class: {m_per_class}, but no training identity of {index.root} has more than "
            f"{most} image(s): every group of {m_per_class} would repeat the same images, whose "
            f"embeddings a pair loss has nothing to learn from; use m_per_class <= {most}")
