"""Image files from the command line: expand paths, folders and globs; decode them in loader
workers, keeping going past bad files (each becomes an error instead of stopping the run).

Shared by prediction and retrieval; it knows nothing of models, only of a preprocessing transform.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.images import BAD_IMAGE_ERRORS, is_image_file, load_rgb
from ..data.loader import default_workers


def expand_paths(items: Sequence[str | Path]) -> list[tuple[str, str | None]]:
    """(path, error) per file: files as given, folders searched recursively, globs expanded.

    Entries that match nothing come back as (entry, why), in their place. Order is kept and
    duplicates dropped.
    """
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = str(path)
        if key not in seen:
            seen.add(key)
            out.append((key, None))

    for item in items:
        path = Path(item).expanduser()
        if path.is_file():
            add(path)
        elif path.is_dir():
            found = images_under(path)
            for f in found:
                add(f)
            if not found:
                out.append((str(path), "no image files in this folder"))
        else:
            matches = sorted(glob.glob(str(path), recursive=True))
            files = [f for m in matches for f in ([Path(m)] if Path(m).is_file() else images_under(Path(m)))]
            for f in files:
                add(f)
            if not files:
                out.append((str(item), "no such file or folder (and no glob match)"))
    return out


def images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


class _Files(Dataset):
    """Decodes one file in a loader worker; a bad file yields its error message instead."""

    def __init__(self, paths: list[str], transform: Callable) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:
            return self.transform(load_rgb(self.paths[i])), i, None
        except BAD_IMAGE_ERRORS as exc:
            return None, i, f"{type(exc).__name__}: {exc}"


def _collate(items: list) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    good = [(x, i) for x, i, _ in items if x is not None]
    bad = [(i, err) for x, i, err in items if x is None]
    batch = torch.stack([x for x, _ in good]) if good else None
    return batch, [i for _, i in good], bad


def file_loader(paths: list[str], transform: Callable, batch_size: int, num_workers: int | None,
                pin_memory: bool = False) -> DataLoader:
    """Batches `(images or None, ok, bad)` of `paths`: `ok` indexes the decoded files into `paths`,
    `bad` holds `(index, error)` for the others."""
    # Workers only pay off past one batch: starting them costs more than decoding a few files.
    workers = (default_workers() if len(paths) > batch_size else 0) if num_workers is None else num_workers
    return DataLoader(_Files(paths, transform), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=_collate, pin_memory=pin_memory)
