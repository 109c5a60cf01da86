"""`stagewise data shard`: write a dataset in any layout as WebDataset shards (data/shards.py
describes the folder and reads it back)."""

from __future__ import annotations

import json
import re
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .index import DatasetIndex, Samples
from .progress import Advance, Progress, task
from .shards import LABEL, MANIFEST, VERSION, is_member, read_member

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}


def parse_size(text: str) -> int:
    """'256MB' -> 256_000_000 (kB/MB/GB are powers of 10, KiB/MiB/GiB of 2); a unit is required."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1000:
        raise DataError(f"--shard-size {text!r}: expected a size with a unit, at least 1kB, such as "
                        "256MB, 1GB or 512MiB (units: B, kB, MB, GB, KiB, MiB, GiB)")
    return int(float(m.group(1)) * _UNITS[unit])


def write_shards(source: Path, out: Path, shard_size: int, fmt: str = "auto",
                 val_fraction: float = 0.2, seed: int = 0, progress: Progress = False) -> dict:
    """Write the dataset at `source` (any layout `load_dataset` reads) as shards in `out`.

    The training split is written in a seeded random order, so that every shard holds a mix of
    classes (a reader that shuffles within a few shards then still sees mixed batches); val and
    test in index order. Files that failed the indexer's header check are left out (and counted).
    `out` is built beside itself and renamed into place: a killed run leaves no half folder.
    """
    from ..io import replace_dir
    from .layouts import load_dataset

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} already exists and is not empty; give a new folder for the shards "
                        "(nothing was written)")
    index = load_dataset(source, fmt, val_fraction, seed, progress=progress)
    if any(s.paths is None for s in index.splits.values()):
        raise DataError(f"{source}: the {index.layout} layout holds decoded arrays, not image files; "
                        "shards store image files (train from it directly)")
    start = time.perf_counter()
    manifest: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        manifest.update(_write_all(index, tmp, shard_size, seed, progress))
        manifest["seconds"] = round(time.perf_counter() - start, 3)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    replace_dir(build, out)
    return manifest


def _write_all(index: DatasetIndex, tmp: Path, shard_size: int, seed: int, progress: Progress) -> dict:
    splits: dict[str, Any] = {}
    exts: list[str] = []
    for name, samples in index.splits.items():
        order = list(range(len(samples)))
        if name == "train":
            order = np.random.default_rng(seed).permutation(len(samples)).tolist()
        with task(progress, f"sharding {name}", len(order)) as advance:
            splits[name] = _write_split(samples, order, tmp, name, shard_size, exts, advance)
        splits[name]["counts"] = samples.counts(index.num_classes)
    return {
        "format": "webdataset", "version": VERSION, "source": str(index.root),
        "layout": index.layout, "seed": seed, "shard_size": shard_size,
        "classes": {"ids": index.class_ids, "names": index.class_names}, "extensions": exts,
        "splits": splits, "skipped": len(index.skipped),
    }


def _write_split(samples: Samples, order: list[int], folder: Path, split: str, shard_size: int,
                 exts: list[str], advance: Advance) -> dict:
    """Write one split's shards, then read back each tar's member offsets into the index."""
    try:
        import webdataset as wds
    except ImportError:
        raise DataError("stagewise data shard writes with webdataset: pip install "
                        "'stagewise[shards]' (training from shards needs nothing extra)") from None

    pattern = str(folder / f"{split}-%06d.tar")
    # A fixed mtime (an int: a float one costs a 1 kB PAX header per member) and owner: the same
    # data gives byte-identical shards.
    with wds.ShardWriter(pattern, maxcount=10**9, maxsize=shard_size, verbose=0, mtime=0) as sink:
        for key, i in enumerate(order):
            path = Path(samples.paths[i])  # type: ignore[index]
            ext = path.suffix.lower().lstrip(".") or "img"
            if ext not in exts:
                exts.append(ext)
            # A shard folder can be re-sharded (another --shard-size): its members are read back.
            data = read_member(path) if is_member(path) else path.read_bytes()
            sink.write({"__key__": f"{key:08d}", ext: data, "cls": samples.labels[i]})
            advance(1)
    rows = np.zeros((len(order), 5), dtype=np.int64)
    shards = sorted(folder.glob(f"{split}-*.tar"))
    for num, shard in enumerate(shards):
        with tarfile.open(shard) as tar:
            for member in tar:
                stem, _, ext = member.name.partition(".")
                if ext != "cls":
                    rows[int(stem)] = (num, member.offset_data, member.size, 0, exts.index(ext))
    rows[:, LABEL] = [samples.labels[i] for i in order]
    np.save(folder / f"{split}.index.npy", rows)
    return {"samples": len(order), "shards": [{"name": s.name, "bytes": s.stat().st_size}
                                              for s in shards]}
