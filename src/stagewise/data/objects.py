"""Datasets passed as Python objects (`stagewise.train(data=(train_ds, val_ds))`), as an index.

Any map-style dataset whose items are `(image, label)` works: torchvision's (ImageFolder,
FakeData, CIFAR10...), a `Subset`, or the custom class a tutorial writes. A DataLoader is taken
for its dataset (and its batch size and workers, when the run names none): stagewise draws the
batches itself, with its seeded, resumable sampler, so a resumed run continues where it stopped.

An image may be:
- a PIL image (or a uint8 (H, W, 3) array, or a uint8 (3, H, W) tensor): stagewise preprocesses
  it as it does files (resize, crop, normalise with the model's mean/std) and augments it by the
  strategy's recipe;
- a float tensor: the output of your own transform, fed to the network as it is (no resizing,
  normalisation or augmentation is added; say so with your transform).
Labels are read from `targets` when the dataset has it (ImageFolder, CIFAR, a Subset of one),
else from its items, once. Class names come from `classes` when present, else the label numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .images import to_rgb
from .index import DatasetIndex, Samples

LAYOUT = "python"  # DatasetIndex.layout of objects passed in


@dataclass(frozen=True)
class LoaderHints:
    """What DataLoaders passed in say about batching (used where the run names nothing)."""

    batch_size: int | None = None
    num_workers: int | None = None


def item_image(item: Any, i: int) -> Image.Image | torch.Tensor:
    """The image of one `(image, label)` item: an RGB PIL image to preprocess, or a float tensor
    made by the caller's transform (used as it is)."""
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"item {i} of the dataset is a {type(item).__name__}; stagewise expects "
                        "(image, label) pairs from dataset[i]")
    image = item[0]
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] in (1, 3):
            from torchvision.transforms.functional import to_pil_image

            return to_rgb(to_pil_image(image))
        if image.is_floating_point():
            return image
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3):
        return to_rgb(Image.fromarray(image))
    shape = f" {tuple(image.shape)} {image.dtype}" if hasattr(image, "shape") else ""
    raise DataError(f"item {i}: the image is a {type(image).__name__}{shape}; pass a PIL image, a "
                    "uint8 array/tensor of pixels, or a float (C, H, W) tensor from your transform")


def as_dataset(obj: Any, role: str) -> tuple[Any, LoaderHints]:
    """The map-style dataset of `obj` (a Dataset or a DataLoader over one) and its loader hints."""
    from torch.utils.data import DataLoader, IterableDataset

    hints = LoaderHints()
    if isinstance(obj, DataLoader):
        hints = LoaderHints(obj.batch_size, obj.num_workers)
        obj = obj.dataset
    if isinstance(obj, IterableDataset) or not (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")):
        raise DataError(f"data ({role}): a {type(obj).__name__} is not a map-style dataset; stagewise "
                        "needs len(dataset) and dataset[i] -> (image, label) to shuffle, resume and "
                        "validate (wrap an iterable in a list-backed Dataset)")
    if len(obj) == 0:
        raise DataError(f"data ({role}): the {type(obj).__name__} is empty")
    return obj, hints


def labels_of(dataset: Any, role: str) -> list[int]:
    """Every label of `dataset`: from `targets` (a Subset's own indices applied), else its items."""
    from torch.utils.data import Subset

    targets = _targets(dataset)
    if targets is None:
        # One pass over the items: it decodes every image once (give the class `targets` to avoid it).
        items = (dataset[i] for i in range(len(dataset)))
        targets = [item[1] if isinstance(item, (tuple, list)) else None for item in items]
    labels = []
    for i, t in enumerate(targets):
        value = t.item() if isinstance(t, (torch.Tensor, np.generic)) else t
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            kind = "Subset" if isinstance(dataset, Subset) else type(dataset).__name__
            raise DataError(f"data ({role}): item {i} of the {kind} has label {value!r}; labels must "
                            "be class numbers 0..C-1 (map names to numbers, as ImageFolder does)")
        labels.append(value)
    return labels


def _targets(dataset: Any) -> list[Any] | None:
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        inner = _targets(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    targets = getattr(dataset, "targets", None)
    if targets is None or not hasattr(targets, "__len__") or len(targets) != len(dataset):
        return None
    return list(targets.tolist() if hasattr(targets, "tolist") else targets)


def _class_names(datasets: Sequence[Any], count: int) -> list[str]:
    for ds in datasets:
        inner = ds.dataset if hasattr(ds, "indices") and hasattr(ds, "dataset") else ds
        classes = getattr(inner, "classes", None)
        if isinstance(classes, (list, tuple)) and classes:
            if len(classes) < count:
                raise DataError(f"data: {type(inner).__name__}.classes names {len(classes)} classes but "
                                f"the labels go up to {count - 1}")
            return [str(c) for c in classes]
    return [str(i) for i in range(count)]


def describe_objects(datasets: Sequence[Any]) -> str:
    """What config.yaml's `data:` records for objects: their classes and sizes (a resume with other
    datasets is then refused, as one with another folder is)."""
    return "python:" + "+".join(f"{type(d).__name__}({len(d)})" for d in datasets)


def index_from_objects(train: Any, val: Any, test: Any = None) -> tuple[DatasetIndex, LoaderHints]:
    """The DatasetIndex of datasets (or DataLoaders) passed in, checked as a folder's is."""
    named = [("train", train), ("val", val)] + ([("test", test)] if test is not None else [])
    datasets, hints = {}, LoaderHints()
    for role, obj in named:
        datasets[role], found = as_dataset(obj, role)
        hints = hints if role != "train" else found
    labels = {role: labels_of(ds, role) for role, ds in datasets.items()}
    count = max(max(v) for v in labels.values()) + 1
    names = _class_names(list(datasets.values()), count)
    splits = {role: Samples(labels=labels[role], items=ds) for role, ds in datasets.items()}
    index = DatasetIndex(root=Path(describe_objects(list(datasets.values()))), layout=LAYOUT,
                         class_ids=list(names), class_names=list(names), splits=splits)
    index.check()
    return index, hints


def index_yields_tensors(index: DatasetIndex) -> bool:
    """Whether the training items are float tensors (the caller's transform): judged by the first."""
    items = index.splits["train"].items
    return items is not None and isinstance(item_image(items[0], 0), torch.Tensor)
