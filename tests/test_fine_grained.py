"""Flowers-102, Oxford-IIIT Pet and Food-101 read in their published layouts (tiny fakes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fake_layouts import FOODS, make_flowers, make_food, make_pets
from stagewise.data.layouts import detect_format, load_dataset
from stagewise.errors import DataError


def sizes(index) -> dict[str, list[int]]:
    return {name: s.counts(index.num_classes) for name, s in index.splits.items()}


def test_flowers102_labels_and_splits_come_from_the_mat_files(tmp_path: Path) -> None:
    root = make_flowers(tmp_path, classes=3, per_split=(4, 2, 3))
    assert detect_format(root) == detect_format(root / "flowers-102") == "flowers102"
    index = load_dataset(root)
    assert index.class_ids == ["001", "002", "003"]
    assert index.class_names[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    assert sizes(index) == {"train": [4, 4, 4], "val": [2, 2, 2], "test": [3, 3, 3]}
    # Image ids are 1-based into imagelabels.mat: image_00001 is class 1, the last one class 3.
    train = index.splits["train"]
    assert train.paths[0].name == "image_00001.jpg" and train.labels[0] == 0
    assert train.labels[-1] == 2


def test_oxford_pets_class_from_the_file_name_and_test_kept_apart(tmp_path: Path) -> None:
    root = make_pets(tmp_path, trainval=5, test=2)
    assert detect_format(root) == "oxford-pets"
    index = load_dataset(root, val_fraction=0.2, seed=0)
    assert index.class_ids == ["Abyssinian", "american_bulldog", "Bengal"]
    assert index.class_names == ["Abyssinian", "American Bulldog", "Bengal"]
    # val is held out of trainval per class; the published test split stays the test split.
    assert sizes(index) == {"train": [4, 4, 4], "val": [1, 1, 1], "test": [2, 2, 2]}
    assert all(p.name.startswith(index.class_ids[lab]) for p, lab
               in zip(index.splits["test"].paths, index.splits["test"].labels, strict=True))


def test_food101_names_from_meta_and_missing_files_named(tmp_path: Path) -> None:
    root = make_food(tmp_path, train=5, test=2)
    assert detect_format(root / "food-101") == "food101"
    index = load_dataset(root)
    assert index.class_ids == list(FOODS) and index.class_names[1] == "Baby back ribs"
    assert sizes(index) == {"train": [4, 4, 4], "val": [1, 1, 1], "test": [2, 2, 2]}
    (root / "food-101" / "images" / "waffles" / "1000.jpg").unlink()
    with pytest.raises(DataError, match=r"train.txt: 1 listed image\(s\) not found"):
        load_dataset(root)


def test_two_layouts_in_one_folder_are_refused_not_guessed(tmp_path: Path) -> None:
    root = make_food(tmp_path) / "food-101"
    (root / "labels.csv").write_text("path,label\nimages/waffles/1000.jpg,waffles\n")
    with pytest.raises(DataError, match="ambiguous layout.*csv and food101"):
        detect_format(root)
    make_pets(tmp_path)  # torchvision's root holding two datasets: name one
    with pytest.raises(DataError, match="holds several datasets.*use data: "):
        detect_format(tmp_path)


def test_data_inspect_names_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stagewise.cli import main

    root = make_flowers(tmp_path, classes=2, per_split=(2, 1, 1))
    assert main(["data", "inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "flowers102" in out and "pink primrose" in out
