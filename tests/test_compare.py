"""`stagewise compare`: a grid of real (tiny) runs, same split and budget, resumable, tabulated."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
import timm
import yaml
from PIL import Image
from safetensors.torch import save_file

import stagewise.runs.comparison
from conftest import make_image_folder
from stagewise.cli import main
from stagewise.errors import ConfigError, StagewiseError
from stagewise.reporting.compare_report import plot_compare
from stagewise.runs.comparison import cell_config, compare, parse_weights, plan_cells
from stagewise.training import trackers

SETTINGS = {"image_size": 32, "batch_size": 8, "num_workers": 0, "lr": 0.01}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A finished 1 model x 2 strategies grid on data with a test split, plus its inputs."""
    root = tmp_path_factory.mktemp("compare")
    data = make_image_folder(root / "data", splits=("train", "val", "test"))
    weights = root / "test_resnet.safetensors"  # stands in for pretrained weights
    model = timm.create_model("test_resnet", num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = root / "cmp"
    compare(data, ["test_resnet"], ["scratch", "probe"], epochs=1, out=out, weights=str(weights),
            settings=SETTINGS)
    return data, weights, out


def test_grid_table_matches_the_cells(grid: tuple[Path, Path, Path]) -> None:
    _, weights, out = grid
    result = json.loads((out / "compare.json").read_text())
    assert result["grid"] == ["test_resnet-scratch", "test_resnet-probe"]
    rows = {r["cell"]: r for r in result["cells"]}
    for name, row in rows.items():
        cell = out / "cells" / name
        info = json.loads((cell / "model.json").read_text())
        assert row["val_top1"] == info["metrics"]["val_top1"]
        assert row["train_top1"] == info["metrics"]["train_top1"]
        assert row["test_top1"] is not None and 0.0 <= row["test_top1"] <= 1.0
        # The stage's own measurement of its best weights (test.json), not a second one.
        assert row["test_top1"] == json.loads((cell / "test.json").read_text())["top1"]
        assert row["size_mb"] == pytest.approx((cell / "best.safetensors").stat().st_size / 1e6)
        history = [json.loads(x) for x in (cell / "history.jsonl").read_text().splitlines()]
        assert row["seconds"] == pytest.approx(sum(r["wall_seconds"] for r in history), abs=1e-3)
    configs = {n: yaml.safe_load((out / "cells" / n / "config.yaml").read_text()) for n in rows}
    assert configs["test_resnet-scratch"]["weights"] is None  # scratch never gets weights
    assert configs["test_resnet-probe"]["weights"] == str(weights)
    assert {c["epochs"] for c in configs.values()} == {1} and {c["seed"] for c in configs.values()} == {0}
    assert result["same_split"] and len({r["split"] for r in rows.values()}) == 1
    assert rows["test_resnet-scratch"]["trainable_pct"] == 100.0
    assert rows["test_resnet-probe"]["trainable_pct"] < 5.0  # only the head trains


def test_comparison_report(grid: tuple[Path, Path, Path]) -> None:
    _, _, out = grid
    md = (out / "compare.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| cell |"))
    for column in ("train acc", "val acc", "test acc", "time", "trainable params", "trainable %",
                   "size MB", "images/s"):
        assert f"| {column} |" in header
    assert md.count("| test_resnet-") == 2
    html = (out / "compare.html").read_text()
    assert not re.search(r"""(src|href)=["']https?:""", html)
    (src,) = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', html)
    assert Image.open(io.BytesIO(base64.b64decode(src))).format == "PNG"
    rows = json.loads((out / "compare.json").read_text())["cells"]
    fig = plot_compare(rows)
    by_time, by_epoch = fig.axes[:2]
    assert sorted(line.get_label() for line in by_time.get_lines()) == sorted(r["cell"] for r in rows)
    for line, row in zip(by_time.get_lines(), rows, strict=True):
        assert list(line.get_ydata()) == [p[1] for p in row["curve"]]  # val top-1 per epoch
        assert list(line.get_xdata()) == [p[0] for p in row["curve"]]  # cumulative seconds


