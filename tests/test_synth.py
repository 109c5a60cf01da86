"""The synthetic curriculum: same seed, same bytes; quick to generate; the documented layout."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from stagewise.data.layouts import load_dataset
from stagewise.data.synth import CURRICULUM, generate


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_generate_is_deterministic_by_seed(tmp_path: Path) -> None:
    generate(tmp_path / "a", seed=7, scale=0.1)
    generate(tmp_path / "b", seed=7, scale=0.1)
    generate(tmp_path / "c", seed=8, scale=0.1)
    a, b, c = (digests(tmp_path / n) for n in "abc")
    assert a == b and len(a) > 100
    assert a.keys() == c.keys() and a != c


def test_generate_is_fast_and_lays_out_levels(tmp_path: Path) -> None:
    start = time.perf_counter()
    folders = generate(tmp_path, scale=0.25)
    seconds = time.perf_counter() - start
    n = sum(1 for _ in tmp_path.rglob("*.png"))
    # Hundreds of images per second even on a busy 2-core CI machine (thousands on a quiet one).
    assert n / seconds > 150, f"{n} images in {seconds:.1f}s"
    assert [f.name for f in folders] == [lv.name for lv in CURRICULUM]
    previous: set[str] = set()
    for folder, level in zip(folders, CURRICULUM, strict=True):
        index = load_dataset(folder)
        assert index.layout == "folder" and index.num_classes == level.classes
        assert previous < set(index.class_ids)  # each level keeps the previous level's class ids
        previous = set(index.class_ids)
