"""Image-folder layout: `root/{train,val[,test]}/<class>/*` or `root/<class>/*` split by fraction."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import IMAGE_SUFFIXES, HeaderCheck
from .index import DatasetIndex, Samples
from .progress import Advance
from .table import LabelArray, PathTable, pack_strings, relative_strings

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"valid": "val", "validation": "val"}


def split_dirs(root: Path) -> dict[str, Path]:
    """train/val/test sub-folders of `root` (with common aliases), if it has that layout.

    Without train/ the layout counts only when every sub-folder is a split (say val/ alone, which
    `evaluate` can use and training refuses with the layout it expects). A split folder beside
    class folders is refused: read as classes, val/ would silently become a class named "val".
    """
    found: dict[str, Path] = {}
    others: list[Path] = []
    for child in class_dirs(root):
        name = _SPLIT_ALIASES.get(child.name.lower(), child.name.lower())
        if name not in SPLIT_NAMES:
            others.append(child)
        elif name not in found:
            found[name] = child
    if "train" in found or not found:
        return found
    if others:
        splits = ", ".join(f"{p.name}/" for p in found.values())
        classes = ", ".join(f"{p.name}/" for p in others[:5])
        raise DataError(
            f"{root}: holds {splits} beside class folders ({classes}) but no train/ folder; use "
            f"{root}/train/<class>/ and {root}/val/<class>/, or class folders only (no split "
            "folders) to hold out val_fraction of them"
        )
    return found


def class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folder(folder: Path, class_ids: list[str], readable: HeaderCheck,
                recursive: bool = True) -> Samples:
    """Files under `folder/<class id>/` that pass `readable` (which keeps the others)."""
    if readable.listing:  # no check to run: the names alone, stored as arrays (no Path objects)
        return _listed(folder, class_ids, readable, recursive)
    paths: list[Path] = []
    labels: list[int] = []
    for label, cid in enumerate(class_ids):
        d = folder / cid
        if not d.is_dir():
            continue
        for f in files_under(d, recursive):
            if readable(f):
                paths.append(f)
                labels.append(label)
    return Samples(labels=labels, paths=paths)


def _listed(folder: Path, class_ids: list[str], readable: HeaderCheck, recursive: bool) -> Samples:
    names: list[str] = []
    labels: list[int] = []
    for label, cid in enumerate(class_ids):
        d = os.path.join(folder, cid)
        if os.path.isdir(d):
            found = names_under(d, cid, recursive)
            readable.count(len(found))
            names += found
            labels += [label] * len(found)
    return Samples(labels=LabelArray(labels), paths=PathTable(folder, *pack_strings(names)))


def names_under(folder: str, prefix: str, recursive: bool = True) -> list[str]:
    """`files_under` as '/'-joined names relative to `folder`'s parent, each starting `prefix/`."""
    out: list[str] = []
    with os.scandir(folder) as it:
        entries = {e.name: e for e in it}
    head = prefix + "/"
    for name in sorted(entries):  # the hot loop of indexing: `_image_name` inlined
        e = entries[name]
        if e.is_dir(follow_symlinks=False):
            if recursive:
                out += names_under(e.path, head + name, recursive)
        elif (name[0] != "." and name[name.rfind("."):].lower() in IMAGE_SUFFIXES
              and "." in name and e.is_file()):
            out.append(head + name)
    return out


