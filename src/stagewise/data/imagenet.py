"""ImageNet-family layouts whose classes are WordNet ids (wnids, e.g. n01440764).

- Imagenette / Imagewoof (`imagenette2`, `-160`, `-320`): train/ and val/ with the 10 wnid folders.
- ImageNet-1k (and ImageNet-mini or any wnid subset): `train/<wnid>/`; `val/` either in wnid
  folders or flat, labelled by `LOC_val_solution.csv` (the Kaggle release) or by the devkit's
  `ILSVRC2012_validation_ground_truth.txt`, whose numbers are ILSVRC2012_IDs in the devkit's own
  synset order (read from its `meta.mat`), not the sorted-wnid order models use.

Class ids are the wnids (sorted); display names are the first WordNet lemma ("tench"), from
`LOC_synset_mapping.txt` when the dataset ships one, otherwise from timm's ImageNet tables.
"""

from __future__ import annotations

import csv
import re
from functools import lru_cache
from pathlib import Path
from typing import cast

from ..errors import DataError
from .folder import class_dirs, read_folder, scan_folder, stratified_split
from .images import HeaderCheck, is_image_file
from .index import DatasetIndex, Samples
from .progress import Advance

WNID = re.compile(r"^n\d{8}$")

# The class sets identify the two fastai subsets (names come from timm, not from here).
IMAGENETTE_WNIDS = frozenset({
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
})
IMAGEWOOF_WNIDS = frozenset({
    "n02086240", "n02087394", "n02088364", "n02089973", "n02093754",
    "n02096294", "n02099601", "n02105641", "n02111889", "n02115641",
})

VAL_SOLUTION = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12") / "data"


@lru_cache(maxsize=1)
def _timm_lemmas() -> dict[str, str]:
    # timm's wnid -> lemma table read as a file: importing timm costs seconds (minutes on a busy
    # machine), which indexing would otherwise pay for display names alone.
    import importlib.util

    spec = importlib.util.find_spec("timm")  # finds the package without running its __init__
    for folder in (spec.submodule_search_locations or []) if spec else []:
        table = Path(folder) / "data" / "_info" / "imagenet_synset_to_lemma.txt"
        if table.is_file():
            pairs = (line.split("\t", 1) for line in table.read_text().splitlines() if "\t" in line)
            return {w: text.strip() for w, text in pairs}
    from timm.data import ImageNetInfo

    # The 22k table is a superset of the 1k classes, so wnid subsets of ImageNet-21k get names too.
    # as_dict=True returns the wnid -> description dict; timm annotates both modes' union.
    return cast(dict[str, str], ImageNetInfo("imagenet-22k").label_descriptions(as_dict=True))


def first_lemma(description: str) -> str:
    """'English springer, English springer spaniel' -> 'English springer'."""
    return description.split(",")[0].strip()


def wnid_names(wnids: list[str], mapping: dict[str, str] | None = None) -> list[str]:
    """Display names for wnids: from `mapping` (the dataset's own file) first, then timm's tables."""
    lemmas = _timm_lemmas()
    names = []
    for w in wnids:
        text = (mapping or {}).get(w) or lemmas.get(w)
        names.append(first_lemma(text) if text else w)
    return names


def train_wnids(train: Path) -> list[str]:
    """The wnid class folders of `train` ([] if any class folder is not a wnid)."""
    if not train.is_dir():
        return []
    ids = [p.name for p in class_dirs(train)]
    return ids if ids and all(WNID.match(i) for i in ids) else []


def data_root(root: Path) -> Path:
    """Where train/ and val/ live: `root`, or the Kaggle release's ILSVRC/Data/CLS-LOC."""
    kaggle = root / "ILSVRC" / "Data" / "CLS-LOC"
    return kaggle if kaggle.is_dir() else root


def subset_name(wnids: list[str]) -> str | None:
    """'imagenette' or 'imagewoof' when the class set is exactly one of theirs."""
    found = set(wnids)
    if found == IMAGENETTE_WNIDS:
        return "imagenette"
    if found == IMAGEWOOF_WNIDS:
        return "imagewoof"
    return None


def read_imagenette(root: Path, val_fraction: float = 0.2, seed: int = 0,
                    advance: Advance | None = None) -> DatasetIndex:
    """Imagenette or Imagewoof: an image folder with wnid classes and built-in human names."""
    index = read_folder(root, val_fraction, seed, advance)
    if not all(WNID.match(c) for c in index.class_ids):
        raise DataError(
            f"{root}: Imagenette/Imagewoof class folders are wnids (n01440764, ...), found "
            f"{', '.join(index.class_ids[:5])}; use format: folder for other class names"
        )
    index.layout = subset_name(index.class_ids) or "imagenette"
    index.class_names = wnid_names(index.class_ids)
    return index


