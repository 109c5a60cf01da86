"""Classify many files: expand paths, folders and globs; decode in loader workers; keep going past
bad files, each of which becomes an error row instead of stopping the run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .classifier import Classifier, Prediction
from .ensemble import Ensemble
from .files import expand_paths, file_loader


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
    return [FileResult(path, error=error) for path, error in expand_paths(items)]


def predict_files(
    clf: Classifier | Ensemble,
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
    if isinstance(clf, Classifier):  # before any image is decoded; an Ensemble checked its members
        clf.require_classes("predict")
    todo = [k for k, e in enumerate(entries) if e.error is None]
    paths = [entries[k].path for k in todo]
    results = list(entries)
    if not paths:
        return results
    loader = file_loader(paths, clf.input_transform(tta), batch_size, num_workers,
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
