"""Run folders written by 0.1.0 (tests/fixtures/v0.1, see its README) still load, predict the
same, and report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import stagewise
from conftest import make_image_folder
from stagewise.reporting import read_run

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The images the fixture's runs were trained and checked on (same generator, same seed).
    return make_image_folder(tmp_path_factory.mktemp("v01") / "data", per_class=4, size=32)


@pytest.mark.parametrize("kind", ["stage", "pipeline"])
def test_old_run_folders_predict_as_they_did(kind: str, images: Path) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text())[kind]
    clf = stagewise.load(FIXTURES / kind)
    assert clf.class_ids == ["alpha", "beta", "gamma"]
    preds = clf.predict([str(images / rel) for rel in expected])
    for (rel, (label, prob)), pred in zip(expected.items(), preds, strict=True):
        assert pred.label == label, rel
        assert pred.probability == pytest.approx(prob, abs=1e-5), rel


@pytest.mark.parametrize("kind", ["stage", "pipeline"])
def test_old_run_folders_report(kind: str, tmp_path: Path) -> None:
    run = shutil.copytree(FIXTURES / kind, tmp_path / kind)
    history = read_run(run)
    assert history.kind == kind
    assert [s.name for s in history.stages] == (["stage"] if kind == "stage" else ["a", "b"])
    assert all(s.best.get("val_top1") is not None for s in history.stages)
    if kind == "pipeline":
        assert history.stages[1].baseline and history.stages[1].baseline["best_val_top1"] == 1.0
    html = stagewise.write_report(run, predictions=False)
    assert html.is_file() and (run / "report.md").is_file()