def files_under(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder` in the order `sorted(folder.rglob("*"))` gives them (by path
    parts: each folder's entries by name, a sub-folder's files at its name's place).

    `os.scandir` entries know their type from the directory listing, so this costs no system
    call per file; `rglob` + `is_file` cost three. Like `rglob`, it does not descend into
    symbolic links to folders; a symbolic link to a file counts as that file.
    """
    out: list[Path] = []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if recursive:
                out += files_under(Path(e.path), recursive)
        elif _image_name(e.name) and e.is_file():
            out.append(Path(e.path))
    return out


def _image_name(name: str) -> bool:
    """`is_image_file` on a bare name (no Path object per listed file)."""
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES and not name.startswith(".")


def read_folder(root: Path, val_fraction: float = 0.2, seed: int = 0,
                advance: Advance | None = None) -> DatasetIndex:
    """Index an image folder. Class ids are the folder names; display names default to them.

    `advance(1)` is called per file checked (a progress bar's tick).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    splits_found = split_dirs(root)
    readable = HeaderCheck(advance)
    if splits_found:
        ids = _split_class_ids(splits_found)
        splits = {name: scan_folder(d, ids, readable) for name, d in splits_found.items()}
        if "val" not in splits and "train" in splits:
            splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, seed)
    else:
        ids = [p.name for p in class_dirs(root)]
        if not ids:
            raise DataError(
                f"{root}: expected class sub-folders (root/<class>/*.jpg) or train/ and val/ folders"
            )
        everything = scan_folder(root, ids, readable)
        train, val = stratified_split(everything, val_fraction, seed)
        splits = {"train": train, "val": val}
    return DatasetIndex(root=root, layout="folder", class_ids=ids, class_names=list(ids),
                        splits=splits, skipped=readable.skipped)


def _split_class_ids(splits: dict[str, Path]) -> list[str]:
    """Class ids from train/ (or, without it, the first split), checked against the others."""
    first = splits.get("train") or next(iter(splits.values()))
    ids = [p.name for p in class_dirs(first)]
    if not ids:
        raise DataError(f"{first}: no class folders found")
    _check_same_classes(splits, first, ids)
    return ids


def _check_same_classes(splits: dict[str, Path], first: Path, ids: list[str]) -> None:
    for name, d in splits.items():
        if d == first:
            continue
        other = [p.name for p in class_dirs(d)]
        extra = sorted(set(other) - set(ids))
        missing = sorted(set(ids) - set(other))
        if extra:
            raise DataError(
                f"{d}: class folder(s) not in {first.name}/: {', '.join(extra[:10])}; every class "
                "must have training images"
            )
        if missing and name == "val":
            raise DataError(
                f"{d}: class folder(s) missing from {name}/: {', '.join(missing[:10])}; add them or "
                f"remove the class from {first.name}/"
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


def split_counts(n: int, val: float, test: float) -> tuple[int, int]:
    """(val, test) counts for a class of `n` items: round(n * fraction), at least 1 each while
    the class has items to spare, and never the class's last training item."""
    k_val = max(1, round(n * val)) if n > 1 else 0
    k_test = max(1, round(n * test)) if test > 0 and n > 2 else 0
    while k_val + k_test > n - 1 and (k_val > 1 or k_test > 0):
        # Rounding up two small shares can leave no training item: give back test's first.
        if k_test >= k_val and k_test > 0:
            k_test -= 1
        else:
            k_val -= 1
    return k_val, k_test


def stratified_fractions(samples: Samples, fractions: list[float], seed: int) -> dict[str, Samples]:
    """train/val[/test] by `fractions` ([train, val] or [train, val, test]), per class, seeded."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(samples.labels):
        by_class.setdefault(label, []).append(i)
    test = fractions[2] if len(fractions) == 3 else 0.0
    chosen: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        idx = by_class[label][:]
        rng.shuffle(idx)
        k_val, k_test = split_counts(len(idx), fractions[1], test)
        chosen["val"] += idx[:k_val]
        chosen["test"] += idx[k_val:k_val + k_test]
        chosen["train"] += idx[k_val + k_test:]
    names = ("train", "val", "test") if len(fractions) == 3 else ("train", "val")
    return {name: samples.subset(sorted(chosen[name])) for name in names}


def resplit(index: DatasetIndex, fractions: list[float], seed: int) -> DatasetIndex:
    """`index` re-split by `fractions`: the config's `split:` for a folder of class folders.

    Only where the reader made the split itself (class folders, or train/ alone): a dataset's
    own val/ or test/ folders are the split its authors meant, so `split:` beside them is refused.
    """
    given = set(split_dirs(index.root)) - {"train"} if index.layout == "folder" else set()
    if index.layout != "folder" or given:
        what = ", ".join(f"{g}/" for g in sorted(given)) or f"the {index.layout} layout's own splits"
        raise DataError(f"split: {index.root} already has {what}; remove split: to use them, or "
                        "use a folder of class folders (or train/ alone) to split by fractions")
    # The reader held out val_fraction: put it back, in path order so the split is seeded alone.
    pairs = sorted((p, lab) for s in index.splits.values() for p, lab
                   in zip(s.paths or [], s.labels, strict=True))
    everything = Samples(labels=[lab for _, lab in pairs], paths=[p for p, _ in pairs])
    return DatasetIndex(root=index.root, layout=index.layout, class_ids=index.class_ids,
                        class_names=index.class_names, skipped=index.skipped,
                        splits=stratified_fractions(everything, fractions, seed))


def save_split(index: DatasetIndex, path: Path) -> None:
    """Record which files went to which split, so a resumed or repeated run uses the same split.

    `.npz` (what a stage writes): per split the root-relative paths as one UTF-8 blob + offsets
    and int32 labels, ~10x smaller than the JSON list and read back without a Python object per
    file. `.json`: the older format (a list of paths per split), still read by `load_split`.
    """
    from ..io import write_json, write_with

    listed = {name: s.compact(index.root) for name, s in index.splits.items() if s.paths is not None}
    if path.suffix != ".npz":
        write_json(path, {"root": str(index.root), "class_ids": index.class_ids,
                          "splits": {name: s.paths.strings() for name, s in listed.items()}})  # type: ignore[union-attr]
        return
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(
        {"root": str(index.root), "class_ids": index.class_ids, "splits": list(listed)}).encode(),
        dtype=np.uint8)}
    for name, s in listed.items():
        table, labels = s.paths, s.labels
        assert isinstance(table, PathTable) and isinstance(labels, LabelArray)
        arrays[f"{name}.blob"], arrays[f"{name}.offsets"] = table.blob, table.offsets
        arrays[f"{name}.labels"] = labels.array

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]

    write_with(path, save)


def load_split(index: DatasetIndex, path: Path) -> DatasetIndex:
    """Re-apply a saved split to a freshly scanned index (files that vanished are dropped)."""
    if Path(path).suffix == ".npz":
        return _load_split_arrays(index, Path(path))
    data = json.loads(Path(path).read_text())
    _same_classes(index, data["class_ids"], path)
    label_of = _labels_by_path(index)
    splits = {}
    for name, rels in data["splits"].items():
        kept = [label_of[r] for r in rels if r in label_of]
        splits[name] = Samples(labels=[lab for _, lab in kept], paths=[index.root / r for r, _ in kept])
    return _with_splits(index, splits)


def _load_split_arrays(index: DatasetIndex, path: Path) -> DatasetIndex:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    _same_classes(index, meta["class_ids"], path)
    saved = {name: Samples(labels=LabelArray(arrays[f"{name}.labels"]), paths=PathTable(
        index.root, arrays[f"{name}.blob"], arrays[f"{name}.offsets"])) for name in meta["splits"]}
    fresh = {name: s.compact(index.root) for name, s in index.splits.items() if s.paths is not None}
    if saved.keys() == fresh.keys() and all(
            saved[n].paths.same_as(fresh[n].paths) and saved[n].labels == fresh[n].labels  # type: ignore[union-attr]
            for n in saved):
        return _with_splits(index, fresh, keep_checks=True)  # the usual resume: nothing changed
    # The folder changed since the run started: keep the saved files that are still there.
    label_of = _labels_by_path(index)
    splits = {}
    for name, s in saved.items():
        rels = s.paths.strings()  # type: ignore[union-attr]
        kept = [i for i, r in enumerate(rels) if r in label_of]
        splits[name] = Samples(labels=LabelArray([label_of[rels[i]][1] for i in kept]),
                               paths=s.paths.take(kept))  # type: ignore[union-attr]
    return _with_splits(index, splits)


def _same_classes(index: DatasetIndex, saved: list[str], path: Path) -> None:
    if saved != index.class_ids:
        raise DataError(
            f"{path}: the saved run used classes {saved[:10]}, the data folder now has "
            f"{index.class_ids[:10]}; resume with the original data or start a new run"
        )


def _labels_by_path(index: DatasetIndex) -> dict[str, tuple[str, int]]:
    """root-relative path -> (that path, its label) over every split of `index`."""
    out: dict[str, tuple[str, int]] = {}
    for s in index.splits.values():
        if s.paths is None:  # array splits have no paths
            continue
        rels = s.paths.strings() if isinstance(s.paths, PathTable) else relative_strings(index.root, s.paths)
        out.update((r, (r, lab)) for r, lab in zip(rels, s.labels, strict=True))
    return out


def _with_splits(index: DatasetIndex, splits: dict[str, Samples], keep_checks: bool = False) -> DatasetIndex:
    """`index` with `splits`; what indexing checked per split holds only for the same splits."""
    return DatasetIndex(root=index.root, layout=index.layout, class_ids=index.class_ids,
                        class_names=index.class_names, splits=splits, skipped=index.skipped,
                        eval_ids=index.eval_ids, verified=index.verified if keep_checks else None,
                        val_bad=index.val_bad if keep_checks else None,
                        skipped_per_split=index.skipped_per_split if keep_checks else None)
