"""What a dataset is, independent of its layout on disk: classes and labelled samples per split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .table import LabelArray, PathTable

# What each layout expects on disk, for error messages (layouts.py detects them).
EXPECTED: dict[str, str] = {
    "folder": "train/<class>/ and val/<class>/ (a folder per class, 2 or more), or <class>/ "
              "folders only (val_fraction of each held out)",
    "imagenette": "imagenette2[-160|-320]: train/ and val/ with its 10 wnid folders",
    "imagewoof": "imagewoof2[-160|-320]: train/ and val/ with its 10 wnid folders",
    "tiny-imagenet": "tiny-imagenet-200: wnids.txt, train/<wnid>/images/, val/val_annotations.txt",
    "imagenet": "train/<wnid>/ (n01440764, ...); val/ in wnid folders or flat with "
                "LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt",
    "csv": "a .csv manifest with the header path,label[,split]",
    "cifar": "cifar-10-batches-py/ or cifar-100-python/ (the python pickle batches)",
    "flowers102": "flowers-102/: jpg/image_NNNNN.jpg, imagelabels.mat and setid.mat",
    "oxford-pets": "oxford-iiit-pet/: images/<Breed>_<n>.jpg, annotations/trainval.txt and test.txt",
    "food101": "food-101/: images/<class>/<id>.jpg, meta/classes.txt, meta/train.txt and test.txt",
    "shards": "stagewise-shards.json beside <split>-NNNNNN.tar shards (`stagewise data shard`)",
}


class Picked(Sequence[Any]):
    """The items of `items` at `indices`, read when asked (a subset of a dataset passed in)."""

    def __init__(self, items: Sequence[Any], indices: list[int]) -> None:
        self.items, self.indices = items, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: Any) -> Any:  # Sequence's slice overload is not needed here
        return self.items[self.indices[i]]

    def __iter__(self) -> Iterator[Any]:
        return (self.items[i] for i in self.indices)


@dataclass
class Samples:
    """Labelled images of one split: file paths, decoded uint8 arrays (N, H, W, 3) for CIFAR, or
    the items of a dataset object passed in from Python (data/objects.py: `(image, label)`).

    Readers build lists; an index read back from its saved arrays (data/saved_index.py) holds a
    `PathTable` and a `LabelArray` instead: the same sequence interface, no per-file objects.
    """

    labels: Sequence[int]
    paths: Sequence[Path] | None = None
    arrays: np.ndarray | None = None
    items: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        held = self.paths if self.paths is not None else self.arrays if self.arrays is not None else self.items
        n = len(held)  # type: ignore[arg-type]
        if n != len(self.labels):
            raise ValueError(f"{n} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, i: int) -> str:
        if self.paths is not None:
            return str(self.paths[i])
        return f"item[{i}]" if self.items is not None else f"array[{i}]"

    def subset(self, indices: Sequence[int] | np.ndarray) -> Samples:
        labels: Sequence[int] = (self.labels.take(indices) if isinstance(self.labels, LabelArray)
                                 else [self.labels[i] for i in indices])
        paths: Sequence[Path] | None = None
        if isinstance(self.paths, PathTable):
            paths = self.paths.take(indices)
        elif self.paths is not None:
            paths = [self.paths[i] for i in indices]
        return Samples(labels=labels, paths=paths,
                       arrays=self.arrays[np.asarray(indices, dtype=np.int64)]
                       if self.arrays is not None else None,
                       items=Picked(self.items, list(indices)) if self.items is not None else None)

    def counts(self, num_classes: int) -> list[int]:
        if isinstance(self.labels, LabelArray):
            return np.bincount(self.labels.array, minlength=num_classes)[:num_classes].tolist()
        c = Counter(self.labels)
        return [c.get(i, 0) for i in range(num_classes)]

    def compact(self, root: Path) -> Samples:
        """The same samples as arrays (paths stored relative to `root`); arrays stay arrays."""
        if self.paths is None:
            return self
        same_root = isinstance(self.paths, PathTable) and self.paths.root == str(root)
        paths = self.paths if same_root else PathTable.from_paths(root, self.paths)
        labels = self.labels if isinstance(self.labels, LabelArray) else LabelArray(list(self.labels))
        return Samples(labels=labels, paths=paths)


@dataclass
class DatasetIndex:
    """A dataset's classes (stable ids + display names) and its splits ('train', 'val', 'test')."""

    root: Path
    layout: str
    class_ids: list[str]
    class_names: list[str]
    splits: dict[str, Samples]
    skipped: list[str] = field(default_factory=list)  # files found unreadable while indexing
    # Identity folders (task: embed): val/test labels index this list, not class_ids, since the
    # identities searched for at validation need not be trained ones. None: class_ids.
    eval_ids: list[str] | None = None
    # Set by a saved index (data/saved_index.py): the `verify:` mode applied while indexing, the
    # val files that open but do not decode ({path: error}; None: val not checked yet) and the
    # skipped files per split. None: a reader's own header checks, val to be checked by decoding.
    verified: str | None = None
    val_bad: dict[str, str] | None = None
    skipped_per_split: dict[str, int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def check(self, required: tuple[str, ...] = ("train", "val")) -> None:
        """Fail before training on a missing split, fewer than two classes or an empty class."""
        missing = [split for split in required if split not in self.splits]
        if missing:
            raise DataError(
                f"{self.root}: no {' or '.join(missing)} split (found: "
                f"{', '.join(self.splits) or 'none'}); training expects {self._expected()}"
            )
        if self.num_classes < 2:
            # One class "trains" to 100%: the model learns nothing and every metric looks perfect.
            found = ", ".join(self.class_ids) or "none"
            raise DataError(
                f"{self.root}: found {self.num_classes} class ({found}); classification needs at "
                f"least 2. Expected {self._expected()}"
            )
        for split in required:
            if len(self.splits[split]) == 0:
                raise DataError(f"{self.root}: no usable images in the '{split}' split")
        counts = self.splits["train"].counts(self.num_classes)
        empty = [self.class_ids[i] for i, c in enumerate(counts) if c == 0]
        if empty:
            raise DataError(
                f"{self.root}: class(es) with no usable training images: {', '.join(empty[:10])}; "
                "add images or remove the folder"
            )

    def _expected(self) -> str:
        return EXPECTED.get(self.layout, "one folder (or label) per class")
