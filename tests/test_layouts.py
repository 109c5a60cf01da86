"""Dataset layouts: detection, labels and class names, built in temporary folders."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import HYMENOPTERA, make_image_folder, tiny_config
from stagewise.data.cifar import load_batch
from stagewise.data.imagenet import IMAGENETTE_WNIDS, IMAGEWOOF_WNIDS
from stagewise.data.layouts import detect_format, load_dataset
from stagewise.errors import DataError

A, B, C = "n01440764", "n02102040", "n03000684"  # tench, English springer, chain saw


@pytest.fixture
def jpegs(tmp_path: Path) -> list[Path]:
    """A few JPEGs: real photos from ../shared when present, generated ones otherwise."""
    if HYMENOPTERA.is_dir():
        return sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[:12]
    rng = np.random.default_rng(0)
    out = tmp_path / "src-jpegs"
    out.mkdir()
    for i in range(12):
        arr = rng.integers(0, 255, size=(40 + i, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(out / f"img{i}.jpg", quality=85)
    return sorted(out.glob("*.jpg"))


def put(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def labels_by_name(samples, class_ids: list[str]) -> dict[str, str]:
    return {p.name: class_ids[lab] for p, lab in zip(samples.paths, samples.labels, strict=True)}


def wnid_folder(root: Path, wnids, jpegs: list[Path], per_class: int = 2) -> Path:
    k = 0
    for split in ("train", "val"):
        for w in sorted(wnids):
            for _ in range(per_class):
                put(jpegs[k % len(jpegs)], root / split / w / f"{w}_{k}.JPEG")
                k += 1
    return root


def test_imagenette_and_imagewoof_detected_with_human_names(tmp_path: Path, jpegs) -> None:
    nette = wnid_folder(tmp_path / "imagenette2-160", IMAGENETTE_WNIDS, jpegs)
    woof = wnid_folder(tmp_path / "imagewoof2-160", IMAGEWOOF_WNIDS, jpegs)
    assert detect_format(nette) == "imagenette"
    assert detect_format(woof) == "imagewoof"
    index = load_dataset(nette)
    names = dict(zip(index.class_ids, index.class_names, strict=True))
    assert names["n01440764"] == "tench" and names["n03000684"] == "chain saw"
    assert index.layout == "imagenette" and len(index.splits["val"]) == 20
    woof_index = load_dataset(woof)
    assert woof_index.layout == "imagewoof" and "beagle" in woof_index.class_names


def make_tiny(root: Path, jpegs: list[Path]) -> dict[str, str]:
    """Tiny ImageNet whose val labels cannot be recovered from any ordering of files or folders."""
    (root / "wnids.txt").parent.mkdir(parents=True)
    (root / "wnids.txt").write_text(f"{C}\n{A}\n{B}\n")  # file order is not sorted order
    (root / "words.txt").write_text(f"{A}\ttench, Tinca tinca\n{B}\tEnglish springer\n"
                                    f"{C}\tchain saw, chainsaw\nn00001740\tentity\n")
    for w in (A, B, C):
        for i in range(3):
            put(jpegs[i], root / "train" / w / "images" / f"{w}_{i}.JPEG")
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    # Planted: val_0..5 sorted by name would pair with A,A,B,B,C,C (or all A by folder);
    # the annotations say otherwise, and a decoy class folder sits in val/.
    truth = {"val_0.JPEG": C, "val_1.JPEG": A, "val_2.JPEG": B,
             "val_3.JPEG": C, "val_4.JPEG": B, "val_5.JPEG": A}
    for k, name in enumerate(truth):
        put(jpegs[k], root / "val" / "images" / name)
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{w}\t0\t0\t10\t10\n" for name, w in truth.items()))
    put(jpegs[0], root / "val" / A / "decoy.JPEG")
    put(jpegs[1], root / "test" / "images" / "test_0.JPEG")
    return truth


def test_tiny_imagenet_val_labels_come_from_annotations(tmp_path: Path, jpegs) -> None:
    root = tmp_path / "tiny-imagenet-200"
    truth = make_tiny(root, jpegs)
    assert detect_format(root) == "tiny-imagenet"
    index = load_dataset(root)
    assert index.class_ids == [A, B, C]
    assert index.class_names == ["tench", "English springer", "chain saw"]
    assert labels_by_name(index.splits["val"], index.class_ids) == truth
    assert len(index.splits["train"]) == 9 and "test" not in index.splits
    every = [p for s in index.splits.values() for p in s.paths]
    assert not any("test_0" in p.name or "decoy" in p.name for p in every)


def test_tiny_imagenet_annotation_naming_unknown_class_is_an_error(tmp_path: Path, jpegs) -> None:
    root = tmp_path / "tiny-imagenet-200"
    make_tiny(root, jpegs)
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("val_9.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"line 7: class n09999999 is not in wnids.txt"):
        load_dataset(root)


def imagenet_train(root: Path, jpegs: list[Path]) -> None:
    for w in (A, B, C):
        for i in range(2):
            put(jpegs[i], root / "train" / w / f"{w}_{i}.JPEG")


def test_imagenet_flat_val_from_kaggle_solution_file(tmp_path: Path, jpegs) -> None:
    root = tmp_path / "kaggle"
    base = root / "ILSVRC" / "Data" / "CLS-LOC"
    imagenet_train(base, jpegs)
    truth = {"ILSVRC2012_val_00000001": B, "ILSVRC2012_val_00000002": A,
             "ILSVRC2012_val_00000003": C, "ILSVRC2012_val_00000004": A}
    for k, stem in enumerate(truth):
        put(jpegs[k], base / "val" / f"{stem}.JPEG")
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"{stem},{w} 1 2 30 40 {w} 5 6 7 8\n" for stem, w in truth.items()))
    (root / "LOC_synset_mapping.txt").write_text(
        f"{A} tench, Tinca tinca\n{B} springer dog, spaniel\n{C} chain saw, chainsaw\n")
    assert detect_format(root) == "imagenet"
    index = load_dataset(root)
    got = labels_by_name(index.splits["val"], index.class_ids)
    assert got == {f"{stem}.JPEG": w for stem, w in truth.items()}
    assert index.class_names == ["tench", "springer dog", "chain saw"]  # the dataset's own file wins


def write_meta_mat(path: Path, leaves: list[str]) -> None:
    """A devkit meta.mat: ILSVRC2012_IDs 1..n for `leaves` (in that order) plus one non-leaf."""
    from scipy.io import savemat

    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
              ("num_children", "O")]
    rows = [(i, w, w, "", 0) for i, w in enumerate(leaves, start=1)]
    rows.append((len(leaves) + 1, "n00001740", "entity", "", 3))
    savemat(str(path), {"synsets": np.array(rows, dtype=fields).reshape(-1, 1)})


def test_imagenet_flat_val_from_devkit_ground_truth(tmp_path: Path, jpegs) -> None:
    pytest.importorskip("scipy")
    root = tmp_path / "ilsvrc"
    imagenet_train(root, jpegs)
    devkit = root / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    write_meta_mat(devkit / "meta.mat", [C, A, B])  # devkit order differs from sorted order
    ids = [3, 1, 2, 1, 3]  # line i labels ILSVRC2012_val_0000000i
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    for k in range(1, 6):
        put(jpegs[k], root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG")
    index = load_dataset(root, "auto")
    got = labels_by_name(index.splits["val"], index.class_ids)
    devkit_order = {1: C, 2: A, 3: B}
    assert got == {f"ILSVRC2012_val_{k:08d}.JPEG": devkit_order[i] for k, i in enumerate(ids, 1)}
    assert index.class_names == ["tench", "English springer", "chain saw"]  # from timm's tables


def test_imagenet_flat_val_without_labels_says_which_files_it_needs(tmp_path: Path, jpegs) -> None:
    imagenet_train(tmp_path, jpegs)
    put(jpegs[0], tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="LOC_val_solution.csv.*ILSVRC2012_validation_ground_truth"):
        load_dataset(tmp_path)


def test_imagenet_mini_val_in_wnid_folders(tmp_path: Path, jpegs) -> None:
    root = wnid_folder(tmp_path / "imagenet-mini", [A, B, C], jpegs)
    assert detect_format(root) == "imagenet"
    index = load_dataset(root)
    assert all(p.parent.name == index.class_ids[lab]
               for p, lab in zip(index.splits["val"].paths, index.splits["val"].labels, strict=True))
    assert index.class_names[0] == "tench"


def test_csv_manifest_paths_relative_to_the_csv(tmp_path: Path, jpegs) -> None:
    images = tmp_path / "images"
    for k in range(8):
        put(jpegs[k], images / f"im{k}.jpg")
    lists = tmp_path / "lists"
    lists.mkdir()
    rows = [f"../images/im{k}.jpg,{'cat' if k % 2 else 'dog'},{'val' if k >= 6 else 'train'}"
            for k in range(8)]
    (lists / "manifest.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    assert detect_format(lists) == "csv" and detect_format(lists / "manifest.csv") == "csv"
    index = load_dataset(lists)
    assert index.class_ids == ["cat", "dog"]
    assert [p.name for p in index.splits["val"].paths] == ["im6.jpg", "im7.jpg"]
    assert index.splits["val"].labels == [1, 0]
    assert all(p.is_file() for s in index.splits.values() for p in s.paths)


def test_csv_without_split_column_uses_val_fraction(tmp_path: Path, jpegs) -> None:
    for k in range(10):
        put(jpegs[k], tmp_path / "img" / f"{k}.jpg")
    (tmp_path / "data.csv").write_text("label,path\n" + "".join(
        f"{'a' if k < 5 else 'b'},img/{k}.jpg\n" for k in range(10)))
    index = load_dataset(tmp_path / "data.csv", val_fraction=0.4)
    assert index.splits["val"].counts(2) == [2, 2] and len(index.splits["train"]) == 6


def test_csv_missing_file_and_bad_split_are_named(tmp_path: Path, jpegs) -> None:
    put(jpegs[0], tmp_path / "a.jpg")
    (tmp_path / "m.csv").write_text("path,label\na.jpg,x\nnope.jpg,y\n")
    with pytest.raises(DataError, match="nope.jpg"):
        load_dataset(tmp_path)
    (tmp_path / "m.csv").write_text("path,label,split\na.jpg,x,holdout\n")
    with pytest.raises(DataError, match="line 2: unknown split 'holdout'"):
        load_dataset(tmp_path)


def write_cifar10(folder: Path, n: int = 6) -> np.ndarray:
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, size=(n, 3072), dtype=np.uint8)
    data[:, :1024] = 255  # the red plane
    batches = {"data_batch_1": data, "data_batch_2": data[::-1].copy(), "test_batch": data[:4]}
    for name, arr in batches.items():
        blob = {"batch_label": name, "data": arr, "labels": [i % 10 for i in range(len(arr))],
                "filenames": [f"{i}.png" for i in range(len(arr))]}
        (folder / name).write_bytes(pickle.dumps(blob, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    return data


def test_cifar10_pickles_read_as_hwc_arrays(tmp_path: Path) -> None:
    data = write_cifar10(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder or its parent
        assert detect_format(root) == "cifar"
        index = load_dataset(root)
        train = index.splits["train"]
        assert train.arrays.shape == (12, 32, 32, 3) and len(index.splits["val"]) == 4
        assert (train.arrays[..., 0] == 255).all()
        assert np.array_equal(train.arrays[0, :, :, 1].reshape(-1), data[0, 1024:2048])
        assert index.class_names[3] == "cat" and train.labels[:3] == [0, 1, 2]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    arr = np.zeros((3, 3072), dtype=np.uint8)
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps(
            {"data": arr, "fine_labels": [5, 99, 0], "coarse_labels": [1, 2, 3]}, protocol=2))
    fine = [f"c{i}" for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": fine}, protocol=2))
    index = load_dataset(tmp_path)
    assert index.num_classes == 100 and index.splits["train"].labels == [5, 99, 0]


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "pwned"
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": _RunsCode(str(marker))}))
    with pytest.raises(DataError, match="refused global posix.mkdir"):
        load_batch(folder / "batches.meta")
    with pytest.raises(DataError):
        load_dataset(folder)
    assert not marker.exists()


def test_detection_failure_lists_what_it_saw_and_expected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as err:
        detect_format(tmp_path)
    text = str(err.value)
    assert "notes.txt" in text
    for name in ("folder", "imagenette", "tiny-imagenet", "imagenet", "csv", "cifar"):
        assert f"  {name}:" in text


def test_ambiguous_detection_asks_for_format(tmp_path: Path, jpegs) -> None:
    write_cifar10(tmp_path / "cifar-10-batches-py")
    put(jpegs[0], tmp_path / "a.jpg")
    (tmp_path / "list.csv").write_text("path,label\na.jpg,x\n")
    with pytest.raises(DataError, match="ambiguous layout.*cifar and csv"):
        detect_format(tmp_path)
    assert load_dataset(tmp_path, "csv").layout == "csv"


def test_parent_of_a_dataset_points_at_it(tmp_path: Path, jpegs) -> None:
    make_tiny(tmp_path / "tiny-imagenet-200", jpegs)
    with pytest.raises(DataError, match="use data: .*tiny-imagenet-200"):
        detect_format(tmp_path)


def test_plain_folder_is_still_the_fallback(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "plain", per_class=2)
    assert detect_format(root) == "folder"


def test_cifar_trains_end_to_end(tmp_path: Path) -> None:
    import stagewise

    write_cifar10(tmp_path / "cifar-10-batches-py", n=16)
    result = stagewise.train(tiny_config(tmp_path, tmp_path / "run", epochs=1), reporter="quiet")
    assert result.class_names[0] == "airplane" and len(result.history) == 1
