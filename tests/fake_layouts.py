"""Tiny fakes of published dataset layouts (Flowers-102, Oxford-IIIT Pet, Food-101): a few
32 px JPEGs each, the label files in the authors' formats (a .mat written by scipy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _jpeg(path: Path, label: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    base = np.zeros(3)
    base[label % 3] = 200
    arr = np.clip(base + rng.normal(0, 30, size=(32, 32, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)


def make_flowers(root: Path, classes: int = 3, per_split: tuple[int, int, int] = (4, 2, 3)) -> Path:
    """flowers-102/ with `classes` classes (labels 1..classes) and per-class split sizes."""
    from scipy.io import savemat

    folder = root / "flowers-102"
    rng = np.random.default_rng(0)
    labels: list[int] = []
    sets: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    for c in range(1, classes + 1):
        for key, n in zip(sets, per_split, strict=True):
            for _ in range(n):
                labels.append(c)
                sets[key].append(len(labels))
    for image_id, c in enumerate(labels, start=1):
        _jpeg(folder / "jpg" / f"image_{image_id:05d}.jpg", c - 1, rng)
    savemat(str(folder / "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    savemat(str(folder / "setid.mat"), {k: np.array([v], dtype=np.uint16) for k, v in sets.items()})
    return root


PET_BREEDS = ("Abyssinian", "american_bulldog", "Bengal")


def make_pets(root: Path, trainval: int = 5, test: int = 2) -> Path:
    """oxford-iiit-pet/ with three breeds, `trainval` and `test` images each."""
    folder = root / "oxford-iiit-pet"
    rng = np.random.default_rng(1)
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for c, breed in enumerate(PET_BREEDS, start=1):
        species = 1 if breed[0].isupper() else 2  # the dataset's own convention: cats capitalised
        for k in range(trainval + test):
            image = f"{breed}_{k + 1}"
            _jpeg(folder / "images" / f"{image}.jpg", c - 1, rng)
            lines["trainval" if k < trainval else "test"].append(f"{image} {c} {species} {c}")
    (folder / "annotations").mkdir(parents=True)
    for split, rows in lines.items():
        (folder / "annotations" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root


FOODS = ("apple_pie", "baby_back_ribs", "waffles")


def make_food(root: Path, train: int = 5, test: int = 2) -> Path:
    """food-101/ with three dishes, `train` and `test` images each."""
    folder = root / "food-101"
    rng = np.random.default_rng(2)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for c, food in enumerate(FOODS):
        for k in range(train + test):
            _jpeg(folder / "images" / food / f"{1000 + k}.jpg", c, rng)
            lines["train" if k < train else "test"].append(f"{food}/{1000 + k}")
    (folder / "meta").mkdir(parents=True)
    (folder / "meta" / "classes.txt").write_text("\n".join(FOODS) + "\n")
    (folder / "meta" / "labels.txt").write_text("Apple pie\nBaby back ribs\nWaffles\n")
    for split, rows in lines.items():
        (folder / "meta" / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return root
