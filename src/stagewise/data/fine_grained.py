"""Fine-grained benchmarks in the layouts their authors publish (and torchvision downloads):

    flowers-102/        jpg/image_00001.jpg ...; imagelabels.mat ('labels', 1-based class per
                        image); setid.mat ('trnid', 'valid', 'tstid': 1-based image ids)
    oxford-iiit-pet/    images/<Breed_name>_<n>.jpg; annotations/trainval.txt and test.txt
                        ('<image> <class id> <species> <breed id>', class ids 1-based)
    food-101/           images/<class>/<id>.jpg; meta/classes.txt (and labels.txt: display
                        names); meta/train.txt and test.txt ('<class>/<id>', no extension)

`data:` may be the dataset folder or the folder holding it (torchvision's `root`). Splits: the
published ones. Flowers-102 has train/val/test. Pets and Food-101 publish train(val) and test
only: val is held out of train by `val_fraction` (per class, seeded), and test stays the test
split the papers report, so picking the best epoch never looks at it (docs/decisions.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DataError
from .folder import stratified_split
from .images import HeaderCheck
from .index import DatasetIndex, Samples
from .progress import Advance

FOLDERS = {"flowers102": "flowers-102", "oxford-pets": "oxford-iiit-pet", "food101": "food-101"}
_MARKERS: dict[str, tuple[str, ...]] = {
    "flowers102": ("jpg", "imagelabels.mat", "setid.mat"),
    "oxford-pets": ("images", "annotations/trainval.txt"),
    "food101": ("images", "meta/classes.txt", "meta/train.txt"),
}


def fine_grained_layout(root: Path) -> str | None:
    """Which of these layouts `root` (or its one dataset folder inside) has, None if none. A
    torchvision root holding several of them is refused: which one to train on is the user's call."""
    found = {name: folder for name in _MARKERS if (folder := dataset_folder(root, name)) is not None}
    if len(found) > 1:
        raise DataError(f"{root}: holds several datasets ({', '.join(f'{f.name}/' for f in found.values())}); "
                        f"use data: {next(iter(found.values()))} (or another of them)")
    return next(iter(found), None)


def dataset_folder(root: Path, name: str) -> Path | None:
    """`root` itself or `root/<published folder name>` when it has the files of layout `name`."""
    for folder in (root, root / FOLDERS[name]):
        if all((folder / marker).exists() for marker in _MARKERS[name]):
            return folder
    return None


def _folder(root: Path, name: str) -> Path:
    folder = dataset_folder(Path(root), name)
    if folder is None:
        from .index import EXPECTED

        raise DataError(f"{root}: not the {name} layout; expected {EXPECTED[name]}")
    return folder


