"""Test-time augmentation: the views of one image a model is run on, their probabilities averaged.

`flip` mirrors the preprocessed batch (logits averaged, as it always did), so it works on tensors
that are already preprocessed. The other modes need the decoded image: `five_crop`/`ten_crop` cut
the model's crop size from the resized image (before the usual center crop), `scales=a,b,...`
resizes by each factor and then center-crops to the model's size. Those give a (V, 3, H, W) tensor
per image, so a batch is (N, V, 3, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..data.transforms import Preprocess
from ..errors import DataError
from . import choices

TTA_HELP = choices.TTA_HELP


@dataclass(frozen=True)
class TTA:
    """A parsed --tta value; `mode` is None (no TTA), flip, five_crop, ten_crop or scales."""

    mode: str | None = None
    scales: tuple[float, ...] = ()

    @property
    def multi_view(self) -> bool:
        """True when the views come from the decoded image, not from the preprocessed batch."""
        return self.mode in ("five_crop", "ten_crop", "scales")

    @property
    def views(self) -> int:
        return {None: 1, "flip": 2, "five_crop": 5, "ten_crop": 10}.get(self.mode, len(self.scales))


def parse_tta(tta: str | TTA | None) -> TTA:
    """Check a --tta value once, with an error that lists the choices."""
    if tta is None or isinstance(tta, TTA):
        return tta or TTA()
    if tta in ("flip", "five_crop", "ten_crop"):
        return TTA(tta)
    if tta.startswith("scales="):
        try:
            scales = tuple(float(s) for s in tta.split("=", 1)[1].split(",") if s.strip())
        except ValueError:
            scales = ()
        if scales and all(0.1 <= s <= 10 for s in scales):
            return TTA("scales", scales)
        raise DataError(f"tta '{tta}': give positive resize factors, e.g. scales=0.875,1.0,1.15")
    raise DataError(f"unknown tta '{tta}'; choose {TTA_HELP} (or leave it out)")


class ViewTransform:
    """PIL image -> (V, 3, S, S) normalised views (a class, not a closure: loader workers pickle it)."""

    def __init__(self, pre: Preprocess, tta: TTA) -> None:
        from torchvision.transforms import v2

        self.tta, self.size = tta, pre.image_size
        self.interpolation = v2.InterpolationMode(pre.interpolation) \
            if pre.interpolation in ("bilinear", "bicubic", "nearest") else v2.InterpolationMode.BILINEAR
        self.resize = int(round(pre.image_size / pre.crop_pct))  # what the center crop is cut from
        self.finish = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                  v2.Normalize(list(pre.mean), list(pre.std))])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        from torchvision.transforms import v2

        if self.tta.mode == "scales":
            views: Any = [v2.CenterCrop(self.size)(v2.Resize(max(self.size, round(self.resize * s)),
                                                             self.interpolation)(img))
                          for s in self.tta.scales]
        else:
            resized = v2.Resize(self.resize, self.interpolation)(img)
            crop = v2.FiveCrop(self.size) if self.tta.mode == "five_crop" else v2.TenCrop(self.size)
            views = crop(resized)
        return torch.stack([self.finish(v) for v in views])


def view_shape(pre: Preprocess, tta: TTA) -> tuple[int, ...]:
    """The tensor one image becomes under `tta`: (3, S, S), or (V, 3, S, S) for multi-view modes."""
    s = pre.image_size
    return (tta.views, 3, s, s) if tta.multi_view else (3, s, s)
