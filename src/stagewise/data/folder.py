"""Image-folder layout: `root/{train,val[,test]}/<class>/*` or `root/<class>/*` split by fraction."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import DataError
from .images import header_ok, is_image_file
from .index import DatasetIndex, Samples

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"valid": "val", "validation": "val"}


def split_dirs(root: Path) -> dict[str, Path]:
    """train/val/test sub-folders of `root` (with common aliases), if it has that layout."""
    found: dict[str, Path] = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        name = _SPLIT_ALIASES.get(child.name.lower(), child.name.lower())
        if name in SPLIT_NAMES and name not in found:
            found[name] = child
    return found if "train" in found else {}


def class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folder(
    folder: Path, class_ids: list[str], skipped: list[str], recursive: bool = True
) -> Samples:
    """Files under `folder/<class id>/`, header-checked; unreadable ones go to `skipped`."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, cid in enumerate(class_ids):
        d = folder / cid
        if not d.is_dir():
            continue
        files = sorted(d.rglob("*") if recursive else d.iterdir())
        for f in files:
            if not f.is_file() or not is_image_file(f):
                continue
            if header_ok(f):
                paths.append(f)
                labels.append(label)
            else:
                skipped.append(str(f))
    return Samples(labels=labels, paths=paths)


def read_folder(root: Path, val_fraction: float = 0.2, seed: int = 0) -> DatasetIndex:
    """Index an image folder. Class ids are the folder names; display names default to them."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    splits_found = split_dirs(root)
    skipped: list[str] = []
    if splits_found:
        ids = [p.name for p in class_dirs(splits_found["train"])]
        if not ids:
            raise DataError(f"{splits_found['train']}: no class folders found")
        _check_same_classes(splits_found, ids)
        splits = {name: scan_folder(d, ids, skipped) for name, d in splits_found.items()}
        if "val" not in splits:
            splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, seed)
    else:
        ids = [p.name for p in class_dirs(root)]
        if not ids:
            raise DataError(
                f"{root}: expected class sub-folders (root/<class>/*.jpg) or train/ and val/ folders"
            )
        everything = scan_folder(root, ids, skipped)
        train, val = stratified_split(everything, val_fraction, seed)
        splits = {"train": train, "val": val}
    return DatasetIndex(root=root, layout="folder", class_ids=ids, class_names=list(ids),
                        splits=splits, skipped=skipped)


def _check_same_classes(splits: dict[str, Path], ids: list[str]) -> None:
    for name, d in splits.items():
        if name == "train":
            continue
        other = [p.name for p in class_dirs(d)]
        extra = sorted(set(other) - set(ids))
        missing = sorted(set(ids) - set(other))
        if extra:
            raise DataError(
                f"{d}: class folder(s) not in train/: {', '.join(extra[:10])}; every class must "
                "have training images"
            )
        if missing and name == "val":
            raise DataError(
                f"{d}: class folder(s) missing from {name}/: {', '.join(missing[:10])}; add them or "
                "remove the class from train/"
            )


def stratified_split(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Per class, hold out round(n * fraction) items (at least 1 when the class has 2+)."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(samples.labels):
        by_class.setdefault(label, []).append(i)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in sorted(by_class):
        idx = by_class[label][:]
        rng.shuffle(idx)
        k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        val_idx += idx[:k]
        train_idx += idx[k:]
    return samples.subset(sorted(train_idx)), samples.subset(sorted(val_idx))


def save_split(index: DatasetIndex, path: Path) -> None:
    """Record which files went to which split, so a resumed or repeated run uses the same split."""
    from ..io import write_json

    data = {
        "root": str(index.root),
        "class_ids": index.class_ids,
        "splits": {
            name: [str(p.relative_to(index.root)) if p.is_relative_to(index.root) else str(p)
                   for p in s.paths]
            for name, s in index.splits.items() if s.paths is not None
        },
    }
    write_json(path, data)


def load_split(index: DatasetIndex, path: Path) -> DatasetIndex:
    """Re-apply a saved split to a freshly scanned index (files that vanished are dropped)."""
    data = json.loads(Path(path).read_text())
    if data["class_ids"] != index.class_ids:
        raise DataError(
            f"{path}: the saved run used classes {data['class_ids'][:10]}, the data folder now has "
            f"{index.class_ids[:10]}; resume with the original data or start a new run"
        )
    label_of: dict[str, tuple[Path, int]] = {}
    for s in index.splits.values():
        for p, lab in zip(s.paths or [], s.labels, strict=False):  # array splits have no paths
            rel = str(p.relative_to(index.root)) if p.is_relative_to(index.root) else str(p)
            label_of[rel] = (p, lab)
    splits = {}
    for name, rels in data["splits"].items():
        kept = [label_of[r] for r in rels if r in label_of]
        splits[name] = Samples(labels=[lab for _, lab in kept], paths=[p for p, _ in kept])
    return DatasetIndex(root=index.root, layout=index.layout, class_ids=index.class_ids,
                        class_names=index.class_names, splits=splits, skipped=index.skipped)