def read_flowers102(root: Path, val_fraction: float = 0.2, seed: int = 0,
                    advance: Advance | None = None) -> DatasetIndex:
    """Flowers-102: labels and the three splits from the .mat files (`val_fraction` unused)."""
    folder = _folder(root, "flowers102")
    labels = _mat_vector(folder / "imagelabels.mat", "labels")
    sets = {split: _mat_vector(folder / "setid.mat", key)
            for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid"))}
    present = sorted(set(labels))
    row = {label: i for i, label in enumerate(present)}
    readable = HeaderCheck(advance)
    splits: dict[str, Samples] = {}
    for split, ids in sets.items():
        bad = [i for i in ids if not 1 <= i <= len(labels)]
        if bad:
            raise DataError(f"{folder / 'setid.mat'}: image id {bad[0]} of {split} has no label in "
                            f"imagelabels.mat ({len(labels)} labels)")
        files = [(folder / "jpg" / f"image_{i:05d}.jpg", row[labels[i - 1]]) for i in ids]
        splits[split] = _listed(files, readable, folder / "setid.mat")
    names = _flower_names()
    class_names = [names[c - 1] if 1 <= c <= len(names) else f"flower {c}" for c in present]
    return DatasetIndex(root=folder, layout="flowers102", class_ids=[f"{c:03d}" for c in present],
                        class_names=class_names, splits=splits, skipped=readable.skipped)


def _flower_names() -> list[str]:
    """The 102 names in label order, as torchvision lists them (older versions lack the list)."""
    from torchvision.datasets import Flowers102

    return [str(n) for n in getattr(Flowers102, "classes", [])]


def _mat_vector(path: Path, key: str) -> list[int]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{path}: reading .mat files needs scipy; pip install scipy") from None
    try:
        data: dict[str, Any] = loadmat(str(path), squeeze_me=True)
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise DataError(f"{path}: not a readable MATLAB file ({str(exc)[:200]})") from None
    if key not in data:
        raise DataError(f"{path}: no '{key}' variable (found: {', '.join(k for k in data if not k.startswith('__'))})")
    try:
        return [int(v) for v in data[key].reshape(-1).tolist()]
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{path}: '{key}' is not a vector of integers") from None


def read_oxford_pets(root: Path, val_fraction: float = 0.2, seed: int = 0,
                     advance: Advance | None = None) -> DatasetIndex:
    """Oxford-IIIT Pet: 37 breeds; the class name is the file name's prefix (Abyssinian_100)."""
    folder = _folder(root, "oxford-pets")
    rows = {split: _pet_rows(folder / "annotations" / f"{split}.txt")
            for split in ("trainval", "test") if (folder / "annotations" / f"{split}.txt").is_file()}
    prefix: dict[int, str] = {}
    for entries in rows.values():
        for image, class_id in entries:
            prefix.setdefault(class_id, image.rsplit("_", 1)[0])
    ids = sorted(prefix)
    row = {c: i for i, c in enumerate(ids)}
    readable = HeaderCheck(advance)
    given = {split: _listed([(folder / "images" / f"{image}.jpg", row[c]) for image, c in entries],
                            readable, folder / "annotations" / f"{split}.txt")
             for split, entries in rows.items()}
    return _held_out(folder, "oxford-pets", [prefix[c] for c in ids],
                     [" ".join(p.title() for p in prefix[c].split("_")) for c in ids],
                     given.pop("trainval"), given.get("test"), val_fraction, seed, readable)


def _pet_rows(path: Path) -> list[tuple[str, int]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            raise DataError(f"{path}: line {n}: expected '<image> <class id> <species> <breed id>', "
                            f"got {line[:80]!r}")
        out.append((fields[0], int(fields[1])))
    return out


def read_food101(root: Path, val_fraction: float = 0.2, seed: int = 0,
                 advance: Advance | None = None) -> DatasetIndex:
    """Food-101: classes from meta/classes.txt, display names from meta/labels.txt."""
    folder = _folder(root, "food101")
    meta = folder / "meta"
    ids = _lines(meta / "classes.txt")
    labels_txt = meta / "labels.txt"
    names = _lines(labels_txt) if labels_txt.is_file() else []
    names = names if len(names) == len(ids) else [c.replace("_", " ") for c in ids]
    row = {c: i for i, c in enumerate(ids)}
    readable = HeaderCheck(advance)

    def split(name: str) -> Samples | None:
        path = meta / f"{name}.txt"
        if not path.is_file():
            return None
        files = []
        for n, entry in enumerate(_lines(path), start=1):
            cls = entry.split("/", 1)[0]
            if cls not in row:
                raise DataError(f"{path}: line {n}: class {cls!r} is not in {meta / 'classes.txt'}")
            files.append((folder / "images" / f"{entry}.jpg", row[cls]))
        return _listed(files, readable, path)

    train = split("train")
    assert train is not None  # a marker of the layout
    return _held_out(folder, "food101", ids, names, train, split("test"), val_fraction, seed, readable)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _listed(files: list[tuple[Path, int]], readable: Callable[[Path], bool], listing: Path) -> Samples:
    """The listed files that exist and pass `readable`; a listed file missing is an error."""
    missing = [f for f, _ in files if not f.is_file()]
    if missing:
        raise DataError(f"{listing}: {len(missing)} listed image(s) not found, e.g. "
                        f"{', '.join(str(m) for m in missing[:3])}; is the download complete?")
    kept = [(f, label) for f, label in files if readable(f)]
    return Samples(labels=[label for _, label in kept], paths=[f for f, _ in kept])


def _held_out(folder: Path, layout: str, ids: list[str], names: list[str], train: Samples,
              test: Samples | None, val_fraction: float, seed: int, readable: HeaderCheck) -> DatasetIndex:
    """train minus a val_fraction held out per class; the published test kept as test."""
    splits = dict(zip(("train", "val"), stratified_split(train, val_fraction, seed), strict=True))
    if test is not None:
        splits["test"] = test
    return DatasetIndex(root=folder, layout=layout, class_ids=ids, class_names=names,
                        splits=splits, skipped=readable.skipped)