def test_finished_cells_are_not_trained_again(grid: tuple[Path, Path, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data, weights, out = grid
    before = (out / "compare.json").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(stagewise.runs.comparison, "train_stage", no_training)
    result = compare(data, ["test_resnet"], ["scratch", "probe"], epochs=1, out=out,
                     weights=str(weights), settings=SETTINGS)
    assert result.trained == [] and result.skipped == ["test_resnet-scratch", "test_resnet-probe"]
    assert json.loads((out / "compare.json").read_text())["cells"] == json.loads(before)["cells"]
    marker = out / "cells" / "test_resnet-probe" / "cell.json"
    saved = json.loads(marker.read_text())
    del saved["config"]["label_smoothing"]  # as if the cell ran before that key existed
    marker.write_text(json.dumps(saved))
    again = compare(data, ["test_resnet"], ["scratch", "probe"], epochs=1, out=out,
                    weights=str(weights), settings=SETTINGS)
    assert again.trained == []  # a key added later, at its default, is no difference
    with pytest.raises(StagewiseError, match="trained with other settings.*epochs: 1 -> 2"):
        compare(data, ["test_resnet"], ["scratch"], epochs=2, out=out, settings=SETTINGS)


def test_an_interrupted_cell_resumes(grid: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, weights, out = grid
    cell = out / "cells" / "test_resnet-scratch"
    history = (cell / "history.jsonl").read_text()
    (cell / "cell.json").unlink()  # as if the process died after training, before the marker
    result = compare(data, ["test_resnet"], ["scratch", "probe"], epochs=1, out=out,
                     weights=str(weights), settings=SETTINGS)
    assert result.trained == ["test_resnet-scratch"] and result.skipped == ["test_resnet-probe"]
    assert (cell / "history.jsonl").read_text() == history  # resumed at its end: nothing retrained
    assert (cell / "cell.json").is_file()


def test_compare_command_keeps_finished_cells(grid: tuple[Path, Path, Path],
                                              capsys: pytest.CaptureFixture) -> None:
    data, weights, out = grid
    argv = ["compare", "--data", str(data), "--models", "test_resnet", "--strategies", "scratch,probe",
            "--epochs", "1", "--out", str(out), "--weights", f"test_resnet={weights}",
            "--image-size", "32", "--batch-size", "8", "--num-workers", "0", "--set", "lr=0.01"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 finished cell(s) kept" in printed and "compare.html" in printed
    assert main([*argv[:6], "scratch,bogus", *argv[7:]]) == 2
    assert "cell test_resnet-bogus" in capsys.readouterr().err


def test_the_whole_grid_is_validated_before_training(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=2)
    with pytest.raises(ConfigError) as err:
        compare(data, ["test_resnet", "resnet_nope"], ["probe", "bogus"], epochs=1, out=tmp_path / "o")
    text = str(err.value)
    assert "cell test_resnet-bogus" in text and "cell resnet_nope-probe" in text
    assert not (tmp_path / "o" / "cells").exists()
    with pytest.raises(ConfigError, match="not in --models"):
        compare(data, ["test_resnet"], ["probe"], epochs=1, out=tmp_path / "o", weights={"vit": "w"})
    with pytest.raises(ConfigError, match="repeats"):
        plan_cells(["a", "a"], ["probe"])
    assert parse_weights("a=x.safetensors, b=y.pth") == {"a": "x.safetensors", "b": "y.pth"}
    assert parse_weights("w.safetensors") == "w.safetensors"


def test_settings_for_some_cells_only(tmp_path: Path) -> None:
    base = {"lr": 0.001, "group_lrs": {"fc.*": 0.1}, "probe": {"lr": 0.02}, "resnet18": {"batch_size": 4}}
    probe, scratch, other = (cell_config(c, base, "w.safetensors", tmp_path) for c in plan_cells(
        ["test_resnet", "resnet18"], ["probe", "scratch"])[:3])
    assert (probe["lr"], probe["weights"], "probe" not in probe) == (0.02, "w.safetensors", True)
    assert (scratch["lr"], "weights" not in scratch) == (0.001, True)
    assert scratch["group_lrs"] == {"fc.*": 0.1}  # a real mapping-valued key stays shared
    assert (other["model"], other["batch_size"], other["lr"]) == ("resnet18", 4, 0.02)
    with pytest.raises(ConfigError, match="'finetune' is not a model, strategy"):
        compare(tmp_path, ["test_resnet"], ["probe"], epochs=1, out=tmp_path / "o",
                settings={"finetune": {"lr": 0.1}})


def test_tracker_asked_for_but_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_mlflow_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'stagewise\[mlflow\]'"):
        trackers.open_tracker("mlflow", tmp_path, "run")
    with pytest.raises(ConfigError, match="choose one of none, tensorboard, mlflow, wandb"):
        trackers.open_tracker("comet", tmp_path, "run")
    assert trackers.open_tracker(None, tmp_path, "run") is None
    with pytest.raises(ConfigError, match="mlflow package is not installed"):  # before any training
        compare(tmp_path, ["test_resnet"], ["probe"], epochs=1, out=tmp_path / "o", log_with="mlflow")
    assert not (tmp_path / "o").exists()


def test_epochs_logged_to_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = trackers.open_tracker("tensorboard", tmp_path, "cell", {"lr": 0.01, "freeze": []})
    records = [{"epoch": e, "val_top1": 0.5 + 0.1 * e, "train_loss": 1.0 / e, "event": "x",
                "lr": {"layer0": 0.1 / e, "layer1": 0.2 / e}} for e in (1, 2, 3)]
    for r in records:
        trackers.log_epoch(tracker, r)
    trackers.close_tracker(tracker)
    events = EventAccumulator(str(tmp_path / "tensorboard" / "cell"))
    events.Reload()
    assert {"val_top1", "train_loss", "lr/layer0", "lr/layer1"} <= set(events.Tags()["scalars"])
    logged = [(s.step, round(s.value, 6)) for s in events.Scalars("val_top1")]
    assert logged == [(1, 0.6), (2, 0.7), (3, 0.8)]


def test_compare_from_python_without_models_uses_the_command_lines_default_set(tmp_path: Path,
                                                                               monkeypatch) -> None:
    """`compare(data, epochs=..., out=...)` plans the same grid as `stagewise compare` without
    --models/--strategies (the plan is caught before anything trains)."""
    import stagewise.runs.comparison as comparison
    from stagewise.defaults import COMPARE_MODELS

    planned: list[tuple[list[str], list[str]]] = []

    def catch(models, strategies, *rest):
        planned.append((models, strategies))
        raise RuntimeError("planned")

    monkeypatch.setattr(comparison, "plan_cells", catch)
    with pytest.raises(RuntimeError, match="planned"):
        comparison.compare(tmp_path / "data", epochs=1, out=tmp_path / "cmp")
    assert planned == [(list(COMPARE_MODELS), ["finetune"])]
