"""Failure paths and edge cases: a failed setup leaves no half-made run, a kill between a stage's
end and the final files heals on --resume, a resumed stage refuses changed settings, pipeline
validation catches what it used to miss, and bad names fail with a clear error."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.errors import ConfigError, TrainingInterrupted, WeightsError
from stagewise.runfolder import read_split

FAST = {"model": "test_resnet", "image_size": 32, "batch_size": 8, "num_workers": 0, "seed": 0,
        "lr": 0.01, "augmentation": "none", "report": False}


def _two_stages(tmp: Path) -> dict:
    a = make_image_folder(tmp / "a", classes=("red", "green"), per_class=8)
    b = make_image_folder(tmp / "b", classes=("red", "green", "blue"), per_class=6, seed=1)
    return {"defaults": {**FAST, "epochs": 1}, "stages": [
        {"name": "s1", "data": str(a), "strategy": "scratch"},
        {"name": "s2", "data": str(b), "strategy": "finetune"}]}


# --- one stage ---------------------------------------------------------------------------------

def test_setup_error_does_not_leave_a_run_that_needs_resume(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="class_weights: 2 values for 3 classes"):
        stagewise.train(tiny_config(data, out, epochs=1, class_weights=[1.0, 2.0]), reporter="quiet")
    assert not (out / "config.yaml").exists()
    # The corrected command runs in the same folder, without --resume.
    result = stagewise.train(tiny_config(data, out, epochs=1, class_weights=[1.0, 2.0, 1.0]),
                             reporter="quiet")
    assert result.stopped == "completed"


def test_fresh_run_replaces_the_split_of_a_failed_attempt(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=8, splits=())  # class folders only
    other = timm.create_model("test_efficientnet", num_classes=3).state_dict()
    bad = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(bad))
    out = tmp_path / "run"
    with pytest.raises(WeightsError, match="do not fit"):
        stagewise.train(tiny_config(data, out, val_fraction=0.5, weights=str(bad), strategy="probe"),
                        reporter="quiet")
    result = stagewise.train(tiny_config(data, out, epochs=1, val_fraction=0.25), reporter="quiet")
    split = read_split(out)
    assert len(split["splits"]["val"]) == result.history[0]["val_images"] == 6  # 2 of 8 per class


def test_nan_metric_counts_as_an_epoch_without_improvement() -> None:
    from stagewise.training.stopping import StopTracker, improved, stop_reason

    cfg = stagewise.TrainConfig(data="x", early_stopping=2)
    tracker = StopTracker()
    assert improved(cfg, tracker, {"epoch": 1, "val_top1": 0.5})
    assert not improved(cfg, tracker, {"epoch": 2, "val_top1": math.nan})
    assert not improved(cfg, tracker, {"epoch": 3, "val_top1": math.nan})
    assert tracker.best == 0.5 and tracker.best_epoch == 1
    assert "early stopping" in stop_reason(cfg, tracker, {"epoch": 3, "val_top1": math.nan})


# --- pipelines ---------------------------------------------------------------------------------

def test_resume_rewrites_final_files_a_kill_left_stale(tmp_path: Path) -> None:
    spec = _two_stages(tmp_path)
    run = tmp_path / "run"
    stagewise.run(spec, run, reporter="quiet")
    # A SIGKILL after the manifest marked s2 done but before the final files were replaced.
    (run / "final.safetensors").write_bytes((run / "stages/s1/best.safetensors").read_bytes())
    (run / "model.json").write_text((run / "stages/s1/model.json").read_text())
    (run / "history.json").unlink()

    result = stagewise.run(spec, run, reporter="quiet", resume=True)
    final, s2 = load_file(str(run / "final.safetensors")), load_file(str(run / "stages/s2/best.safetensors"))
    assert final.keys() == s2.keys() and all(torch.equal(final[k], s2[k]) for k in s2)
    meta = json.loads((run / "model.json").read_text())
    assert meta["stage"] == "s2" and meta["class_ids"] == ["blue", "green", "red"]
    assert [s["name"] for s in result.history["stages"]] == ["s1", "s2"]


def test_resumed_stage_refuses_changed_settings(tmp_path: Path) -> None:
    spec = _two_stages(tmp_path)
    run = tmp_path / "run"
    stagewise.run(spec, run, reporter="quiet")
    manifest = json.loads((run / "pipeline.json").read_text())
    manifest["stages"]["s2"]["status"] = "running"  # as a kill mid-stage leaves it
    (run / "pipeline.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"would change the run .*lr: 0.01 -> 0.5"):
        stagewise.run(spec, run, reporter="quiet", resume=True, overrides=["stages.s2.lr=0.5"])
    # A finished stage is not silently kept when the pipeline now asks for other settings.
    with pytest.raises(ConfigError, match=r"stages/s1: epochs: 1 -> 3"):
        stagewise.run(spec, run, reporter="quiet", resume=True, overrides=["stages.s1.epochs=3"])
    result = stagewise.run(spec, run, reporter="quiet", resume=True)
    assert result.stages["s2"]["status"] == "done"


def test_interrupted_stage_prints_the_pipeline_resume_command(tmp_path: Path, monkeypatch) -> None:
    from stagewise.training import progress

    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(_two_stages(tmp_path)))
    # SIGTERM arrives during the first stage's epoch: the stage saves and stops.
    monkeypatch.setattr(progress.QuietReporter, "batch",
                        lambda self, *a: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted) as err:
        stagewise.run(path, tmp_path / "run", reporter="quiet", overrides=["defaults.seed=0"])
    assert err.value.exit_code == 143
    assert err.value.resume_hint == f"stagewise run --out {tmp_path / 'run'} --resume"
    assert (tmp_path / "run/stages/s1/last/state.pt").is_file()


def _problems(spec: dict, overrides: list[str] = ()) -> str:
    from stagewise.runs.plan import load_pipeline

    with pytest.raises(ConfigError) as err:
        load_pipeline(spec, list(overrides))
    return str(err.value)


def test_pipeline_validation_gaps(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", per_class=2)
    # baseline 'pretrained' needs weights whatever the stage's init.
    text = _problems({"defaults": FAST, "stages": [{"name": "a", "data": str(data), "baseline": "pretrained"}]})
    assert "baseline 'pretrained' needs weights" in text
    # An undefined variable is one problem, not also a missing folder named '${root}'.
    text = _problems({"defaults": FAST, "stages": [{"name": "a", "data": "${root}/x"}]})
    assert "1 problem(s)" in text and "${root}" in text and "not found" not in text
    # A --set for a variable the file never uses is a mistake, not silently ignored.
    text = _problems({"defaults": FAST, "stages": [{"name": "a", "data": str(data)}]}, ["lr=0.1"])
    assert "uses no variable ${lr}" in text and "defaults.lr=" in text


def test_set_reaches_stages_with_dots_or_default_names(tmp_path: Path) -> None:
    from stagewise.runs.plan import load_pipeline

    data = str(make_image_folder(tmp_path / "d", per_class=2))
    spec = {"defaults": FAST, "stages": [{"name": "v1.0", "data": data}, {"data": data}]}
    plan = load_pipeline(spec, ["stages.v1.0.lr=0.5", "stages.stage2.epochs=3"])
    assert plan.stage("v1.0").config.lr == 0.5 and plan.stage("stage2").config.epochs == 3
    assert "expected stages.v1.0.KEY=VALUE" in _problems(spec, ["stages.v1.0=1"])
    assert "no stage named 'v2'" in _problems(spec, ["stages.v2.lr=1"])


# --- models and inference ----------------------------------------------------------------------

def test_head_name_match_needs_one_class_on_each_side() -> None:
    from stagewise.models.head import _match_rows

    src_ids, src_names = ["n01", "n02", "n03"], ["goldfish", "tench", "shark"]
    # 'goldfish' is taken by id already; a second class may not claim its row by name.
    pairs, by_name = _match_rows(["n01", "goldfish"], None, src_ids, src_names)
    assert pairs == [(0, 0)] and by_name == 0
    # Two new classes that normalise to one name: ambiguous, neither is matched.
    pairs, by_name = _match_rows(["gold fish", "gold_fish", "tench"], None, src_ids, src_names)
    assert pairs == [(2, 1)] and by_name == 1


def test_torchvision_only_names_are_built_by_torchvision() -> None:
    from stagewise.models.build import resolve_model_name

    # torchvision's own network, so its checkpoints load as saved (timm's are other layouts)
    assert resolve_model_name("efficientnet_v2_s") == "tv:efficientnet_v2_s"
    assert resolve_model_name("shufflenet_v2_x1_0") == "tv:shufflenet_v2_x1_0"


def test_unknown_or_absent_device_is_a_clear_error() -> None:
    from stagewise.inference.artifact import pick_device

    with pytest.raises(ConfigError, match="not a device name"):
        pick_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA GPU"):
            pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


def test_evaluate_all_splits_of_an_array_dataset(tmp_path: Path) -> None:
    from stagewise.data.transforms import Preprocess
    from stagewise.inference import Classifier, evaluate
    from test_layouts import write_cifar10

    write_cifar10(tmp_path / "cifar-10-batches-py", n=6)  # 12 train + 4 test images
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    clf = Classifier(timm.create_model("test_resnet", num_classes=10), names, names,
                     Preprocess(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
    result = evaluate(clf, tmp_path, split="all", num_workers=0)
    assert result.images == 16


def test_compare_row_reports_the_kept_epoch(tmp_path: Path) -> None:
    """A measured epoch 0 is a candidate: the starting weights stay best until a trained epoch
    beats them (#22 item 11), and the row reports what best.safetensors holds."""
    from stagewise.runs.comparison import Cell, cell_row

    data = make_image_folder(tmp_path / "d", per_class=2, splits=("train", "val"))
    cell_dir = tmp_path / "cell"
    cell_dir.mkdir()
    # A matched head scores 0.9 before training (epoch 0); the trained epoch 1 is worse.
    records = [{"epoch": 0, "val_top1": 0.9}, {"epoch": 1, "val_top1": 0.6, "train_top1": 0.7}]
    (cell_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    row = cell_row(Cell("test_resnet", "probe"), cell_dir, {"data": str(data), "monitor": "val_top1"})
    assert row["best_epoch"] == 0 and row["val_top1"] == 0.9
    records[1]["val_top1"] = 0.95  # a trained epoch that beats the start replaces it
    (cell_dir / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    row = cell_row(Cell("test_resnet", "probe"), cell_dir, {"data": str(data), "monitor": "val_top1"})
    assert row["best_epoch"] == 1 and row["val_top1"] == 0.95
