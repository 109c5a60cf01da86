"""The saved dataset index: built once, read back while the folder is unchanged, rebuilt when it
changes; `verify:` modes; the compact split of a run folder; one builder among 2 processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from stagewise.cli import main
from stagewise.data.folder import load_split, read_folder, save_split
from stagewise.data.layouts import index_dataset, load_dataset
from stagewise.data.loader import ImageDataset, make_loader
from stagewise.data.table import LabelArray, PathTable


def _age(root: Path, seconds: float = 60.0) -> Path:
    """Set every mtime under `root` in the past: a folder changed in the 2 s before an index is
    built is not trusted (its mtime may not move on the next change), as in a test's fresh tree."""
    old = time.time() - seconds
    for path in [root, *root.rglob("*")]:
        os.utime(path, (old, old))
    return root


def _plain(index) -> dict:
    return {name: (list(map(str, s.paths)), list(s.labels)) for name, s in index.splits.items()}


def _jpeg(truncated: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[:1500] if truncated else buf.getvalue()


def test_saved_index_reads_back_what_a_fresh_scan_finds(tmp_path: Path) -> None:
    root = _age(make_image_folder(tmp_path / "d", per_class=5))
    first = index_dataset(root)
    again = index_dataset(root)
    assert not first.cached and again.cached and first.path == again.path
    assert _plain(again.index) == _plain(first.index) == _plain(read_folder(root))
    assert isinstance(again.index.splits["train"].paths, PathTable)
    assert isinstance(again.index.splits["train"].labels, LabelArray)
    assert again.index.class_ids == ["alpha", "beta", "gamma"] and again.files == 30


def test_a_changed_folder_is_indexed_again(tmp_path: Path) -> None:
    root = _age(make_image_folder(tmp_path / "d", per_class=4))
    assert not index_dataset(root).cached and index_dataset(root).cached
    (root / "train" / "beta" / "new.png").write_bytes((root / "train" / "beta" / "beta_0.png").read_bytes())
    added = index_dataset(root)
    assert not added.cached and added.files == 25
    assert str(root / "train" / "beta" / "new.png") in map(str, added.index.splits["train"].paths)
    _age(root)
    (root / "val" / "alpha" / "alpha_0.png").unlink()
    assert index_dataset(root).files == 24
    _age(root)
    (root / "val" / "delta").mkdir()  # a new class folder, empty: train/ has no delta -> refused
    with pytest.raises(Exception, match="delta"):
        index_dataset(root)


def test_verify_modes_decide_what_is_opened(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=4)
    (root / "train" / "alpha" / "empty.png").write_bytes(b"")  # fails its header
    (root / "train" / "beta" / "cut.jpg").write_bytes(_jpeg(truncated=True))  # header fine, no decode
    (root / "val" / "gamma" / "cut.jpg").write_bytes(_jpeg(truncated=True))
    _age(root)
    none = index_dataset(root, verify="none").index
    assert len(none.splits["train"]) == 14 and none.skipped == [] and none.val_bad == {}
    header = index_dataset(root, verify="header").index
    assert header.skipped == [str(root / "train" / "alpha" / "empty.png")]
    assert len(header.splits["train"]) == 13  # the truncated JPEG passes a header check
    # val is decoded (once, at indexing): its bad file stays in the split, known and counted
    assert list(header.val_bad) == [str(root / "val" / "gamma" / "cut.jpg")]
    decode = index_dataset(root, verify="decode").index
    assert len(decode.splits["train"]) == 12 and len(decode.skipped) == 2
    assert index_dataset(root, verify="auto").verify == "header"  # 16 files: a small folder


def test_loader_reports_bad_files_an_unverified_index_holds(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", per_class=3)
    (root / "train" / "alpha" / "cut.jpg").write_bytes(_jpeg(truncated=True))
    index = load_dataset(_age(root), verify="none")
    ds = ImageDataset(index.splits["train"], lambda img: torch.from_numpy(np.array(img.resize((8, 8)))),
                      seed=0)
    bad = [b for batch in make_loader(ds, 4, False, 0, 0) for b in batch.bad]
    assert bad == [str(root / "train" / "alpha" / "cut.jpg")]


def test_split_file_is_compact_and_exact(tmp_path: Path) -> None:
    root = _age(make_image_folder(tmp_path / "d", per_class=6, splits=()))
    index = load_dataset(root)
    save_split(index, tmp_path / "split.npz")
    save_split(index, tmp_path / "split.json")  # the older format: still read
    assert _plain(load_split(load_dataset(root), tmp_path / "split.npz")) == _plain(index)
    assert _plain(load_split(load_dataset(root), tmp_path / "split.json")) == _plain(index)
    make_image_folder(root, per_class=9, splits=(), seed=1)  # more files: a fresh split differs
    grown = load_dataset(root)
    assert _plain(grown) != _plain(index)
    assert _plain(load_split(grown, tmp_path / "split.npz")) == _plain(index)


def test_data_index_command_prints_one_json_object(tmp_path: Path, capsys) -> None:
    root = _age(make_image_folder(tmp_path / "d", per_class=2))
    assert main(["data", "index", str(root), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["data", "index", str(root), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["files"] == second["files"] == 12 and second["splits"] == {"train": 6, "val": 6}
    assert second["seconds"] >= 0 and Path(second["cache"]).is_file()


def test_two_processes_build_the_index_once(tmp_path: Path) -> None:
    root = _age(make_image_folder(tmp_path / "d", per_class=6))
    out = tmp_path / "ranks.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "STAGEWISE_TEST_OUT": str(out), "STAGEWISE_INDEX_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", str(Path(__file__).parent / "index_child.py"),
                          str(root)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert sorted(r["cached"] for r in ranks) == [False, True]  # one built, the other read it
    assert len({r["digest"] for r in ranks}) == 1 and ranks[0]["files"] == 36
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
