"""Open images the same way everywhere: EXIF orientation applied, any mode converted to RGB."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# What a bad image raises: not an image, truncated, a decompression bomb, an I/O error. The bomb
# warning is listed too: the readers below turn it into an exception, which must not escape.
BAD_IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                    Image.DecompressionBombError, Image.DecompressionBombWarning)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode fully (so truncation fails here, not mid-transform) and return an RGB image."""
    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; treat both as errors.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """L/P/RGBA/CMYK/I;16 -> RGB; transparency composited on white rather than black."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        base = Image.new("RGB", img.size, (255, 255, 255))
        base.paste(img, mask=img.getchannel("A"))
        return base
    if img.mode.startswith("I;16") or img.mode == "I":
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def header_ok(path: Path) -> bool:
    """Cheap check (reads the header only) used while indexing; full decoding happens later."""
    try:
        if path.stat().st_size == 0:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.verify() if img.format == "PNG" else None
        return True
    except BAD_IMAGE_ERRORS:
        return False
