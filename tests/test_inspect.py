"""`stagewise data inspect`: counts, sizes, planted corrupt files and cross-split duplicates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder
from stagewise.cli import main
from stagewise.data.inspect import inspect_dataset
from test_layouts import write_cifar10


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """train/val image folder with 2 bad files, 1 cross-split duplicate and 1 in-split copy."""
    root = make_image_folder(tmp_path / "ds", classes=("ants", "bees"), per_class=4, size=32,
                             fmt="jpg")
    for i in range(2):  # make 'bees' the larger training class: 6 vs 4
        Image.fromarray(np.full((20, 30), 90 + i, dtype=np.uint8), mode="L").save(
            root / "train" / "bees" / f"gray{i}.png")
    good = (root / "train" / "ants" / "ants_0.jpg").read_bytes()
    (root / "train" / "ants" / "truncated.jpg").write_bytes(good[: len(good) * 4 // 5])
    (root / "val" / "bees" / "empty.jpg").write_bytes(b"")
    shutil.copyfile(root / "train" / "ants" / "ants_1.jpg", root / "val" / "ants" / "leak.jpg")
    shutil.copyfile(root / "train" / "bees" / "bees_1.jpg", root / "train" / "bees" / "again.jpg")
    return root


def test_inspect_finds_planted_problems(planted: Path) -> None:
    report = inspect_dataset(planted)
    assert report.layout == "folder" and report.class_ids == ["ants", "bees"]
    # the zero-byte file is dropped while indexing; the truncated one only fails a full decode
    bad = {Path(item["path"]).name for item in report.undecodable}
    assert bad == {"truncated.jpg", "empty.jpg"}
    assert len(report.duplicates) == 1
    group = report.duplicates[0]
    assert group["splits"] == ["train", "val"]
    assert sorted(Path(f["path"]).name for f in group["files"]) == ["ants_1.jpg", "leak.jpg"]
    assert report.duplicate_files_within_splits == 1
    assert report.counts == {"train": [5, 7], "val": [5, 4]}
    assert report.imbalance["train"] == pytest.approx(1.4)
    assert report.sizes["32x32"] == 18 and report.sizes["30x20"] == 2
    assert report.modes == {"RGB": 18, "L": 2}
    assert report.size_range == {"min_width": 30, "max_width": 32, "min_height": 20, "max_height": 32}


def test_inspect_cli_json_and_table(planted: Path, capsys) -> None:
    assert main(["data", "inspect", str(planted), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_images"] == 21 and len(data["undecodable"]) == 2
    assert data["duplicates"][0]["splits"] == ["train", "val"]
    assert main(["data", "inspect", str(planted)]) == 0
    out = capsys.readouterr().out
    for title in ("Images per class", "Undecodable files", "more than one split", "leak.jpg"):
        assert title in out


def test_inspect_cifar_arrays_finds_test_images_copied_from_train(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")  # its test batch repeats 4 training images
    report = inspect_dataset(tmp_path)
    assert report.layout == "cifar" and report.sizes == {"32x32": 16}
    assert len(report.duplicates) == 4 and all(g["splits"] == ["train", "val"] for g in report.duplicates)


def test_inspect_bad_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
