"""Decoded-image cache (`cache: memory|disk`): decode and shrink each image once, not every epoch.

Each image is decoded (EXIF orientation applied, converted to RGB) and, when its shorter side is
longer than the evaluation transform's resize size, shrunk with that very `Resize` op, keeping the
aspect ratio. Smaller images are kept as they are (upscaling would only store more bytes). The
evaluation transform's own Resize is then a no-op on cached images, so with augmentation off the
tensors are identical to the uncached path; random crops and flips still run per epoch, on the
cached (already shrunk) image.

- memory: one flat uint8 buffer in this process (workers forked from it share its pages).
- disk: content-addressed packs in a cache folder, read through numpy memmaps. Entries are keyed
  by the file's content hash and byte size, so a changed file gets a fresh entry and an unchanged
  one is never decoded again, across runs and datasets. A small stat index (path, size, mtime)
  spares re-hashing unchanged files. Packs are immutable and written atomically (data, then its
  index), so concurrent runs or a crash leave at worst an unused file. Delete the folder to reclaim
  space; it defaults to $STAGEWISE_CACHE_DIR or ~/.cache/stagewise/decoded.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from torchvision import transforms as T

from ..errors import DataError
from ..io import write_with
from .hashing import content_hash
from .images import BAD_IMAGE_ERRORS, load_rgb
from .progress import Advance, Progress, task
from .transforms import Preprocess, build_transform

log = logging.getLogger("stagewise")

CacheMode = Literal["none", "memory", "disk"]
_FORMAT = "v1"


def default_cache_dir() -> Path:
    if os.environ.get("STAGEWISE_CACHE_DIR"):
        return Path(os.environ["STAGEWISE_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "stagewise" / "decoded"


def eval_resize(pre: Preprocess) -> T.Resize | None:
    """The Resize op of the evaluation transform (None if it has none)."""
    tf = build_transform(pre, "none", False)
    return next((t for t in getattr(tf, "transforms", []) if isinstance(t, T.Resize)), None)


def shrink(img: Image.Image, resize: T.Resize | None) -> Image.Image:
    """Apply `resize` only when it makes the image smaller."""
    if resize is None:
        return img
    w, h = img.size
    size = resize.size
    if isinstance(size, int) or len(size) == 1:
        target = size if isinstance(size, int) else size[0]
        return resize(img) if min(w, h) > target else img
    return resize(img) if h > size[0] and w > size[1] else img


def decode(path: Path, resize: T.Resize | None) -> np.ndarray | None:
    """HxWx3 uint8 of the image as the cache stores it; None when it cannot be decoded."""
    try:
        return np.asarray(shrink(load_rgb(path), resize), dtype=np.uint8)
    except BAD_IMAGE_ERRORS:
        return None


class DecodedCache:
    """Decoded images of one dataset split; `get(i)` returns the PIL RGB image of sample i.

    `table` rows are (buffer, offset, height, width); height 0 marks an undecodable file.
    Buffers are arrays (memory) or pack file paths opened lazily as memmaps (disk), so pickling
    this object for a spawned worker copies no image data in disk mode.
    """

    def __init__(self, buffers: list[np.ndarray | Path], table: np.ndarray, names: Sequence[str]):
        self.buffers = buffers
        self.table = table
        self.names = list(names)
        self._open: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.table)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def _buffer(self, k: int) -> np.ndarray:
        buf = self.buffers[k]
        if isinstance(buf, np.ndarray):
            return buf
        if k not in self._open:
            self._open[k] = np.memmap(buf, dtype=np.uint8, mode="r")
        return self._open[k]

    def array(self, i: int) -> np.ndarray:
        k, offset, h, w = (int(v) for v in self.table[i])
        if h == 0:
            raise OSError(f"{self.names[i]}: cannot be decoded (found when the cache was built)")
        return self._buffer(k)[offset: offset + h * w * 3].reshape(h, w, 3)

    def get(self, i: int) -> Image.Image:
        return Image.fromarray(np.array(self.array(i)))


def _decode_all(paths: Sequence[Path], resize: T.Resize | None) -> Iterable[np.ndarray | None]:
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
        yield from pool.map(lambda p: decode(p, resize), paths, chunksize=1)


def build_memory(paths: Sequence[Path], resize: T.Resize | None,
                 limit_bytes: int | None = None, progress: Progress = False) -> DecodedCache:
    """Decode every image into one in-memory buffer."""
    limit = limit_bytes if limit_bytes is not None else _memory_budget()
    arrays, table, total = [], np.zeros((len(paths), 4), dtype=np.int64), 0
    with task(progress, "caching decoded images", len(paths)) as advance:
        for i, arr in enumerate(_decode_all(paths, resize)):
            advance(1)
            if arr is None:
                continue
            table[i] = (0, total, arr.shape[0], arr.shape[1])
            arrays.append(arr.reshape(-1))
            total += arr.size
            if total > limit:
                raise DataError(f"cache: memory would need more than {limit / 2**30:.1f} GiB for "
                                f"{len(paths)} images; use cache: disk (or none)")
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint8)
    return DecodedCache([flat], table, [str(p) for p in paths])


def _memory_budget() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _variant(resize: T.Resize | None) -> str:
    if resize is None:
        return f"{_FORMAT}-full"
    size = resize.size if isinstance(resize.size, int) else "x".join(map(str, resize.size))
    return f"{_FORMAT}-{size}-{resize.interpolation.value}"


class DiskStore:
    """One cache folder for one resize setting: packs of decoded images keyed by content."""

    def __init__(self, root: Path, resize: T.Resize | None) -> None:
        self.folder = Path(root) / _variant(resize)
        self.resize = resize
        self.folder.mkdir(parents=True, exist_ok=True)

    def _packs(self) -> tuple[list[Path], dict[str, tuple[int, int, int, int]]]:
        packs: list[Path] = []
        entries: dict[str, tuple[int, int, int, int]] = {}
        for index in sorted(self.folder.glob("pack-*.json")):
            data = index.with_suffix(".u8")
            try:
                items = json.loads(index.read_text())["entries"]
            except (OSError, ValueError, KeyError):
                continue  # a torn or foreign file: its images are decoded again
            if not data.is_file():
                continue
            packs.append(data)
            for key, (offset, h, w) in items.items():
                entries[key] = (len(packs) - 1, offset, h, w)
        return packs, entries

    def keys(self, paths: Sequence[Path], advance: Advance | None = None) -> list[str | None]:
        """'<blake2b>-<bytes>' per file (None if unreadable); hashes memoised by path and mtime."""
        memo_file = self.folder / "stat.json"
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        keys: list[str | None] = []
        for p in paths:
            if advance is not None:
                advance(1)
            try:
                st = p.stat()
                stamp = [st.st_size, st.st_mtime_ns]
                seen = memo.get(str(p))
                if seen is None or seen[:2] != stamp:
                    digest = content_hash(p)
                    memo[str(p)] = seen = [*stamp, f"{digest}-{st.st_size}"]
                keys.append(seen[2])
            except OSError:
                keys.append(None)
        _write_atomic(memo_file, json.dumps(memo).encode())
        return keys

    def add(self, paths: Sequence[Path], keys: Sequence[str], advance: Advance | None = None) -> None:
        """Decode `paths` and write them as one new pack (data first, then its index)."""
        name = f"pack-{uuid.uuid4().hex}"
        data, items, offset = self.folder / f"{name}.u8", {}, 0
        tmp = data.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for key, arr in zip(keys, _decode_all(paths, self.resize), strict=True):
                if advance is not None:
                    advance(1)
                if arr is None:
                    items[key] = (0, 0, 0)
                    continue
                f.write(arr.tobytes())
                items[key] = (offset, arr.shape[0], arr.shape[1])
                offset += arr.size
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, data)
        _write_atomic(data.with_suffix(".json"), json.dumps({"entries": items}).encode())

    def build(self, paths: Sequence[Path], progress: Progress = False) -> DecodedCache:
        """The cache of `paths`, decoding only the images no pack holds yet."""
        with task(progress, "cache: checking files", len(paths)) as advance:
            keys = self.keys(paths, advance)
        _, known = self._packs()
        todo = {k: p for k, p in zip(keys, paths, strict=True) if k is not None and k not in known}
        if todo:
            log.info("cache: decoding %d of %d images into %s", len(todo), len(paths), self.folder)
            with task(progress, "cache: decoding images", len(todo)) as advance:
                self.add(list(todo.values()), list(todo), advance)
        packs, entries = self._packs()
        table = np.zeros((len(paths), 4), dtype=np.int64)
        for i, key in enumerate(keys):
            if key is not None and key in entries:
                table[i] = entries[key]
        return DecodedCache(list(packs), table, [str(p) for p in paths])


def _write_atomic(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    write_with(path, write)  # a unique temp name: runs may share the folder


def attach_cache(datasets: Iterable, mode: CacheMode, pre: Preprocess,
                 cache_dir: Path | None = None, progress: Progress = False) -> None:
    """Give each ImageDataset over image files a decoded cache (`dataset.cache`).

    Building it decodes every image once (`progress`: see `data.progress`; off by default).
    """
    if mode == "none":
        return
    if mode not in ("memory", "disk"):
        raise DataError(f"cache: unknown mode {mode!r}; choose none, memory or disk")
    resize = eval_resize(pre)
    for ds in datasets:
        paths = ds.samples.paths
        if paths is None:  # already decoded arrays (CIFAR): nothing to gain
            continue
        if mode == "memory":
            ds.cache = build_memory(paths, resize, progress=progress)
        else:
            ds.cache = DiskStore(cache_dir or default_cache_dir(), resize).build(paths, progress)
