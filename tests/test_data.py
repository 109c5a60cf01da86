"""Image folders: layouts, stratified splits kept across resume, bad images, modes and EXIF."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.data import ImageDataset, load_dataset, make_loader, read_folder
from stagewise.data.folder import load_split, save_split, stratified_split
from stagewise.data.images import header_ok, load_rgb
from stagewise.data.index import Samples
from stagewise.errors import DataError
from stagewise.runfolder import read_split


class Collect:
    """A reporter that keeps what a run says, for assertions."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.records: list[dict[str, Any]] = []

    def message(self, text: str) -> None:
        self.messages.append(text)

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch(self, done: int, loss: float, acc: float, lr: float) -> None:
        pass

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


def _noise(size: tuple[int, int] = (32, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)


def _truncated_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_noise((64, 64))).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_train_val_folder(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("b", "a", "c"), per_class=3)
    index = load_dataset(root)
    assert index.class_ids == ["a", "b", "c"] and index.class_names == ["a", "b", "c"]
    assert set(index.splits) == {"train", "val"} and index.layout == "folder"
    assert index.splits["train"].counts(3) == [3, 3, 3] == index.splits["val"].counts(3)
    for split in ("train", "val"):
        s = index.splits[split]
        assert all(p.parent.name == index.class_ids[lab] and p.parent.parent.name == split
                   for p, lab in zip(s.paths, s.labels, strict=True))


def test_valid_alias_and_missing_val_split(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=5, splits=("train", "valid"))
    assert len(read_folder(root).splits["val"]) == 15
    only_train = make_image_folder(tmp_path / "t", per_class=5, splits=("train",))
    index = read_folder(only_train, val_fraction=0.4)
    assert index.splits["val"].counts(3) == [2, 2, 2] and index.splits["train"].counts(3) == [3, 3, 3]


def test_single_folder_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for cls, n in (("few", 5), ("many", 20), ("mid", 10)):
        make_image_folder(root, classes=(cls,), per_class=n, splits=())
    index = read_folder(root, val_fraction=0.2, seed=1)
    assert index.class_ids == ["few", "many", "mid"]
    assert index.splits["val"].counts(3) == [1, 4, 2]
    assert index.splits["train"].counts(3) == [4, 16, 8]
    train, val = set(index.splits["train"].paths), set(index.splits["val"].paths)
    assert not train & val and len(train | val) == 35
    assert read_folder(root, 0.2, seed=1).splits["val"].paths == index.splits["val"].paths
    assert read_folder(root, 0.2, seed=2).splits["val"].paths != index.splits["val"].paths


def test_one_image_class_stays_in_train() -> None:
    samples = Samples(labels=[0, 1, 1, 1], paths=[Path(f"{i}.png") for i in range(4)])
    train, val = stratified_split(samples, 0.5, seed=0)
    assert train.counts(2) == [1, 1] and val.counts(2) == [0, 2]


def test_split_is_saved_and_reused_on_resume(tmp_path: Path) -> None:
    root = tmp_path / "d"
    make_image_folder(root, per_class=10, splits=())
    out = tmp_path / "run"
    first = stagewise.train(tiny_config(root, out, epochs=1, val_fraction=0.3), reporter="quiet")
    saved = read_split(out)
    assert saved["class_ids"] == ["alpha", "beta", "gamma"]
    assert len(saved["splits"]["val"]) == 9 and len(saved["splits"]["train"]) == 21
    assert all(not Path(p).is_absolute() for p in saved["splits"]["val"])
    assert first.history[0]["val_images"] == 9
    # More images arrive; a resumed run (restarting its only epoch) keeps the saved split, while a
    # fresh scan would now hold out 4 images per class.
    make_image_folder(root, per_class=14, splits=(), seed=1)
    shutil.rmtree(out / "last")
    (out / "best.safetensors").unlink()
    again = stagewise.train(resume=True, out=str(out), reporter="quiet")
    assert again.history[0]["val_images"] == 9
    assert read_split(out) == saved
    assert len(read_folder(root, 0.3).splits["val"]) == 12


def test_saved_split_with_other_classes_is_refused(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=2)
    index = read_folder(root)
    save_split(index, tmp_path / "split.json")
    shutil.rmtree(root / "train" / "gamma")
    shutil.rmtree(root / "val" / "gamma")
    with pytest.raises(DataError, match="saved run used classes"):
        load_split(read_folder(root), tmp_path / "split.json")


