"""Decoded-image cache: same tensors as decoding every time, per-epoch augmentation, invalidation."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import HYMENOPTERA, make_image_folder, tiny_config
from stagewise.data.cache import DiskStore, attach_cache, build_memory, eval_resize
from stagewise.data.index import Samples
from stagewise.data.loader import _EPOCH_STRIDE, ImageDataset
from stagewise.data.transforms import Preprocess, build_transform
from stagewise.errors import DataError

PRE = Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # eval: resize to 36, crop 32


@pytest.fixture
def samples(tmp_path: Path) -> Samples:
    """Images larger and smaller than the 36 px resize, grey and RGBA ones, real photos if any."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i, (w, h) in enumerate([(80, 60), (30, 40), (200, 100), (36, 50), (37, 36)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
        paths.append(folder / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 40), dtype=np.uint8), mode="L").save(folder / "g.png")
    Image.fromarray(rng.integers(0, 255, (45, 45, 4), dtype=np.uint8), mode="RGBA").save(folder / "a.png")
    paths += [folder / "g.png", folder / "a.png"]
    if HYMENOPTERA.is_dir():
        for src in sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:4]:
            paths.append(Path(shutil.copy(src, folder / src.name)))
    return Samples(labels=[i % 2 for i in range(len(paths))], paths=paths)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_tensors_identical_with_augmentation_off(samples, mode, tmp_path: Path) -> None:
    plain = ImageDataset(samples, build_transform(PRE, "none", True), seed=0)
    cached = ImageDataset(samples, build_transform(PRE, "none", True), seed=0)
    attach_cache([cached], mode, PRE, cache_dir=tmp_path / "cache")
    assert cached.cache is not None
    for i in range(len(samples)):
        x, y = plain[i]
        x2, y2 = cached[i]
        assert torch.equal(x, x2) and y == y2


def test_cache_stores_shrunk_images_and_keeps_small_ones(samples) -> None:
    cache = build_memory(samples.paths, eval_resize(PRE))
    assert cache.array(0).shape == (36, 48, 3)  # 80x60 -> shorter side 36, aspect kept
    assert cache.array(1).shape == (40, 30, 3)  # smaller than 36: stored as is
    assert cache.get(5).mode == "RGB" and cache.get(6).mode == "RGB"


def test_augmentation_still_varies_per_epoch_on_cached_images(samples, tmp_path: Path) -> None:
    ds = ImageDataset(samples, build_transform(PRE, "standard", True), seed=3)
    attach_cache([ds], "disk", PRE, cache_dir=tmp_path / "cache")
    epoch0, again, epoch1 = ds[2][0], ds[2][0], ds[_EPOCH_STRIDE + 2][0]
    assert torch.equal(epoch0, again)  # a pure function of (seed, epoch, index)
    assert not torch.equal(epoch0, epoch1)


def test_disk_cache_is_reused_and_invalidated_when_a_file_changes(samples, tmp_path: Path) -> None:
    resize = eval_resize(PRE)
    store = DiskStore(tmp_path / "cache", resize)
    store.build(samples.paths)
    packs = sorted(store.folder.glob("pack-*.json"))
    assert len(packs) == 1
    store.build(samples.paths)
    assert sorted(store.folder.glob("pack-*.json")) == packs  # nothing decoded again

    changed = samples.paths[1]
    Image.fromarray(np.full((40, 30, 3), 7, dtype=np.uint8)).save(changed, format="JPEG")
    cache = store.build(samples.paths)
    new = [p for p in store.folder.glob("pack-*.json") if p not in packs]
    assert len(new) == 1 and len(json.loads(new[0].read_text())["entries"]) == 1
    assert np.abs(cache.array(1).astype(int) - 7).max() <= 2  # the new content, not the old


def test_undecodable_file_is_skipped_like_the_uncached_path(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    s = Samples(labels=[0, 1], paths=[good, bad])
    for mode in ("memory", "disk"):
        ds = ImageDataset(s, build_transform(PRE, "none", False), seeded=False)
        attach_cache([ds], mode, PRE, cache_dir=tmp_path / "cache")
        assert ds[0][0] is not None
        assert ds[1] == (None, str(bad))


def test_disk_cache_pickles_without_image_data(samples, tmp_path: Path) -> None:
    cache = DiskStore(tmp_path / "cache", eval_resize(PRE)).build(samples.paths)
    cache.get(0)  # opens a memmap
    clone = pickle.loads(pickle.dumps(cache))  # what a spawned DataLoader worker receives
    assert len(pickle.dumps(cache)) < 4096
    assert np.array_equal(clone.array(2), cache.array(2))


def test_memory_cache_over_budget_suggests_disk(samples) -> None:
    with pytest.raises(DataError, match="use cache: disk"):
        build_memory(samples.paths, None, limit_bytes=1000)


def test_training_with_disk_cache_matches_uncached(tmp_path: Path, monkeypatch) -> None:
    import stagewise

    monkeypatch.setenv("STAGEWISE_CACHE_DIR", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", per_class=6, size=48, fmt="jpg")
    runs = {}
    for mode in ("none", "disk"):
        cfg = tiny_config(data, tmp_path / f"run-{mode}", epochs=1, augmentation="none", cache=mode)
        runs[mode] = stagewise.train(cfg, reporter="quiet").history[-1]
    assert list((tmp_path / "cache").rglob("pack-*.u8"))
    for key in ("train_loss", "val_loss", "val_top1"):
        assert runs["none"][key] == runs["disk"][key]
