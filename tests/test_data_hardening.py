"""Data-layer hardening (issue 15): class count and layout, undecodable val images, links in tar
archives, chunked hashing and EXIF sizes in `inspect`, opt-in progress bars."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.data import ImageDataset, load_dataset, make_loader
from stagewise.data.cache import attach_cache
from stagewise.data.fetch import unpack
from stagewise.data.hashing import file_digest
from stagewise.data.images import decode_error, load_rgb
from stagewise.data.inspect import inspect_dataset, probe_file
from stagewise.data.sources import Source
from stagewise.data.transforms import Preprocess, build_transform
from stagewise.data.verify import check_decodable
from stagewise.errors import DataError

PRE = Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _jpeg_bytes(size: tuple[int, int] = (64, 48), **save) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


def _truncate(path: Path) -> None:
    path.write_bytes(_jpeg_bytes()[:1500])  # a valid header: only decoding finds the cut


# 1. Classification needs two classes; a folder of split folders without train/ is not classes.

@pytest.mark.parametrize("splits", [(), ("train", "val")], ids=["class-folders", "train-val"])
def test_single_class_is_refused_before_training(tmp_path: Path, splits) -> None:
    root = make_image_folder(tmp_path / "d", classes=("cats",), per_class=6, splits=splits)
    with pytest.raises(DataError, match=r"found 1 class \(cats\); classification needs at least 2"):
        stagewise.train(tiny_config(root, tmp_path / "run"), reporter="quiet")
    assert not (tmp_path / "run" / "history.jsonl").exists()


def test_single_class_cli_exits_2_naming_folder_and_layout(tmp_path: Path, capsys) -> None:
    root = make_image_folder(tmp_path / "d", classes=("cats",), per_class=4)
    code = main(["train", "--data", str(root), "--model", "test_resnet", "--out",
                 str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert str(root) in err and "(cats)" in err and "train/<class>/" in err


def test_val_only_folder_is_not_one_class_named_val(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("ants", "bees"), per_class=3, splits=("val",))
    index = load_dataset(root)
    assert index.class_ids == ["ants", "bees"] and set(index.splits) == {"val"}  # evaluate can use it
    assert index.splits["val"].counts(2) == [3, 3]
    with pytest.raises(DataError, match=r"no train split \(found: val\); training expects "
                                        r"train/<class>/ and val/<class>/"):
        stagewise.train(tiny_config(root, tmp_path / "run"), reporter="quiet")


def test_train_only_folder_still_splits_by_fraction(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5, splits=("train",))
    index = load_dataset(root, val_fraction=0.4)
    index.check()
    assert index.splits["val"].counts(2) == [2, 2] and index.splits["train"].counts(2) == [3, 3]


def test_split_folder_beside_class_folders_is_refused(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("cats", "dogs"), per_class=2, splits=())
    make_image_folder(root / "val", classes=("cats", "dogs"), per_class=1, splits=())
    with pytest.raises(DataError, match=r"holds val/ beside class folders \(cats/, dogs/\) but no "
                                        r"train/ folder"):
        load_dataset(root)


# 2. Undecodable validation images: found before training, counted like the training ones.

def test_truncated_val_image_is_found_before_training(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=7, fmt="jpg")
    cut = root / "val" / "beta" / "beta_3.jpg"
    _truncate(cut)
    index = load_dataset(root)
    assert len(index.splits["val"]) == 21 and index.skipped == []  # the header check passes it
    bad = check_decodable(index, "val")
    assert list(bad) == [str(cut)] and "truncated" in bad[str(cut)]


def test_every_val_image_undecodable_is_a_data_error(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=7, fmt="jpg")
    for f in (root / "val").rglob("*.jpg"):
        _truncate(f)
    with pytest.raises(DataError, match=r"none of the 21 images of the 'val' split can be decoded"):
        check_decodable(load_dataset(root), "val")


@pytest.mark.parametrize("cache", ["none", "memory"])
def test_val_loader_names_bad_images_like_train(tmp_path: Path, cache: str) -> None:
    root = make_image_folder(tmp_path / "d", per_class=7, fmt="jpg")
    cut = root / "val" / "alpha" / "alpha_0.jpg"
    _truncate(cut)
    val = ImageDataset(load_dataset(root).splits["val"], build_transform(PRE, "none", False),
                       seeded=False)
    attach_cache([val], cache, PRE)
    batches = list(make_loader(val, batch_size=8, shuffle=False, seed=0, num_workers=0))
    assert sum(b.labels.numel() for b in batches) == 20
    assert [p for b in batches for p in b.bad] == [str(cut)]


def _write_case(path: Path, case: str) -> None:
    if case == "good":
        path.write_bytes(_jpeg_bytes())
    elif case in ("cut-baseline", "cut-progressive"):
        path.write_bytes(_jpeg_bytes(progressive=case == "cut-progressive")[:2000])
    elif case == "cmyk":
        Image.new("CMYK", (40, 30), (10, 20, 30, 40)).save(path, format="JPEG")
    elif case == "exif-rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        path.write_bytes(_jpeg_bytes(exif=exif))
    elif case == "not-an-image":
        path.write_bytes(b"\xff\xd8\xff\xe0 garbage")


@pytest.mark.parametrize("case", ["good", "cut-baseline", "cut-progressive", "cmyk",
                                  "exif-rotated", "not-an-image"])
def test_cheap_decode_check_agrees_with_load_rgb(tmp_path: Path, case: str) -> None:
    path = tmp_path / "img.jpg"
    _write_case(path, case)
    try:
        load_rgb(path)
        loads = True
    except OSError:
        loads = False
    assert (decode_error(path) is None) == loads
    assert loads == (case in ("good", "cmyk", "exif-rotated"))


# 3. Links in tar archives.

def _tar(path: Path, members: list[tuple[str, str, str | bytes]]) -> Path:
    """(name, kind, payload): kind 'dir', 'file' (bytes), 'sym' or 'hard' (link target)."""
    with tarfile.open(path, "w:gz") as t:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            elif kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = str(payload)
                t.addfile(info)
    return path


TOY = Source("toy", "http://127.0.0.1/toy.tgz", "sha256:" + "0" * 64, "toyset", "folder")
REAL = [("real", "dir", ""), ("real/train", "dir", ""), ("real/train/x.jpg", "file", b"x")]


@pytest.mark.parametrize("target", [".", "real", "/", "../outside"],
                         ids=["root-itself", "dangles-after-move", "absolute", "outside"])
def test_tar_whose_top_folder_is_a_symlink_is_refused(tmp_path: Path, target: str) -> None:
    archive = _tar(tmp_path / "toy.tgz", [*REAL, ("toyset", "sym", target)])
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match="nothing was installed"):
        unpack(archive, root, TOY)
    assert not os.path.lexists(root / "toyset") and list(root.iterdir()) == []


def test_symlink_inside_the_dataset_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "toy.tgz", [("toyset", "dir", ""), ("toyset/train", "dir", ""),
                                          ("toyset/train/up", "sym", "../..")])
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match=r"'toyset/train/up' is a symbolic link"):
        unpack(archive, root, TOY)
    assert list(root.iterdir()) == []


def test_hard_link_inside_the_dataset_unpacks_as_a_file(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "toy.tgz", [("toyset", "dir", ""), ("toyset/a.jpg", "file", b"abc"),
                                          ("toyset/b.jpg", "hard", "toyset/a.jpg")])
    root = tmp_path / "data"
    root.mkdir()
    unpack(archive, root, TOY)
    b = root / "toyset" / "b.jpg"
    assert not (root / "toyset").is_symlink() and not b.is_symlink() and b.read_bytes() == b"abc"


# 4. inspect: chunked hashing, sizes as trained on.

def test_inspect_reports_the_size_after_exif_rotation(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=("a", "b"), per_class=2, fmt="jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees: 40x20 stored, 20x40 trained on
    Image.new("RGB", (40, 20), (200, 0, 0)).save(root / "train" / "a" / "turned.jpg", exif=exif)
    report = inspect_dataset(root)
    assert report.sizes == {"32x32": 8, "20x40": 1}
    assert load_rgb(root / "train" / "a" / "turned.jpg").size == (20, 40)


def test_probe_file_hashes_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(path)
    with open(path, "ab") as f:  # trailing bytes after IEND: still a valid PNG, 8 MiB bigger
        f.write(os.urandom(8 << 20))
    tracemalloc.start()
    try:
        info = probe_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.error is None and info.size == (32, 32)
    assert info.digest == hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    assert peak < 2 << 20  # reading the file whole would hold 8 MiB


def test_file_digest_without_hashlib_file_digest(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 << 20 | 123))  # several 1 MiB chunks and a partial one
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_digest(path, "sha256") == expected
    monkeypatch.delattr(hashlib, "file_digest", raising=False)  # Python 3.10
    assert file_digest(path, "sha256") == expected


# 5. Progress: silent unless asked; a caller's own display can host the tasks.

class Recorder:
    """A task factory that records (description, total, advanced) instead of drawing."""

    def __init__(self) -> None:
        self.tasks: list[list] = []

    @contextmanager
    def __call__(self, description: str, total: int | None):
        record = [description, total, 0]
        self.tasks.append(record)

        def advance(n: int = 1) -> None:
            record[2] += n

        yield advance

    def seen(self) -> dict[str, tuple[int | None, int]]:
        return {d: (t, n) for d, t, n in self.tasks}


def test_progress_tasks_count_every_file(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=4)  # 12 train + 12 val
    rec = Recorder()
    index = load_dataset(root, progress=rec)
    report = inspect_dataset(root, progress=rec)
    check_decodable(index, "val", progress=rec)
    assert report.total == 24
    # Indexing lists the files, then checks them once (verify: auto is header for a small
    # folder; val is decoded instead); inspect reads the saved index back without a task.
    assert rec.seen() == {"indexing d": (None, 24), "checking train (header)": (12, 12),
                          "checking val (decode)": (12, 12), "reading images": (24, 24),
                          "checking images": (12, 12)}


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_progress_of_cache_building(tmp_path: Path, mode: str) -> None:
    root = make_image_folder(tmp_path / "d", per_class=2)
    ds = ImageDataset(load_dataset(root).splits["train"], build_transform(PRE, "none", False))
    rec = Recorder()
    attach_cache([ds], mode, PRE, cache_dir=tmp_path / "cache", progress=rec)
    expected = ({"caching decoded images": (6, 6)} if mode == "memory" else
                {"cache: checking files": (6, 6), "cache: decoding images": (6, 6)})
    assert rec.seen() == expected


def test_progress_is_off_by_default_and_never_on_stdout(tmp_path: Path, capsys) -> None:
    root = make_image_folder(tmp_path / "d", per_class=2)
    index = load_dataset(root)
    inspect_dataset(root)
    check_decodable(index)
    attach_cache([ImageDataset(index.splits["val"], build_transform(PRE, "none", False))],
                 "memory", PRE)
    assert capsys.readouterr() == ("", "")
    inspect_dataset(root, progress=True)  # a transient bar on stderr; stdout may carry --json
    assert capsys.readouterr().out == ""
