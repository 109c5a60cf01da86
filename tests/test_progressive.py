"""Progressive learning (`progressive:`): image size and regularisation grow together over
sub-stages of a stage's epochs; each epoch record says what it used, and a resume lands on the
values an uninterrupted run used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import stagewise
from conftest import crash_then_resume, make_image_folder, tiny_config
from stagewise.config import build_config
from stagewise.data.progressive import progressive_values
from stagewise.errors import ConfigError

PROGRESSIVE = {"stages": 2, "image_size": [16, 32], "randaugment_magnitude": [2, 10],
               "mixup": [0.0, 0.2], "drop_rate": [0.1, 0.3]}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("prog") / "d", per_class=8)


def test_schedule_interpolates_per_substage() -> None:
    values = progressive_values({"image_size": [128, 224], "mixup": [0.0, 0.3]}, 4, 8)
    assert [v["image_size"] for v in values] == [128, 128, 160, 160, 192, 192, 224, 224]
    assert [v["mixup"] for v in values][::2] == [0.0, 0.1, 0.2, 0.3]


def test_each_epoch_records_the_values_it_trained_with(data: Path, tmp_path: Path) -> None:
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=4, batch_size=6,
                                         progressive=PROGRESSIVE), reporter="quiet")
    rows = [(r["image_size"], r["randaugment_magnitude"], r["mixup"], r["drop_rate"])
            for r in result.history]
    assert rows == [(16, 2.0, 0.0, 0.1), (16, 2.0, 0.0, 0.1), (32, 10.0, 0.2, 0.3), (32, 10.0, 0.2, 0.3)]
    assert all(r["val_images"] == 24 for r in result.history)  # evaluation at the full size


def test_resume_lands_on_the_uninterrupted_values(data: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(epochs=3, batch_size=6, checkpoint_every=2,
              progressive={**PROGRESSIVE, "stages": 3, "image_size": [16, 32]})
    straight = stagewise.train(tiny_config(data, tmp_path / "a", **kw), reporter="quiet")
    resumed = crash_then_resume(tiny_config(data, tmp_path / "b", **kw), monkeypatch)
    a, b = load_file(str(straight.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("image_size", "randaugment_magnitude", "mixup", "drop_rate", "val_loss")
    assert [[r[k] for k in keys] for r in straight.history] == [[r[k] for k in keys] for r in resumed.history]


@pytest.mark.parametrize("extra, message", [
    ({"epochs": 2, "progressive": {**PROGRESSIVE, "stages": 3}}, "more than the stage's 2 epochs"),
    ({"progressive_resize": {"start": 0.5}}, "use progressive.image_size alone"),
    ({"augmentation": "none"}, "needs augmentation light/standard/strong"),
    ({"progressive": {"stages": 2}}, "give at least one of"),
])
def test_inconsistent_settings_are_refused(extra: dict, message: str) -> None:
    cfg = {"data": "d", "epochs": 8, "progressive": PROGRESSIVE, **extra}
    with pytest.raises(ConfigError, match=message):
        build_config(cfg)
