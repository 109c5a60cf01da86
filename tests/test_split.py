"""`split: [train, val, test]`: stratified, seeded fractions of a folder of class folders, saved in
split.json and reused on resume; the test share is measured once, with the best weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.config import build_config
from stagewise.data.folder import SPLIT_NAMES, resplit, split_counts, stratified_fractions
from stagewise.data.layouts import load_dataset
from stagewise.errors import ConfigError, DataError
from stagewise.runfolder import MODEL_CARD, SPLIT_ARRAYS, read_split, read_test

CLASSES = ("alpha", "beta", "gamma")


@pytest.fixture
def flat_data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "flat", classes=CLASSES, per_class=20, splits=())


def _class_of(rel: str) -> str:
    return Path(rel).parts[0]


def test_fractions_are_respected_per_class(flat_data: Path) -> None:
    index = resplit(load_dataset(flat_data), [0.7, 0.15, 0.15], seed=0)
    assert set(index.splits) == set(SPLIT_NAMES)
    for name, expected in (("train", 14), ("val", 3), ("test", 3)):
        assert index.splits[name].counts(3) == [expected] * 3  # stratified: each class alike
    every = [p for s in index.splits.values() for p in s.paths or []]
    assert len(every) == len(set(every)) == 60  # disjoint and complete


def test_split_is_seeded() -> None:
    from stagewise.data.index import Samples

    samples = Samples(labels=[i % 2 for i in range(40)], paths=[Path(f"{i}.png") for i in range(40)])
    a = stratified_fractions(samples, [0.5, 0.25, 0.25], seed=1)
    b = stratified_fractions(samples, [0.5, 0.25, 0.25], seed=1)
    c = stratified_fractions(samples, [0.5, 0.25, 0.25], seed=2)
    assert a["test"].paths == b["test"].paths
    assert a["test"].paths != c["test"].paths


def test_small_classes_keep_a_training_image() -> None:
    assert split_counts(1, 0.15, 0.15) == (0, 0)
    assert split_counts(2, 0.15, 0.15) == (1, 0)
    assert split_counts(3, 0.15, 0.15) == (1, 1)
    assert split_counts(3, 0.45, 0.45) == (1, 1)
    assert split_counts(20, 0.15, 0.0) == (3, 0)


def test_two_fractions_make_train_and_val_only(flat_data: Path) -> None:
    index = resplit(load_dataset(flat_data), [0.75, 0.25], seed=0)
    assert set(index.splits) == {"train", "val"}
    assert index.splits["val"].counts(3) == [5, 5, 5]


def test_split_refused_beside_val_folders(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", splits=("train", "val"))
    with pytest.raises(DataError, match="already has val/"):
        resplit(load_dataset(data), [0.7, 0.15, 0.15], seed=0)


@pytest.mark.parametrize("bad, message", [
    ([0.5, 0.3], "sum to 1"),
    ([1.0], "2 or 3 fractions"),
    ([0.5, 0.2, 0.2, 0.1], "2 or 3 fractions"),
    ([0.8, 0.3, -0.1], "between 0 and 1"),
    ([1.0, 0.0], "between 0 and 1"),
    ("0.7,0.3", "split"),
])
def test_bad_split_is_a_config_error(tmp_path: Path, bad: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"data": str(tmp_path), "split": bad})


def test_split_with_val_fraction_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="remove val_fraction"):
        build_config({"data": str(tmp_path), "split": [0.7, 0.15, 0.15], "val_fraction": 0.3})
    # The default val_fraction (as config.yaml writes it) goes with split.
    build_config({"data": str(tmp_path), "split": [0.7, 0.15, 0.15], "val_fraction": 0.2})


def test_test_split_evaluated_once_with_best_weights(flat_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = stagewise.train(tiny_config(flat_data, run, split=[0.7, 0.15, 0.15]), reporter="quiet")
    saved = read_split(run)["splits"]
    assert [len(saved[n]) for n in SPLIT_NAMES] == [42, 9, 9]
    record = read_test(run)
    assert result.test == record and record is not None
    assert record.images == 9 and set(record.per_class) == set(CLASSES)
    assert record.epoch == result.best["epoch"]
    card = json.loads((run / MODEL_CARD).read_text())
    assert card["metrics"]["test_top1"] == record.top1 == result.test_top1
    assert "test_top1" not in result.best  # apart from validation: never chooses an epoch
    # The same images scored by stagewise's inference path on best.safetensors agree.
    copy = tmp_path / "test_only"
    for rel in saved["test"]:
        (copy / "test" / _class_of(rel)).mkdir(parents=True, exist_ok=True)
        shutil.copy(flat_data / rel, copy / "test" / rel)
    ev = stagewise.evaluate(stagewise.load(run), copy, split="test")
    assert ev.images == record.images
    assert ev.top1 == pytest.approx(record.top1)
    assert ev.loss == pytest.approx(record.loss, rel=1e-4, abs=1e-5)


def test_split_is_reused_on_resume(flat_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    stagewise.train(tiny_config(flat_data, run, split=[0.7, 0.15, 0.15], epochs=1), reporter="quiet")
    before = (run / SPLIT_ARRAYS).read_bytes()
    # New images after the first run: a fresh split would differ, the saved one is kept.
    make_image_folder(tmp_path / "more", classes=CLASSES, per_class=5, splits=(), seed=3)
    for cls in CLASSES:
        for f in (tmp_path / "more" / cls).iterdir():
            shutil.copy(f, flat_data / cls / f"new_{f.name}")
    resumed = stagewise.train(resume=True, out=str(run), reporter="quiet")
    assert (run / SPLIT_ARRAYS).read_bytes() == before
    assert resumed.test is not None and resumed.test.images == 9


def test_existing_test_folder_is_evaluated(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", per_class=4, splits=("train", "val", "test"))
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=1), reporter="quiet")
    assert result.test is not None and result.test.images == 12
    assert read_test(tmp_path / "run") == result.test


def test_no_test_split_no_test_json(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", per_class=4)
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=1), reporter="quiet")
    assert result.test is None and read_test(tmp_path / "run") is None


def test_test_top1_beside_val_top1_in_reports_and_summaries(flat_data: Path, tmp_path: Path) -> None:
    """The stage report, a pipeline's report and summary, and the CLI's last line show test top-1."""
    from stagewise.reporting import write_report

    run = tmp_path / "run"
    result = stagewise.train(tiny_config(flat_data, run, epochs=1, split=[0.7, 0.15, 0.15]),
                             reporter="quiet")
    write_report(run)
    header, row = _summary_lines((run / "report.md").read_text())
    cells = [c.strip() for c in header.split("|")]
    at = cells.index("test top-1")
    assert cells[at - 1] == "best val top-1"
    assert [c.strip() for c in row.split("|")][at] == f"{100 * result.test_top1:.1f}%"
    # A run without a test split has no such column.
    plain = stagewise.train(tiny_config(flat_data, tmp_path / "plain", epochs=1), reporter="quiet")
    write_report(plain.run_dir)
    assert "test top-1" not in _summary_lines((plain.run_dir / "report.md").read_text())[0]
    # A pipeline: its manifest summary and its report.
    fast = {k: v for k, v in tiny_config(flat_data, tmp_path).items() if k not in ("out", "report")}
    out = tmp_path / "pipe"
    piped = stagewise.run({"defaults": {**fast, "epochs": 1, "split": [0.7, 0.15, 0.15]},
                           "stages": [{"name": "one"}]}, out=out, reporter="quiet")
    (summary,) = piped.summary()
    assert summary["test_top1"] == read_test(out / "stages" / "one").top1
    assert "test top-1" in _summary_lines((out / "report.md").read_text())[0]


def _summary_lines(markdown: str) -> tuple[str, str]:
    """The header and first row of a report's summary table."""
    lines = markdown.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("| stage |"))
    return lines[i], lines[i + 2]
