"""A tiny fake copy of the four ImageNet-family layouts the `imagenet-progressive` preset reads.

`generate_family(out)` writes, under `out`, the folders that preset's `data_root` holds, each in
the real dataset's own layout (so `format: auto` detects it as the real one would be):

    imagenette2/        train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (Imagenette's 10 wnids)
    tiny-imagenet-200/  wnids.txt, words.txt, train/<wnid>/images/*.JPEG + <wnid>_boxes.txt,
                        val/images/*.JPEG + val/val_annotations.txt, test/images/*.JPEG
    imagenet-mini/      train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (the Kaggle imagenet-mini layout)
    imagenet/           ILSVRC/Data/CLS-LOC/{train/<wnid>/,val/,test/}*.JPEG with a flat val/
                        labelled by LOC_val_solution.csv, and LOC_synset_mapping.txt (the Kaggle
                        ILSVRC release)

Class ids are real ImageNet-1k wnids (timm's bundled table, no download). The class list is
Imagenette's 10 wnids followed by `classes - 10` more spread evenly over the other 990; Tiny
ImageNet takes its first min(classes, 200), ImageNet-mini and ImageNet all `classes`. So every
later stage holds the earlier stages' classes and the head handoff by class id is exercised.

Each class has one look (a shape, a foreground and a background colour, from its place in that
list) in all four folders, with jittered position, size, rotation and colour plus pixel noise:
separable enough that a tiny model learns something. Deterministic by seed.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .imagenet import IMAGENETTE_WNIDS, SYNSET_MAPPING, VAL_SOLUTION
from .synth import CLASS_ORDER, SHAPES, _grid

FOLDERS = ("imagenette2", "tiny-imagenet-200", "imagenet-mini", "imagenet")
TINY_MAX = 200
MIN_CLASSES = len(IMAGENETTE_WNIDS) + 1  # exactly Imagenette's 10 would be detected as Imagenette
MAX_CLASSES = 1000

# Bright foregrounds and dark backgrounds, so shape and colour both stay visible under jitter.
_FG = np.array([[0.95, 0.2, 0.2], [0.2, 0.9, 0.25], [0.25, 0.45, 1.0], [0.95, 0.9, 0.2],
                [0.9, 0.3, 0.95], [0.2, 0.9, 0.95], [0.98, 0.6, 0.15], [0.95, 0.95, 0.95]])
_BG = np.array([[0.1, 0.1, 0.1], [0.3, 0.05, 0.05], [0.05, 0.25, 0.05], [0.05, 0.05, 0.3],
                [0.25, 0.25, 0.05], [0.25, 0.05, 0.25], [0.05, 0.25, 0.25], [0.3, 0.15, 0.05],
                [0.15, 0.05, 0.3], [0.05, 0.3, 0.15], [0.3, 0.3, 0.3]])  # 12 * 8 * 11 >= 1000 looks


@lru_cache(maxsize=1)
def _imagenet_1k() -> tuple[tuple[str, ...], dict[str, str]]:
    """ImageNet-1k's wnids (sorted) and their WordNet descriptions, from timm's bundled tables."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    descriptions = info.label_descriptions(as_dict=True)
    assert isinstance(descriptions, dict)  # as_dict=True; timm's annotation also allows a list
    return tuple(info.label_names()), descriptions


