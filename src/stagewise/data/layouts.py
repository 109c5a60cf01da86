"""Pick the reader for a dataset's layout (`format: auto` detects it).

Every reader has the signature `(root, val_fraction, seed, advance=None) -> DatasetIndex`, where
`advance(1)` is called per image file checked (a progress bar's tick). Detection tries the
specific layouts first; a plain image folder is the fallback. When two unrelated layouts match
(say a CSV manifest next to class folders) detection refuses to guess and asks for `format:`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..defaults import SEED, VAL_FRACTION, VERIFY
from ..errors import DataError
from .cifar import cifar_folder, read_cifar
from .csv_manifest import find_manifest, read_csv_manifest
from .fine_grained import fine_grained_layout, read_flowers102, read_food101, read_oxford_pets
from .folder import class_dirs, read_folder, split_dirs
from .imagenet import data_root, read_imagenet, read_imagenette, subset_name, train_wnids
from .index import EXPECTED, DatasetIndex
from .progress import Advance, Progress, task
from .saved_index import Indexed, saved_index
from .shards import is_shard_folder, read_shards
from .tiny_imagenet import is_tiny_imagenet, read_tiny_imagenet


class Reader(Protocol):
    def __call__(self, root: Path, val_fraction: float = 0.2, seed: int = 0,
                 advance: Advance | None = None) -> DatasetIndex: ...


READERS: dict[str, Reader] = {
    "folder": read_folder,
    "imagenette": read_imagenette,
    "imagewoof": read_imagenette,
    "tiny-imagenet": read_tiny_imagenet,
    "imagenet": read_imagenet,
    "csv": read_csv_manifest,
    "cifar": read_cifar,
    "flowers102": read_flowers102,
    "oxford-pets": read_oxford_pets,
    "food101": read_food101,
    "shards": read_shards,
}

# What each layout looks like on disk, for error messages.


def _wnid_family(root: Path) -> str | None:
    if is_tiny_imagenet(root):
        return "tiny-imagenet"
    wnids = train_wnids(data_root(root) / "train")
    if not wnids:
        return None
    return subset_name(wnids) or "imagenet"


def _csv(root: Path) -> str | None:
    return "csv" if find_manifest(root) is not None else None


def _cifar(root: Path) -> str | None:
    return "cifar" if cifar_folder(root) is not None else None


def _shards(root: Path) -> str | None:
    return "shards" if is_shard_folder(root) else None


# Independent families: at most one may match. Within the wnid family the most specific wins.
_PROBES: tuple[Callable[[Path], str | None], ...] = (_cifar, _csv, _wnid_family, _shards,
                                                    fine_grained_layout)


def detect_format(root: Path) -> str:
    """The layout name of `root`; `folder` is the fallback for plain class folders."""
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"{root} is a file; data: must be a folder or a .csv manifest")
    matches = [name for probe in _PROBES if (name := probe(root))]
    if len(matches) > 1:
        raise DataError(
            f"{root}: ambiguous layout, it looks like both {' and '.join(matches)}; set "
            f"format: to one of them ({'; '.join(f'{m}: {EXPECTED[m]}' for m in matches)})"
        )
    if matches:
        return matches[0]
    if split_dirs(root):
        return "folder"
    # A parent of a known layout (say the --root of `data fetch`) would otherwise read as one
    # class per sub-folder; point at the dataset instead. (Few sub-folders: real class folders
    # are many, and probing each of them would scan every image.)
    dirs = class_dirs(root)
    nested = [p for p in dirs if _matches_quietly(p)] if len(dirs) <= 4 else []
    if nested:
        raise DataError(f"{root}: holds the dataset folder {nested[0].name}/; use data: {nested[0]}")
    if dirs:
        return "folder"
    raise DataError(_no_match(root))


def _no_match(root: Path) -> str:
    entries = sorted(root.iterdir())
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:12])
    more = f" and {len(entries) - 12} more" if len(entries) > 12 else ""
    lines = [f"{root}: no dataset layout recognised; it holds {shown or 'nothing'}{more}.",
             "Expected one of:"]
    lines += [f"  {name}: {text}" for name, text in EXPECTED.items()]
    return "\n".join(lines)


def _matches_quietly(folder: Path) -> bool:
    try:
        return any(probe(folder) for probe in _PROBES)
    except (DataError, OSError):
        return False


def load_dataset(root: Path, fmt: str = "auto", val_fraction: float = VAL_FRACTION,
                 seed: int = SEED, progress: Progress = False, verify: str = VERIFY) -> DatasetIndex:
    """Index the dataset at `root` with the reader for `fmt` (or the detected layout).

    The index is built once and saved (data/saved_index.py): later calls read it back while the
    folder is unchanged. `verify` (none|header|decode|auto) says what is opened while building.
    """
    return index_dataset(root, fmt, val_fraction, seed, progress, verify).index


def index_dataset(root: Path, fmt: str = "auto", val_fraction: float = VAL_FRACTION,
                  seed: int = SEED, progress: Progress = False, verify: str = VERIFY,
                  refresh: bool = False) -> Indexed:
    """`load_dataset` with how the index was obtained (built or read back, seconds, cache file)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if fmt == "cifar" or (fmt == "auto" and root.is_dir() and cifar_folder(root) is not None):
        # decoded arrays, read whole in a second: nothing to save
        start = time.perf_counter()
        with task(progress, f"indexing {root.name or root}") as advance:
            index = read_cifar(root, val_fraction, seed, advance)
        return Indexed(index, False, time.perf_counter() - start, root, "none")

    def pick() -> tuple[str, Reader]:
        # Detection lists the folder: only a build pays for it (the saved index of format: auto
        # is keyed by "auto" and records the layout it found).
        name = detect_format(root) if fmt == "auto" else fmt
        reader = READERS.get(name)
        if reader is None:
            raise DataError(f"data format '{name}' is not available; choose one of auto, "
                            f"{', '.join(READERS)}")
        return name, reader

    return saved_index(root, fmt, pick, val_fraction, seed, verify, progress, refresh)
