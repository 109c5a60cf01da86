"""Decode a split's images once before training, so bad files are known and counted up front.

Indexing reads headers only (`header_ok`), so a truncated JPEG reaches the loader, which drops it
from its batch and names it in `Batch.bad`. For the training split that count is reported per
epoch; a validation split whose files all fail would otherwise "evaluate" to 0.0 over 0 images.
Checking the validation split costs about one decode per image at 1/8 scale (see
`images.decode_error`); the training split is usually too large to check up front.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import DataError
from .images import decode_error
from .index import DatasetIndex, Samples
from .progress import Progress, task


def undecodable(samples: Samples, progress: Progress = False,
                workers: int | None = None) -> dict[str, str]:
    """{path: error} for every file of `samples` that the loader would drop, in sample order.

    Example:
        >>> undecodable(index.splits["val"])  # doctest: +SKIP
        {'data/val/ants/cut.jpg': 'OSError: image file is truncated (2 bytes not processed)'}
    """
    if samples.paths is None:  # decoded arrays (CIFAR): nothing can fail to decode
        return {}
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    bad: dict[str, str] = {}
    with task(progress, "checking images", len(samples)) as advance, \
            ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
        for path, error in zip(samples.paths, pool.map(decode_error, samples.paths),
                               strict=True):
            advance(1)
            if error is not None:
                bad[str(path)] = error
    return bad


def check_decodable(index: DatasetIndex, split: str = "val", progress: Progress = False) -> dict[str, str]:
    """The undecodable files of `split` ({path: error}); DataError when not one image decodes."""
    samples = index.splits[split]
    bad = undecodable(samples, progress)
    if samples and len(bad) == len(samples):
        path, error = next(iter(bad.items()))
        raise DataError(
            f"{index.root}: none of the {len(samples)} images of the '{split}' split can be "
            f"decoded (e.g. {path}: {error}); replace or re-download them (`stagewise data "
            f"inspect {index.root}` lists every bad file)"
        )
    return bad


def skipped_in(index: DatasetIndex, split: str = "val") -> int:
    """How many of the files that indexing skipped (unreadable headers) belong to `split`: those
    in class folders of that split's own (a val/ folder). A folder split at random after indexing
    has none of its own, so its skipped files are counted with the training images."""
    own = index.splits.get(split)
    if own is None or own.paths is None or not index.skipped:
        return 0
    if index.skipped_per_split is not None:  # a saved index knows each skipped file's split
        return index.skipped_per_split.get(split, 0)
    others = {p.parent for name, s in index.splits.items() if name != split and s.paths is not None
              for p in s.paths}
    folders = {p.parent for p in own.paths} - others
    return sum(1 for f in index.skipped if Path(f).parent in folders)
