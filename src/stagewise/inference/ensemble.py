"""Several trained models as one: the mean of their softmax probabilities.

Members are matched by class id: every member must know the same set of ids, and each member's
columns are reordered to the first member's order. Architectures and image sizes may differ, so
each member preprocesses each image itself; a loader batch carries all members' tensors packed
into one flat row per image (the loaders stack one tensor per image) and is unpacked here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from ..errors import ConfigError, DataError
from .classifier import (
    Classifier,
    Inputs,
    Prediction,
    _as_list,
    _is_single,
    sources_of,
    to_pil,
    to_predictions,
)
from .views import TTA


class PackedTransform:
    """PIL image -> each member's tensor, flattened and concatenated (picklable for workers)."""

    def __init__(self, transforms: Sequence[Callable[[Image.Image], torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.cat([t(img).flatten() for t in self.transforms])


def column_orders(members: Sequence[Classifier]) -> list[list[int]]:
    """For each member, its column of each of the first member's classes; differing id sets are
    an error naming the ids (averaging unmatched columns would mix different classes)."""
    first = members[0].class_ids
    orders = []
    for m in members:
        if m.is_embedding:
            raise ConfigError(f"ensemble: {m.source or 'a member'} is an embed run (task: embed): it "
                              "maps images to vectors and has no class probabilities to average; "
                              "leave it out (use it with embed, index/search or evaluate --retrieval)")
        if set(m.class_ids) != set(first):
            missing, extra = sorted(set(first) - set(m.class_ids)), sorted(set(m.class_ids) - set(first))
            raise ConfigError(f"ensemble: {m.source or 'a member'} has different classes than "
                              f"{members[0].source or 'the first member'}: missing "
                              f"{', '.join(missing[:20]) or 'none'}; extra {', '.join(extra[:20]) or 'none'}. "
                              "Ensemble members must be trained on the same class ids")
        column = {cid: i for i, cid in enumerate(m.class_ids)}
        orders.append([column[cid] for cid in first])
    return orders


class Ensemble:
    """Models averaged by probability, with Classifier's predict/probabilities interface.

    Example:
        >>> ens = Ensemble([stagewise.load("runs/a"), stagewise.load("runs/b")])  # doctest: +SKIP
        >>> ens.predict("cat.jpg").name  # doctest: +SKIP
    """

    def __init__(self, members: Sequence[Classifier]) -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one model")
        self.members = list(members)
        self.orders = column_orders(self.members)
        first = self.members[0]
        self.class_ids, self.class_names = list(first.class_ids), list(first.class_names)
        self.device = first.device
        self.source = first.source  # where default outputs go, as for a single model
        self.sources = [str(m.source or "in memory") for m in self.members]

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def __repr__(self) -> str:
        return f"Ensemble({len(self.members)} models: {', '.join(self.sources)}; {self.num_classes} classes)"

    def input_transform(self, tta: str | TTA | None = None) -> PackedTransform:
        return PackedTransform([m.input_transform(tta) for m in self.members])

    def member_probabilities(self, batch: torch.Tensor, tta: str | TTA | None = None) -> list[torch.Tensor]:
        """Each member's (N, C) probabilities of a packed batch, columns in the ensemble's order."""
        shapes = [m.input_shape(tta) for m in self.members]
        sizes = [math.prod(s) for s in shapes]
        if batch.ndim != 2 or batch.shape[1] != sum(sizes):
            raise DataError(f"an ensemble batch is (N, {sum(sizes)}) from input_transform(); "
                            f"got {tuple(batch.shape)}")
        chunks = batch.split(sizes, dim=1)
        return [m.probabilities(c.reshape(c.shape[0], *s), tta)[:, order]
                for m, c, s, order in zip(self.members, chunks, shapes, self.orders, strict=True)]

    def probabilities(self, batch: torch.Tensor, tta: str | TTA | None = None) -> torch.Tensor:
        return torch.stack(self.member_probabilities(batch, tta)).mean(dim=0)

    def predictions(self, probs: torch.Tensor, top_k: int, sources: Sequence[str | None]) -> list[Prediction]:
        return to_predictions(probs, top_k, sources, self.class_ids, self.class_names)

    def predict(self, inputs: Inputs, top_k: int = 5, batch_size: int = 32,
                tta: str | TTA | None = None) -> Prediction | list[Prediction]:
        """As Classifier.predict; inputs are files, PIL images or uint8 tensors (each member
        preprocesses them its own way, so already preprocessed float tensors cannot be used)."""
        if top_k < 1:
            raise DataError(f"top_k must be at least 1, got {top_k}")
        items = _as_list(inputs)
        transform = self.input_transform(tta)
        preds: list[Prediction] = []
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            batch = torch.stack([transform(to_pil(x)) for x in chunk])
            preds += self.predictions(self.probabilities(batch, tta), top_k, sources_of(chunk))
        return preds[0] if _is_single(inputs) else preds


def load_ensemble(paths: Sequence[str | Path], device: str | None = None) -> Classifier | Ensemble:
    """One model as a Classifier, several as an Ensemble (each path as for `stagewise.load`)."""
    from .artifact import load

    members = [load(p, device=device) for p in paths]
    return members[0] if len(members) == 1 else Ensemble(members)
