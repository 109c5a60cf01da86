"""Sharded datasets: WebDataset tar shards written by `stagewise data shard`, read back as a layout.

A shard folder holds, per split, `<split>-NNNNNN.tar` (WebDataset: each sample is `<key>.<ext>`,
the original file's bytes, and `<key>.cls`, its class number), `<split>.index.npy` (one row per
sample: shard number, byte offset and size of the image member, label, extension number) and
`stagewise-shards.json` (classes, counts, shards, how it was made). Why tars, and why an offset
index beside them: docs/decisions.md. The writer is `shard_writer.py`.

A sample is addressed as `<root>/<split>-NNNNNN.tar/<key>.<ext>`, a path inside the tar (as
`zipfile.Path` addresses a zip member): `images.load_rgb` reads such a path from the tar by its
offset (one `pread`), so every reader of images (the loader, the val check, caches, reports,
`predict`) reads shards without knowing about them, and the saved split records them like files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .index import DatasetIndex, Samples
from .progress import Advance

MANIFEST = "stagewise-shards.json"
VERSION = 1
_SHARD = re.compile(r"^(?P<split>[a-z]+)-(?P<num>\d{6})\.tar$")
# Index columns (int64): where each sample's image member lies, and what it is.
SHARD, OFFSET, SIZE, LABEL, EXT = range(5)


def is_shard_folder(root: Path) -> bool:
    return (Path(root) / MANIFEST).is_file()


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{root}: no {MANIFEST}; a shard folder is made by `stagewise data shard "
                        f"FOLDER {root}`") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); re-create the shards with `stagewise data "
                        "shard`") from None
    if manifest.get("format") != "webdataset" or manifest.get("version") != VERSION:
        raise DataError(f"{path}: format {manifest.get('format')!r} version "
                        f"{manifest.get('version')!r}; this stagewise reads webdataset version "
                        f"{VERSION}: re-create the shards with `stagewise data shard`")
    return manifest


def read_shards(root: Path, val_fraction: float = 0.2, seed: int = 0,
                advance: Advance | None = None) -> DatasetIndex:
    """The layout reader of a shard folder (`val_fraction` and `seed` were applied when it was
    written, and are recorded in its manifest)."""
    root = Path(root)
    manifest = read_manifest(root)
    exts = manifest["extensions"]
    splits = {}
    for name, info in manifest["splits"].items():
        rows = _rows(root, name)
        if len(rows) != info["samples"]:
            raise DataError(f"{root / (name + '.index.npy')}: {len(rows)} rows, the manifest says "
                            f"{info['samples']}; re-create the shards")
        _check_files(root, info["shards"])
        shard_names = [s["name"] for s in info["shards"]]
        paths = [root / shard_names[r[SHARD]] / f"{key:08d}.{exts[r[EXT]]}"
                 for key, r in enumerate(rows.tolist())]
        splits[name] = Samples(labels=rows[:, LABEL].tolist(), paths=paths)
    classes = manifest["classes"]
    return DatasetIndex(root=root, layout="shards", class_ids=list(classes["ids"]),
                        class_names=list(classes["names"]), splits=splits)


def _check_files(root: Path, shards: list[dict]) -> None:
    """Every shard the manifest lists is there at its size (a stat per shard, not per image)."""
    for shard in shards:
        path = root / shard["name"]
        size = path.stat().st_size if path.is_file() else None
        if size != shard["bytes"]:
            found = "missing" if size is None else f"{size} bytes, the manifest says {shard['bytes']}"
            raise DataError(f"{path}: {found}; copy the shard folder again or re-create it with "
                            "`stagewise data shard`")


# Per process: each split's index (memory-mapped, shared by forked workers) and open shards.
_ROWS: dict[tuple[str, str], np.ndarray] = {}
_FILES: dict[str, int] = {}


def _rows(root: Path, split: str) -> np.ndarray:
    key = (str(root), split)
    if key not in _ROWS:
        path = root / f"{split}.index.npy"
        try:
            _ROWS[key] = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable ({exc}); re-create the shards") from None
    return _ROWS[key]


def is_member(path: Path) -> bool:
    """Whether `path` addresses a sample inside a shard (`<root>/<split>-NNNNNN.tar/<key>.<ext>`).
    A shard already open answers without a `stat` (a metadata call per image on NFS)."""
    shard = path.parent
    if str(shard) in _FILES:
        return True
    return shard.suffix == ".tar" and _SHARD.match(shard.name) is not None and shard.is_file()


def read_member(path: Path) -> bytes:
    """The bytes of the shard member `path` addresses: one positioned read, no tar parsing.

    File descriptors are kept per process; `os.pread` has no shared file position, so loader
    workers forked with them open read safely.
    """
    shard = path.parent
    split = _SHARD.match(shard.name).group("split")  # type: ignore[union-attr]
    row = _rows(shard.parent, split)[int(path.stem)]
    fd = _FILES.get(str(shard))
    if fd is None:
        fd = _FILES[str(shard)] = os.open(shard, os.O_RDONLY)
    data = os.pread(fd, int(row[SIZE]), int(row[OFFSET]))
    if len(data) != row[SIZE]:
        raise OSError(f"{shard}: truncated, member {path.name} ends past the end of the file")
    return data


def shard_numbers(samples: Samples) -> np.ndarray:
    """The shard each sample of `samples` lies in (from its address), for `shard_order`."""
    return np.array([int(Path(p).parent.stem.rsplit("-", 1)[1]) for p in samples.paths or []],
                    dtype=np.int64)
