"""CSV manifest: a header `path,label[,split]`, one image per row.

Paths are relative to the CSV file's folder (absolute paths are kept). Without a split column, or
with no val rows, val is held out per class by `val_fraction`. Class ids are the labels, sorted.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DataError
from .folder import stratified_split
from .images import HeaderCheck
from .index import DatasetIndex, Samples
from .progress import Advance

REQUIRED = ("path", "label")
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="") as f:
            return [h.strip().lower() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError):
        return []


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() == ".csv" and set(REQUIRED) <= set(_header(path))


def find_manifest(root: Path) -> Path | None:
    """`root` itself when it is a .csv, else the one manifest CSV in the folder (None if none)."""
    if root.is_file():
        return root if root.suffix.lower() == ".csv" else None
    found = sorted(p for p in root.glob("*.csv") if is_manifest(p))
    if len(found) > 1:
        raise DataError(f"{root}: several CSV manifests ({', '.join(p.name for p in found)}); "
                        "point data: at the one to use")
    return found[0] if found else None


def read_csv_manifest(root: Path, val_fraction: float = 0.2, seed: int = 0,
                      advance: Advance | None = None) -> DatasetIndex:
    """Index the images a manifest lists (see the module docstring)."""
    manifest = find_manifest(Path(root))
    if manifest is None:
        raise DataError(f"{root}: no CSV manifest with a header line path,label[,split] found")
    rows = _rows(manifest)
    ids = sorted({label for _, label, _ in rows})
    label_of = {c: i for i, c in enumerate(ids)}
    base = manifest.parent
    by_split: dict[str, tuple[list[Path], list[int]]] = {}
    missing: list[str] = []
    readable = HeaderCheck(advance)
    for rel, label, split in rows:
        f = Path(rel) if Path(rel).is_absolute() else base / rel
        if not f.is_file():
            missing.append(rel)
        elif readable(f):
            paths, labels = by_split.setdefault(split, ([], []))
            paths.append(f)
            labels.append(label_of[label])
    if missing:
        raise DataError(f"{manifest}: {len(missing)} listed file(s) not found (paths are relative "
                        f"to {base}), e.g. {', '.join(missing[:3])}")
    splits = {name: Samples(labels=lab, paths=p) for name, (p, lab) in by_split.items()}
    if "train" not in splits:
        raise DataError(f"{manifest}: no rows in the train split")
    if "val" not in splits:
        splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, seed)
    return DatasetIndex(root=base, layout="csv", class_ids=ids, class_names=list(ids),
                        splits=splits, skipped=readable.skipped)


def _rows(manifest: Path) -> list[tuple[str, str, str]]:
    """(path, label, split) per row, with line numbers in every error."""
    with manifest.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        col = {name: header.index(name) for name in (*REQUIRED, "split") if name in header}
        if not all(name in col for name in REQUIRED):
            raise DataError(f"{manifest}: the first line must be the header path,label[,split]; "
                            f"got {','.join(header) or 'nothing'}")
        rows = []
        for n, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise DataError(f"{manifest}: line {n}: expected {len(header)} columns "
                                f"({','.join(header)}), got {len(row)}")
            path, label = row[col["path"]].strip(), row[col["label"]].strip()
            if not path or not label:
                raise DataError(f"{manifest}: line {n}: empty path or label")
            raw = row[col["split"]].strip().lower() if "split" in col else "train"
            if raw not in _SPLITS:
                raise DataError(f"{manifest}: line {n}: unknown split {raw!r}; use train, val or test")
            rows.append((path, label, _SPLITS[raw]))
    if not rows:
        raise DataError(f"{manifest}: no rows after the header")
    return rows
