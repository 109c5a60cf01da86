"""The LR range test: an exponential sweep, sensible suggestions, and the model left untouched."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from conftest import make_image_folder
from stagewise.cli import main
from stagewise.config import build_config
from stagewise.data import ImageDataset, build_transform, load_dataset, make_loader
from stagewise.data.transforms import Preprocess
from stagewise.errors import ConfigError
from stagewise.reporting.lr_plot import plot_lr_find
from stagewise.runfolder import LRFindResult
from stagewise.runs.lr_range import lr_range_test, steepest_lr, valley_lr
from stagewise.training.optim import create_optimizer

TINY = {"model": "test_resnet", "image_size": 32, "batch_size": 8, "num_workers": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("lrfind") / "data")


def _curve() -> tuple[list[float], list[float]]:
    """A loss that is flat, falls fastest at 1e-3, bottoms out near 0.3 and then blows up."""
    t = np.linspace(-6, 1, 141)  # log10(lr)
    loss = 2.0 - np.tanh(1.5 * (t + 3)) + np.exp(3.0 * (t - 0.5))
    return list(10.0**t), list(loss)


def test_suggestions_on_a_known_curve() -> None:
    lrs, loss = _curve()
    lowest = lrs[int(np.argmin(loss))]
    steep = steepest_lr(lrs, loss)
    assert steep == pytest.approx(1e-3, rel=0.15)
    valley = valley_lr(lrs, loss)
    assert 1e-4 < valley < lowest  # on the way down, before the minimum
    assert steepest_lr(lrs[:3], loss[:3]) is None and valley_lr(lrs[:2], loss[:2]) is None
    flat = [1.0] * len(lrs)
    assert steepest_lr(lrs, flat) is None  # nothing falls: no suggestion


def _parts(data: Path, **cfg):
    config = build_config({"data": str(data), **TINY, **cfg})
    index = load_dataset(config.data)
    pre = Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    loader = make_loader(ImageDataset(index.splits["train"], build_transform(pre, "none", False)),
                         8, True, 0, 0)
    model = timm.create_model("test_resnet", num_classes=index.num_classes)
    return model, loader, create_optimizer(model, config), nn.CrossEntropyLoss()


def test_sweep_is_exponential_and_restores_the_model(data: Path) -> None:
    torch.manual_seed(0)
    model, loader, optimizer, criterion = _parts(data, layer_decay=0.5, lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    group_lrs = [g["lr"] for g in optimizer.param_groups]
    assert len(set(group_lrs)) > 1  # layer decay: the groups differ
    result = lr_range_test(model, loader, optimizer, criterion, start_lr=1e-5, end_lr=1.0, steps=12)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) <= 12
    assert result.lrs[0] == pytest.approx(1e-5)
    ratios = np.diff(np.log10(result.lrs))
    assert np.allclose(ratios, 5 / 11)  # 5 decades in 11 equal steps
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # incl. BN stats
    assert [g["lr"] for g in optimizer.param_groups] == group_lrs
    assert optimizer.state_dict()["state"] == {}  # no moments left behind by the sweep


def test_sweep_stops_when_the_loss_explodes(data: Path) -> None:
    torch.manual_seed(0)
    model, loader, _, criterion = _parts(data)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    result = lr_range_test(model, loader, optimizer, criterion, start_lr=1e-1, end_lr=1e9, steps=30)
    assert result.stopped in ("diverged", "non-finite loss")
    assert len(result.lrs) < 30
    assert all(math.isfinite(x) for x in result.smoothed)


def test_bad_ranges_are_refused(data: Path) -> None:
    model, loader, optimizer, criterion = _parts(data)
    with pytest.raises(ConfigError, match="start_lr < end_lr"):
        lr_range_test(model, loader, optimizer, criterion, start_lr=1.0, end_lr=0.1)
    with pytest.raises(ConfigError, match="steps must be between"):
        lr_range_test(model, loader, optimizer, criterion, steps=5000)


def test_lr_find_writes_plot_and_suggestion(data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lrf"
    argv = ["lr-find", "--data", str(data), "--model", "test_resnet", "--image-size", "32",
            "--batch-size", "8", "--num-workers", "0", "--steps", "16", "--start-lr", "1e-5",
            "--end-lr", "10", "--out", str(out)]
    assert main(argv) == 0
    assert "suggested LR: valley" in capsys.readouterr().out
    saved = json.loads((out / "lr_find.json").read_text())
    # Scripts get the suggestion as the last line, one JSON object.
    assert main([*argv, "--log-format", "json"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["event"] == "done" and done["steps"] == 16 and "valley" in done
    assert len(saved["lrs"]) == len(saved["losses"]) and saved["lrs"][0] == pytest.approx(1e-5)
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = LRFindResult(**saved)
    fig = plot_lr_find(result)
    marked = {line.get_gid() for line in fig.axes[0].get_lines() if line.get_gid()}
    expected = {f"suggestion-{n}" for n in ("steepest", "valley") if getattr(result, n) is not None}
    assert marked == expected


def test_lr_find_sweeps_what_the_first_epoch_trains(data: Path, tmp_path: Path) -> None:
    """With freeze_epochs: 1 a finetune's first epoch trains the head only, and so does the
    sweep (both come from the same stage set-up); without it both train everything."""
    import stagewise

    for freeze_epochs in (1, 0):
        cfg = {**TINY, "data": str(data), "strategy": "finetune", "freeze_epochs": freeze_epochs,
               "epochs": 1, "report": False, "out": str(tmp_path / f"run{freeze_epochs}")}
        swept = stagewise.lr_find(cfg, steps=5).trainable_params
        first = stagewise.train(cfg, reporter="quiet").history[-1]
        assert swept == first["trainable_params"]
        if freeze_epochs:
            assert swept < first["total_params"]
        else:
            assert swept == first["total_params"]
