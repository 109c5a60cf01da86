"""Tiny ImageNet (`tiny-imagenet-200`): 200 wnid classes of 64 px images.

    wnids.txt                       the class wnids
    words.txt                       wnid <tab> names, for every WordNet synset
    train/<wnid>/images/*.JPEG      (plus <wnid>_boxes.txt, ignored)
    val/images/*.JPEG               labelled only by val/val_annotations.txt
    test/images/*.JPEG              unlabelled: ignored

The val images all sit in one folder, so their labels must come from the annotations file, never
from file or folder order. A val/ already sorted into val/<wnid>/ folders is read by folder name.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .folder import class_dirs, scan_folder
from .imagenet import first_lemma, wnid_names
from .images import HeaderCheck
from .index import DatasetIndex, Samples
from .progress import Advance

ANNOTATIONS = Path("val") / "val_annotations.txt"


def is_tiny_imagenet(root: Path) -> bool:
    return (root / "wnids.txt").is_file() and (root / "train").is_dir()


def read_tiny_imagenet(root: Path, val_fraction: float = 0.2, seed: int = 0,
                       advance: Advance | None = None) -> DatasetIndex:
    """Index Tiny ImageNet; `val_fraction` and `seed` are unused (the val split is given)."""
    root = Path(root)
    if not is_tiny_imagenet(root):
        raise DataError(f"{root}: not Tiny ImageNet; expected wnids.txt and train/<wnid>/images/")
    ids = sorted({line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip()})
    if not ids:
        raise DataError(f"{root / 'wnids.txt'}: no class ids listed")
    readable = HeaderCheck(advance)
    splits = {"train": scan_folder(root / "train", ids, readable)}
    if (root / ANNOTATIONS).is_file():
        splits["val"] = _annotated_val(root, ids, readable)
    elif (root / "val").is_dir() and class_dirs(root / "val"):
        splits["val"] = scan_folder(root / "val", ids, readable)
    else:
        raise DataError(f"{root / ANNOTATIONS}: not found; Tiny ImageNet's val labels come from it")
    return DatasetIndex(root=root, layout="tiny-imagenet", class_ids=ids,
                        class_names=wnid_names(ids, _words(root)), splits=splits, skipped=readable.skipped)


def _words(root: Path) -> dict[str, str]:
    path = root / "words.txt"
    if not path.is_file():
        return {}
    pairs = (line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)
    return {wnid.strip(): first_lemma(text) for wnid, text in pairs}


def _annotated_val(root: Path, ids: list[str], readable: HeaderCheck) -> Samples:
    """val/images/<file> labelled by the annotations' 'file <tab> wnid <tab> box...' lines."""
    path = root / ANNOTATIONS
    label_of = {w: i for i, w in enumerate(ids)}
    paths, labels, missing = [], [], []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{path}: line {n}: expected 'file<TAB>wnid<TAB>box', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise DataError(f"{path}: line {n}: class {wnid} is not in wnids.txt")
        f = root / "val" / "images" / name
        if not f.is_file():
            missing.append(name)
        elif readable(f):
            paths.append(f)
            labels.append(label_of[wnid])
    if missing:
        raise DataError(f"{path}: {len(missing)} listed image(s) not in {root / 'val' / 'images'}, "
                        f"e.g. {', '.join(missing[:3])}")
    return Samples(labels=labels, paths=paths)