def read_imagenet(root: Path, val_fraction: float = 0.2, seed: int = 0,
                  advance: Advance | None = None) -> DatasetIndex:
    """ImageNet-1k, ImageNet-mini or any wnid subset (see the module docstring for val/)."""
    root = Path(root)
    base = data_root(root)
    ids = train_wnids(base / "train")
    if not ids:
        raise DataError(
            f"{base / 'train'}: expected one folder per wnid (train/n01440764/*.JPEG, ...); "
            "use format: folder for other class names"
        )
    readable = HeaderCheck(advance)
    splits = {"train": scan_folder(base / "train", ids, readable)}
    val = base / "val"
    if val.is_dir() and any(WNID.match(p.name) for p in class_dirs(val)):
        extra = sorted({p.name for p in class_dirs(val)} - set(ids))
        if extra:
            raise DataError(f"{val}: class folder(s) not in train/: {', '.join(extra[:10])}")
        splits["val"] = scan_folder(val, ids, readable)
    elif val.is_dir() and any(is_image_file(p) for p in val.iterdir()):
        splits["val"] = _flat_val(root, base, val, ids, readable)
    else:
        splits["train"], splits["val"] = stratified_split(splits["train"], val_fraction, seed)
    mapping = _synset_mapping(root, base)
    return DatasetIndex(root=root, layout="imagenet", class_ids=ids,
                        class_names=wnid_names(ids, mapping), splits=splits,
                        skipped=readable.skipped)


def _find(root: Path, base: Path, name: str) -> Path | None:
    for folder in (root, base, root / DEVKIT_DATA, base / DEVKIT_DATA, base / "val"):
        if (folder / name).is_file():
            return folder / name
    return None


def _synset_mapping(root: Path, base: Path) -> dict[str, str]:
    path = _find(root, base, SYNSET_MAPPING)
    if path is None:
        return {}
    pairs = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
    return {p[0]: p[1] if len(p) > 1 else p[0] for p in pairs}


def _flat_val(root: Path, base: Path, val: Path, ids: list[str], readable: HeaderCheck) -> Samples:
    """Label a flat val/ folder from the Kaggle solution file or the devkit ground truth."""
    solution = _find(root, base, VAL_SOLUTION)
    truth = _find(root, base, GROUND_TRUTH)
    if solution is not None:
        wnid_of = _read_val_solution(solution)
        source = solution
    elif truth is not None:
        wnid_of = _read_ground_truth(truth)
        source = truth
    else:
        raise DataError(
            f"{val}: images are not in wnid folders and no labels were found; put "
            f"{VAL_SOLUTION} (Kaggle) or {DEVKIT_DATA / GROUND_TRUTH} with meta.mat (devkit) "
            f"in {root}, or sort val/ into val/<wnid>/ folders"
        )
    label_of = {w: i for i, w in enumerate(ids)}
    paths, labels, unlabelled, unknown = [], [], [], set()
    for f in sorted(p for p in val.iterdir() if p.is_file() and is_image_file(p)):
        wnid = wnid_of.get(f.stem)
        if wnid is None:
            unlabelled.append(f.name)
        elif wnid not in label_of:
            unknown.add(wnid)
        elif readable(f):
            paths.append(f)
            labels.append(label_of[wnid])
    if unlabelled:
        raise DataError(f"{source}: no label for {len(unlabelled)} val image(s), e.g. "
                        f"{', '.join(unlabelled[:3])}; is it the file for this val/ folder?")
    if unknown:
        raise DataError(f"{source}: val labels name class(es) with no train/ folder: "
                        f"{', '.join(sorted(unknown)[:10])}")
    return Samples(labels=labels, paths=paths)


def _read_val_solution(path: Path) -> dict[str, str]:
    """ImageId -> wnid; PredictionString is 'wnid x0 y0 x1 y1 [wnid ...]' (one class per image)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"ImageId", "PredictionString"} <= set(rows[0]):
        raise DataError(f"{path}: expected the header ImageId,PredictionString")
    return {r["ImageId"]: r["PredictionString"].split()[0] for r in rows if r["PredictionString"]}


def _read_ground_truth(path: Path) -> dict[str, str]:
    """Line i holds the ILSVRC2012_ID of ILSVRC2012_val_{i:08d}; the devkit's meta.mat maps ids."""
    meta = path.parent / "meta.mat"
    if not meta.is_file():
        raise DataError(
            f"{path}: the numbers are ILSVRC2012_IDs in the devkit's synset order; put the "
            f"devkit's meta.mat next to it ({meta})"
        )
    order = devkit_synsets(meta)
    out = {}
    for i, line in enumerate(path.read_text().split(), start=1):
        if int(line) not in order:
            raise DataError(f"{path}: line {i}: ILSVRC2012_ID {line} is not a class in {meta}")
        out[f"ILSVRC2012_val_{i:08d}"] = order[int(line)]
    return out


def devkit_synsets(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid for the leaf classes of the devkit's meta.mat."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{meta}: reading the devkit's meta.mat needs scipy; pip install scipy, "
                        f"or use {VAL_SOLUTION} / val/<wnid>/ folders instead") from None
    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{meta}: not the ILSVRC2012 devkit's meta.mat ({exc})") from None
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
