"""Classify many files: expand paths, folders and globs; decode in loader workers; keep going past
bad files, each of which becomes an error row instead of stopping the run."""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.images import BAD_IMAGE_ERRORS, is_image_file, load_rgb
from ..data.loader import default_workers
from .classifier import Classifier, Prediction


@dataclass(frozen=True)
class FileResult:
    """The outcome for one input file: a prediction, or why there is none."""

    path: str
    prediction: Prediction | None = None
    error: str | None = None


def expand_inputs(items: Sequence[str | Path]) -> list[FileResult]:
    """Files as given, folders searched recursively for images, globs expanded (`**` works).

    Entries that match nothing come back with an error set, in their place; the rest with neither
    prediction nor error. Order is kept and duplicates dropped.
    """
    out: list[FileResult] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = str(path)
        if key not in seen:
            seen.add(key)
            out.append(FileResult(key))

    for item in items:
        path = Path(item).expanduser()
        if path.is_file():
            add(path)
        elif path.is_dir():
            found = _images_under(path)
            for f in found:
                add(f)
            if not found:
                out.append(FileResult(str(path), error="no image files in this folder"))
        else:
            matches = sorted(glob.glob(str(path), recursive=True))
            files = [f for m in matches for f in ([Path(m)] if Path(m).is_file() else _images_under(Path(m)))]
            for f in files:
                add(f)
            if not files:
                out.append(FileResult(str(item), error="no such file or folder (and no glob match)"))
    return out


def _images_under(folder: Path) -> list[Path]:
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


def predict_files(
    clf: Classifier,
    entries: list[FileResult],
    top_k: int = 5,
    batch_size: int = 32,
    tta: str | None = None,
    num_workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[FileResult]:
    """Predict every entry without an error; returns the entries in order, each filled in.

    `on_progress(n)` is called with the number of files finished after each batch.
    """
    todo = [k for k, e in enumerate(entries) if e.error is None]
    paths = [entries[k].path for k in todo]
    results = list(entries)
    if not paths:
        return results
    # Workers only pay off past one batch: starting them costs more than decoding a few files.
    workers = (default_workers() if len(paths) > batch_size else 0) if num_workers is None else num_workers
    loader = DataLoader(_Files(paths, clf.transform), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate,
                        pin_memory=clf.device.type == "cuda")
    done = 0
    for batch, ok, bad in loader:
        for i, err in bad:
            results[todo[i]] = FileResult(paths[i], error=err)
        if batch is not None:
            preds = clf.predictions(clf.probabilities(batch, tta), top_k, [paths[i] for i in ok])
            for i, pred in zip(ok, preds, strict=True):
                results[todo[i]] = FileResult(paths[i], prediction=pred)
        done += len(ok) + len(bad)
        if on_progress is not None:
            on_progress(done)
    return results
