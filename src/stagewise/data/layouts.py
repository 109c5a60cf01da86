"""Pick the reader for a dataset's layout (`format: auto` detects it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from .folder import read_folder
from .index import DatasetIndex

Reader = Callable[[Path, float, int], DatasetIndex]

READERS: dict[str, Reader] = {"folder": read_folder}


def detect_format(root: Path) -> str:
    """The layout name of `root`; folder is the fallback for plain class folders."""
    return "folder"


def load_dataset(root: Path, fmt: str = "auto", val_fraction: float = 0.2, seed: int = 0) -> DatasetIndex:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    name = detect_format(root) if fmt == "auto" else fmt
    reader = READERS.get(name)
    if reader is None:
        raise DataError(f"data format '{name}' is not available; choose one of auto, {', '.join(READERS)}")
    return reader(root, val_fraction, seed)