def family_wnids(classes: int) -> list[str]:
    """Imagenette's 10 wnids (sorted), then `classes - 10` other ImageNet-1k wnids evenly spread."""
    if not MIN_CLASSES <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be {MIN_CLASSES} to {MAX_CLASSES}, got {classes}")
    first = sorted(IMAGENETTE_WNIDS)
    others = [w for w in _imagenet_1k()[0] if w not in IMAGENETTE_WNIDS]
    extra = classes - len(first)
    picks = [others[i * len(others) // extra] for i in range(extra)]
    return first + picks


def render_class(rank: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 HxWx3 image of the class at `rank` in `family_wnids` order."""
    yy, xx = _grid(size)
    shape = CLASS_ORDER[rank % len(CLASS_ORDER)]
    fg = _FG[(rank // len(CLASS_ORDER)) % len(_FG)]
    bg = _BG[(rank // (len(CLASS_ORDER) * len(_FG))) % len(_BG)]
    img = np.broadcast_to(bg + rng.uniform(-0.05, 0.05, size=3), (size, size, 3)).astype(np.float32)
    r = rng.uniform(0.5, 0.75)
    cx, cy = rng.uniform(-0.2, 0.2, size=2) * (1 - r)
    theta = np.deg2rad(rng.uniform(-12, 12))  # small: square/diamond and hbar/vbar stay distinct
    c, s = np.cos(theta), np.sin(theta)
    u = c * (xx - cx) + s * (yy - cy)
    v = -s * (xx - cx) + c * (yy - cy)
    mask = SHAPES[shape](u, v, np.sqrt(u**2 + v**2), r)
    img[mask] = fg + rng.uniform(-0.08, 0.08, size=3)
    img = img + rng.normal(0, 0.04, size=img.shape).astype(img.dtype)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


class _Writer:
    """Draws and saves the images of one folder; each from its own generator, so order-free."""

    def __init__(self, seed: int, folder_index: int, size: int, ranks: dict[str, int]) -> None:
        self.seed, self.folder_index, self.size, self.ranks = seed, folder_index, size, ranks
        self.files = 0

    def save(self, path: Path, split: int, wnid: str, i: int) -> None:
        rng = np.random.default_rng([self.seed, self.folder_index, split, self.ranks[wnid], i])
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render_class(self.ranks[wnid], self.size, rng)).save(path, quality=90)
        self.files += 1


def generate_family(out: Path, classes: int = 20, per_class: int = 8, size: int = 64,
                    seed: int = 0) -> list[Path]:
    """Write the four folders (see the module docstring) under `out`; returns them in stage order.

    `per_class` train images per class; val gets max(2, per_class // 2) per class; the unlabelled
    test/ folders of Tiny ImageNet and ImageNet one image per class. Images are `size` px squares.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if not 8 <= size <= 512:
        raise ValueError(f"size must be 8 to 512 px, got {size}")
    wnids = family_wnids(classes)
    ranks = {w: i for i, w in enumerate(wnids)}
    n_val = max(2, per_class // 2)
    out = Path(out)
    sets = {"imagenette2": sorted(IMAGENETTE_WNIDS), "tiny-imagenet-200": sorted(wnids[:TINY_MAX]),
            "imagenet-mini": sorted(wnids), "imagenet": sorted(wnids)}
    folders = []
    for fi, name in enumerate(FOLDERS):
        folder = out / name
        write = _Writer(seed, fi, size, ranks)
        if name == "tiny-imagenet-200":
            _tiny(folder, sets[name], per_class, n_val, write)
        elif name == "imagenet":
            _kaggle_ilsvrc(folder, sets[name], per_class, n_val, write)
        else:
            _wnid_folders(folder, sets[name], per_class, n_val, write)
        folders.append(folder)
    return folders


def _val_name(n: int) -> str:
    return f"ILSVRC2012_val_{n:08d}.JPEG"


def _wnid_folders(folder: Path, wnids: list[str], per_class: int, n_val: int, write: _Writer) -> None:
    """Imagenette / ImageNet-mini: train/<wnid>/<wnid>_<i>.JPEG and val/<wnid>/ILSVRC2012_val_*.JPEG."""
    n = 0
    for wnid in wnids:
        for i in range(per_class):
            write.save(folder / "train" / wnid / f"{wnid}_{i}.JPEG", 0, wnid, i)
        for i in range(n_val):
            n += 1
            write.save(folder / "val" / wnid / _val_name(n), 1, wnid, i)


def _tiny(folder: Path, wnids: list[str], per_class: int, n_val: int, write: _Writer) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    size = write.size
    box = f"{size // 8}\t{size // 8}\t{size - size // 8 - 1}\t{size - size // 8 - 1}"
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    # The real words.txt lists every WordNet synset, far more than the classes: all of ImageNet-1k.
    descriptions = _imagenet_1k()[1]
    (folder / "words.txt").write_text("".join(f"{w}\t{d}\n" for w, d in descriptions.items()))
    annotations = []
    n = 0
    for wnid in wnids:
        boxes = []
        for i in range(per_class):
            file = f"{wnid}_{i}.JPEG"
            write.save(folder / "train" / wnid / "images" / file, 0, wnid, i)
            boxes.append(f"{file}\t{box}\n")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
        for i in range(n_val):
            file = f"val_{n}.JPEG"
            write.save(folder / "val" / "images" / file, 1, wnid, i)
            annotations.append(f"{file}\t{wnid}\t{box}\n")
            n += 1
    (folder / "val" / "val_annotations.txt").write_text("".join(annotations))
    for i, wnid in enumerate(wnids):
        write.save(folder / "test" / "images" / f"test_{i}.JPEG", 2, wnid, i)


def _kaggle_ilsvrc(folder: Path, wnids: list[str], per_class: int, n_val: int, write: _Writer) -> None:
    base = folder / "ILSVRC" / "Data" / "CLS-LOC"
    base.mkdir(parents=True, exist_ok=True)
    size = write.size
    rows = []
    n = 0
    for wnid in wnids:
        for i in range(per_class):
            write.save(base / "train" / wnid / f"{wnid}_{i}.JPEG", 0, wnid, i)
        for i in range(n_val):
            n += 1
            write.save(base / "val" / _val_name(n), 1, wnid, i)
            rows.append((_val_name(n).removesuffix(".JPEG"), f"{wnid} 0 0 {size - 1} {size - 1}"))
    for i, wnid in enumerate(wnids):
        write.save(base / "test" / f"ILSVRC2012_test_{i + 1:08d}.JPEG", 2, wnid, i)
    with (folder / VAL_SOLUTION).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        w.writerows(rows)
    # Kaggle's mapping lists all 1000 classes (sorted), not just the ones with train/ folders.
    descriptions = _imagenet_1k()[1]
    (folder / SYNSET_MAPPING).write_text("".join(f"{w} {d}\n" for w, d in descriptions.items()))