def test_bad_images_are_skipped_counted_and_named(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=8)
    (root / "train" / "gamma" / "gamma_0.png").unlink()  # 24 train files: no batch is dropped
    (root / "train" / "alpha" / "zero.png").write_bytes(b"")
    (root / "train" / "beta" / "notes.jpg").write_text("this is not an image")
    _truncated_jpeg(root / "train" / "gamma" / "cut.jpg")
    assert header_ok(root / "train" / "gamma" / "cut.jpg")  # only full decoding finds it
    index = read_folder(root)
    assert sorted(Path(p).name for p in index.skipped) == ["notes.jpg", "zero.png"]
    assert len(index.splits["train"]) == 24

    rep = Collect()
    result = stagewise.train(tiny_config(root, tmp_path / "run", epochs=2), reporter=rep)
    assert result.stopped == "completed"
    assert [r["bad_images"] for r in result.history] == [1, 1]
    assert all(np.isfinite(r["train_loss"]) for r in result.history)
    text = "\n".join(rep.messages)
    assert "skipped 2 unreadable image(s)" in text and "zero.png" in text and "notes.jpg" in text
    assert "skipped 1 undecodable image(s)" in text and "cut.jpg" in text


def test_batch_left_with_one_image_does_not_crash(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=2)
    for cls in ("a", "b"):
        _truncated_jpeg(root / "train" / cls / "cut.jpg")
    result = stagewise.train(tiny_config(root, tmp_path / "run", epochs=3, batch_size=2,
                                         augmentation="none"), reporter="quiet")
    assert [r["bad_images"] for r in result.history] == [2, 2, 2]
    assert all(np.isfinite(r["train_loss"]) for r in result.history)


def test_loader_drops_bad_samples_and_names_them(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(_noise()).save(good)
    bad = tmp_path / "cut.jpg"
    _truncated_jpeg(bad)
    ds = ImageDataset(Samples(labels=[0, 1, 0], paths=[good, bad, good]),
                      lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32)), seed=0)
    (batch,) = list(make_loader(ds, batch_size=3, shuffle=False, seed=0, num_workers=0))
    assert batch.images.shape == (2, 32, 32, 3) and batch.labels.tolist() == [0, 0]
    assert batch.bad == [str(bad)]


def test_all_bad_images_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no usable images in the 'train' split"):
        stagewise.train(tiny_config(root, tmp_path / "run"), reporter="quiet")
    assert not (tmp_path / "run" / "history.jsonl").exists()


def test_empty_class_is_an_error(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=3)
    (root / "train" / "delta").mkdir()
    (root / "val" / "delta").mkdir()
    with pytest.raises(DataError, match="no usable training images: delta"):
        stagewise.train(tiny_config(root, tmp_path / "run"), reporter="quiet")
    assert not (tmp_path / "run" / "history.jsonl").exists()


@pytest.mark.parametrize(("move", "match"), [
    ("extra_in_val", "not in train/: delta"),
    ("missing_from_val", "missing from val/: gamma"),
])
def test_train_val_class_mismatch_fails_before_training(tmp_path: Path, move: str, match: str) -> None:
    root = make_image_folder(tmp_path / "d", per_class=3)
    if move == "extra_in_val":
        make_image_folder(root, classes=("delta",), per_class=2, splits=("val",))
    else:
        shutil.rmtree(root / "val" / "gamma")
    with pytest.raises(DataError, match=match):
        stagewise.train(tiny_config(root, tmp_path / "run"), reporter="quiet")
    assert not (tmp_path / "run" / "history.jsonl").exists()


def test_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found"):
        stagewise.train(tiny_config(tmp_path / "nope", tmp_path / "run"), reporter="quiet")


@pytest.mark.parametrize(("mode", "fmt"), [
    ("RGBA", "png"), ("LA", "png"), ("P", "png"), ("L", "png"), ("CMYK", "jpeg"), ("I;16", "png"),
    ("1", "png"), ("RGB", "webp"),
])
def test_image_modes_load_as_rgb(tmp_path: Path, mode: str, fmt: str) -> None:
    img = Image.fromarray(_noise((40, 24))).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        img = img.convert("I").point(lambda v: v * 256).convert("I;16")
    path = tmp_path / f"img.{fmt}"
    img.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (40, 24)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    assert load_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half black
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
    img = load_rgb(path)
    assert img.size == (20, 40)
    top, bottom = img.getpixel((10, 5)), img.getpixel((10, 35))
    assert top[0] > 200 and bottom[0] < 50  # the red left half is now on top


@pytest.mark.parametrize("limit", [1000, 3000], ids=["error-zone", "warning-zone"])
def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch, limit: int) -> None:
    # Pillow warns above MAX_IMAGE_PIXELS (64x64 = 4096 > 3000) and raises above twice that.
    path = tmp_path / "big.png"
    Image.fromarray(_noise((64, 64))).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    assert not header_ok(path)
    with pytest.raises((Image.DecompressionBombWarning, Image.DecompressionBombError)):
        load_rgb(path)
    ds = ImageDataset(Samples(labels=[0], paths=[path]), lambda img: img)
    assert ds[0] == (None, str(path))  # skipped and named by the loader, not a crash
