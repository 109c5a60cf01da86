"""CIFAR-10 / CIFAR-100 in their python-pickle form, read without running any pickled code.

    cifar-10-batches-py/   data_batch_1..5, test_batch, batches.meta (label_names)
    cifar-100-python/      train, test, meta (fine_label_names); labels are the 100 fine classes

The batches are pickles, and a pickle can name any callable to run while loading. The unpickler
here resolves only the few numpy globals an array needs and refuses every other one, so a
tampered file fails with an error instead of executing code. The official test batch is the
'val' split (the split everyone reports CIFAR accuracy on).
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .index import DatasetIndex, Samples
from .progress import Advance

FOLDERS = ("cifar-10-batches-py", "cifar-100-python")
_CIFAR10 = ("batches.meta", "data_batch_1", "test_batch")
_CIFAR100 = ("meta", "train", "test")

# numpy's array reconstructor moved from numpy.core to numpy._core in numpy 2; pickles name either.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes inside protocol-2 pickles as _codecs.encode(text, 'latin1').
    ("_codecs", "encode"): codecs.encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: CIFAR batches only "
                                         "hold numpy arrays, lists and strings")
        return allowed


def load_batch(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys (the files were written by Python 2)."""
    try:
        with open(path, "rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a CIFAR python batch ({exc}); re-download it with "
                        "stagewise data fetch cifar10|cifar100") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def cifar_folder(root: Path) -> Path | None:
    """The batches folder: `root` itself, or the one CIFAR folder inside it."""
    for folder in (root, *(root / name for name in FOLDERS)):
        if all((folder / f).is_file() for f in _CIFAR10) or all((folder / f).is_file() for f in _CIFAR100):
            return folder
    return None


def read_cifar(root: Path, val_fraction: float = 0.2, seed: int = 0,
               advance: Advance | None = None) -> DatasetIndex:
    """Index CIFAR-10 or -100; `val_fraction`, `seed` and `advance` are unused (no image files:
    the test batch is val)."""
    folder = cifar_folder(Path(root))
    if folder is None:
        raise DataError(f"{root}: not a CIFAR folder; expected {FOLDERS[0]}/ ({', '.join(_CIFAR10)}) "
                        f"or {FOLDERS[1]}/ ({', '.join(_CIFAR100)})")
    if (folder / "batches.meta").is_file():
        names = [str(n) for n in load_batch(folder / "batches.meta")["label_names"]]
        train_files = sorted(folder.glob("data_batch_*"))
        val_files, key = [folder / "test_batch"], "labels"
    else:
        names = [str(n) for n in load_batch(folder / "meta")["fine_label_names"]]
        train_files, val_files, key = [folder / "train"], [folder / "test"], "fine_labels"
    splits = {"train": _samples(train_files, key), "val": _samples(val_files, key)}
    return DatasetIndex(root=folder, layout="cifar", class_ids=names, class_names=list(names),
                        splits=splits)


def _samples(files: list[Path], key: str) -> Samples:
    arrays, labels = [], []
    for f in files:
        batch = load_batch(f)
        if "data" not in batch or key not in batch:
            raise DataError(f"{f}: missing 'data' or '{key}' in the batch")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{f}: expected data of shape (N, 3072), got {data.shape}")
        # Rows are channel-planar (1024 R, 1024 G, 1024 B); images are wanted as H, W, C.
        arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += [int(v) for v in batch[key]]
    return Samples(labels=labels, arrays=np.ascontiguousarray(np.concatenate(arrays)))
