"""How the loader decodes an image file: the stage's `decoder:` key.

- `pil`: Pillow, full size (what `predict` and `evaluate` use).
- `pil-draft`: Pillow with libjpeg's DCT scaling (`Image.draft`): a JPEG at least twice the side
  the transform needs is decoded at 1/2, 1/4 or 1/8 scale, never below that side (2 x the eval
  resize side, `image_size / crop_pct`). Pixels differ from a full decode (mean 1.1 of 255 levels
  after the eval transform at 64 px from 500 px photos); 1.4x the images per second there.
  Non-JPEG files and images smaller than twice the side decode exactly as `pil`.
- `torchvision`: `torchvision.io.decode_image` (libjpeg-turbo), the same pixels as Pillow for
  JPEG, about 6% faster at decoding alone but the transforms then need a PIL image again; other
  formats go through Pillow (its RGB conversion composites transparency on white).
- `auto`: `pil-draft` for the training split, whose augmentation moves pixels far more than
  drafting does, and `pil` for validation, so that the metrics a stage reports are those
  `stagewise evaluate` finds. Decoding runs in the loader's CPU workers on every device, so
  the choice does not depend on it. Figures: docs/benchmarks.md ("Decoding").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image

from .images import load_rgb, open_source
from .transforms import Preprocess

# The reduced decode keeps at least this many times the side the transform needs.
DRAFT_MARGIN = 2


class Decoder:
    """A picklable `path -> RGB PIL image` for `ImageDataset.decode` (loader workers)."""

    def __init__(self, name: str, draft: int | None = None) -> None:
        self.name, self.draft = name, draft

    def __call__(self, path: Path) -> Image.Image:
        if self.name == "torchvision":
            return _torchvision(path)
        return load_rgb(path, self.draft if self.name == "pil-draft" else None)

    def __repr__(self) -> str:
        return f"Decoder({self.name!r}, draft={self.draft})"


def draft_side(pre: Preprocess) -> int:
    """The side a drafted JPEG keeps at least: DRAFT_MARGIN x the eval transform's resize side."""
    return DRAFT_MARGIN * math.ceil(pre.image_size / pre.crop_pct)


def make_decoder(name: str, pre: Preprocess, training: bool) -> Decoder:
    """The decoder `decoder: name` means for the training or the validation split."""
    if name == "auto":
        name = "pil-draft" if training else "pil"
    return Decoder(name, draft_side(pre) if name == "pil-draft" else None)


def attach_decoders(datasets: dict[str, Any], name: str, pre: Preprocess) -> None:
    """Set each dataset's `decode` ({'train': ds, 'val': ds}); datasets without one are skipped."""
    for split, ds in datasets.items():
        if hasattr(ds, "decode"):
            ds.decode = make_decoder(name, pre, training=split == "train")


def _torchvision(path: Path) -> Image.Image:
    """JPEG through torchvision (EXIF orientation applied, as Pillow's path does); the rest PIL."""
    source = open_source(path)
    with open(source, "rb") if isinstance(source, (str, Path)) else source as fh:
        data = fh.read()
    if not data.startswith(b"\xff\xd8"):
        return load_rgb(path)
    import torch
    from torchvision.io import ImageReadMode, decode_image

    try:
        x = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                         apply_exif_orientation=True)
    except RuntimeError:
        return load_rgb(path)  # CMYK and other JPEGs libjpeg-turbo's API refuses: Pillow decides
    return Image.fromarray(x.permute(1, 2, 0).numpy())
