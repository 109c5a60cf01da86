"""Open images the same way everywhere: EXIF orientation applied, any mode converted to RGB."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# What a bad image raises: not an image, truncated, a decompression bomb, an I/O error. The bomb
# warning is listed too: the readers below turn it into an exception, which must not escape.
BAD_IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                    Image.DecompressionBombError, Image.DecompressionBombWarning)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def open_source(path: str | Path) -> str | Path | BinaryIO:
    """What `Image.open` reads for `path`: the file, or the bytes of a shard member that a path
    `<shard>.tar/<key>.<ext>` addresses (data/shards.py)."""
    p = Path(path)
    if p.parent.suffix == ".tar":
        from .shards import is_member, read_member

        if is_member(p):
            return BytesIO(read_member(p))
    return path


def load_rgb(path: str | Path, draft: int | None = None) -> Image.Image:
    """Decode fully (so truncation fails here, not mid-transform) and return an RGB image.

    `draft`: a JPEG is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 scale whose sides are both
    at least `draft` pixels (libjpeg's DCT scaling: much less work; pixels differ from a full
    decode then resize, see data/decode.py). Other formats ignore it.
    """
    with warnings.catch_warnings():
        # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; treat both as errors.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(open_source(path)) as img:
            if draft is not None and img.format == "JPEG":
                img.draft(img.mode, (draft, draft))
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
        source = open_source(path)  # a shard member's bytes, or the file
        if (source.getbuffer().nbytes if isinstance(source, BytesIO) else Path(path).stat().st_size) == 0:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.verify() if img.format == "PNG" else None
        return True
    except BAD_IMAGE_ERRORS:
        return False


# While a saved index is built (data/saved_index.py), readers list files only: the checks that
# `verify:` asks for then run once over everything listed, in parallel, split by split. A context
# variable rather than a reader argument keeps every reader's signature (layouts.Reader) as it is.
_LISTING_ONLY: ContextVar[bool] = ContextVar("stagewise_listing_only", default=False)


@contextmanager
def listing_only() -> Iterator[None]:
    """Within this block `HeaderCheck` accepts every file without opening it."""
    token = _LISTING_ONLY.set(True)
    try:
        yield
    finally:
        _LISTING_ONLY.reset(token)


class HeaderCheck:
    """`header_ok` for the files an indexer finds: keeps the unreadable ones, ticks a progress bar.
    Inside `listing_only()` it opens nothing and accepts every file."""

    def __init__(self, advance: Callable[[int], None] | None = None) -> None:
        self.skipped: list[str] = []
        self.advance = advance

    @property
    def listing(self) -> bool:
        """Inside `listing_only()`: every file passes unopened (readers may skip the calls)."""
        return _LISTING_ONLY.get()

    def count(self, n: int) -> None:
        """Tick the progress bar for `n` files accepted without a call each."""
        if self.advance is not None:
            self.advance(n)

    def __call__(self, path: Path) -> bool:
        if self.advance is not None:
            self.advance(1)
        if _LISTING_ONLY.get() or header_ok(path):
            return True
        self.skipped.append(str(path))
        return False


def decode_error(path: Path) -> str | None:
    """Why `load_rgb(path)` would fail (None when it loads), at a fraction of its cost.

    JPEGs are decoded with DCT scaling (`draft`, 1/8 size): every byte of the compressed data is
    still read and entropy-decoded, so truncated or corrupt files fail as they do in `load_rgb`.
    `Image.verify()` would be cheaper but checks nothing in a JPEG (a truncated one passes).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(open_source(path)) as img:
                img.draft(img.mode, (1, 1))
                img.load()
                to_rgb(ImageOps.exif_transpose(img))
    except BAD_IMAGE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


# EXIF orientations that turn the image by 90 degrees (transpose, rotate 270, transverse, rotate 90).
_QUARTER_TURNS = {5, 6, 7, 8}


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as `load_rgb` returns the image: after its EXIF orientation is applied.

    Reads tags only; JPEG, WebP and TIFF keep them in the header. A PNG may store its eXIf chunk
    after the pixels, so Pillow loads those first: call this after `load()` when decoding anyway.
    """
    w, h = img.size
    return (h, w) if img.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS else (w, h)
