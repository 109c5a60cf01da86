"""Progressive learning (EfficientNetV2, Tan & Le 2021): a stage's epochs fall into K sub-stages,
and the training image size grows with the regularisation (RandAugment magnitude, mixup, dropout),
each interpolated linearly from its first to its last value across the sub-stages.

Every value is a pure function of the epoch, like progressive resizing's size (resize.py): the
epoch travels inside each sample's key, so loader workers pick up the epoch's transform without
being told, a resumed run lands on the values an uninterrupted one used, and each epoch record
says what it trained with. Evaluation always runs at the stage's own image size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .transforms import AugmentPlan, Preprocess, build_transform

# The knobs that grow, with how each is rounded (a size must suit the network's strides).
KNOBS = ("image_size", "randaugment_magnitude", "mixup", "drop_rate")


def substage(epoch: int, epochs: int, stages: int) -> int:
    """The sub-stage (0-based) that 0-based `epoch` of `epochs` belongs to: equal shares."""
    return min(stages - 1, epoch * stages // max(1, epochs))


def interpolate(low: float, high: float, k: int, stages: int) -> float:
    """The value of sub-stage `k` of `stages`: `low` first, `high` last, linear in between."""
    return low if stages <= 1 else low + (high - low) * k / (stages - 1)


def _size(value: float) -> int:
    step = 32 if value >= 128 else 8
    return max(step, int(round(value / step)) * step)


def progressive_values(ranges: Mapping[str, Sequence[float]], stages: int, epochs: int) -> list[dict[str, float]]:
    """Per epoch, the value of each knob in `ranges` (knob -> [first, last]).

    Example:
        >>> [v["image_size"] for v in progressive_values({"image_size": [128, 224]}, 4, 8)]
        [128, 128, 160, 160, 192, 192, 224, 224]
    """
    out = []
    for epoch in range(max(1, epochs)):
        k = substage(epoch, epochs, stages)
        values: dict[str, float] = {}
        for knob, (low, high) in ranges.items():
            value = interpolate(float(low), float(high), k, stages)
            values[knob] = _size(value) if knob == "image_size" else round(value, 6)
        out.append(values)
    return out


def randaugment(plan: AugmentPlan, magnitude: float) -> AugmentPlan:
    """`plan` with timm's RandAugment at `magnitude` (timm's scale, 0-10; mstd 0.5). The ops whose
    strength increases with the magnitude ("inc1"), as progressive learning means; the noisy
    magnitude is capped at 9 ("mmax9", an integer there): at 10 timm's increasing posterize keeps
    0 bits, which PIL refuses."""
    return dataclasses.replace(plan, auto_augment=f"rand-m{magnitude:g}-mstd0.5-inc1-mmax9")


class EpochTransforms:
    """One training transform per distinct (size, augmentation), chosen by epoch (picklable, for
    worker processes). `per_epoch[e]` is epoch e's (image size, augmentation plan)."""

    def __init__(self, pre: Preprocess, per_epoch: Sequence[tuple[int, AugmentPlan | str]]) -> None:
        self.per_epoch = list(per_epoch)
        # Keyed by repr: an augment list's steps are dicts, which do not hash.
        self.built: dict[tuple[int, str], Callable[[Any], Any]] = {}
        for size, plan in self.per_epoch:
            if (size, repr(plan)) not in self.built:
                self.built[(size, repr(plan))] = build_transform(
                    dataclasses.replace(pre, image_size=size), plan, True)

    def _at(self, epoch: int) -> tuple[int, AugmentPlan | str]:
        return self.per_epoch[min(epoch, len(self.per_epoch) - 1)]

    def size(self, epoch: int) -> int:
        return self._at(epoch)[0]

    def __call__(self, epoch: int) -> Callable[[Any], Any]:
        size, plan = self._at(epoch)
        return self.built[(size, repr(plan))]
