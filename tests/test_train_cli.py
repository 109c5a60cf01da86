"""`stagewise train` end to end: output formats, stopping rules and the training options."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.errors import ConfigError, NonFiniteLoss


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("train_cli") / "data", per_class=8)


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "test_resnet", "--image-size", "32",
            "--batch-size", "8", "--num-workers", "0", "--lr", "0.01", "--out", str(out), *extra]


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_json_lines_end_to_end(data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "stagewise",
                           *_args(data, tmp_path / "run", "--epochs", "2", "--log-format", "json",
                                  "--strategy", "finetune", "--set", "freeze_epochs=1")],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
    kinds = [e["event"] for e in events]
    assert kinds.count("epoch") == 2 and kinds[-1] == "done" and "message" in kinds
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(math.isfinite(e["train_loss"]) and 0 <= e["val_top1"] <= 1 for e in epochs)
    done = events[-1]
    assert done["stopped"] == "completed" and Path(done["run_dir"]) == tmp_path / "run"
    # An epoch's own event (finetune with a head-only first epoch unfreezes at epoch 2) comes as
    # its "note".
    lines = [{**{k: v for k, v in e.items() if k not in ("event", "note")},
              **({"event": e["note"]} if "note" in e else {})} for e in epochs]
    assert _history(tmp_path / "run") == lines
    assert epochs[1]["note"].startswith("unfreeze")


def test_run_folder_contents(data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(_args(data, run, "--epochs", "2")) == 0
    printed = capsys.readouterr().out
    assert "epoch   1" in printed and "done (completed)" in printed
    for name in ("config.yaml", "split.npz", "history.jsonl", "best.safetensors", "model.json",
                 "confusion.json", "last/model.safetensors", "last/state.pt"):
        assert (run / name).is_file(), name
    meta = json.loads((run / "model.json").read_text())
    history = _history(run)
    best = max(history, key=lambda r: r["val_top1"])
    assert meta["architecture"] == "test_resnet" and meta["num_classes"] == 3
    assert meta["class_ids"] == ["alpha", "beta", "gamma"] and meta["weights"] == "best.safetensors"
    assert meta["preprocess"]["image_size"] == 32 and meta["metrics"]["epoch"] == best["epoch"]
    confusion = json.loads((run / "confusion.json").read_text())
    assert confusion["epoch"] == best["epoch"]
    assert [sum(row) for row in confusion["matrix"]] == [8, 8, 8]
    correct = sum(confusion["matrix"][i][i] for i in range(3))
    assert correct / 24 == pytest.approx(best["val_top1"])
    keys = {"epoch", "global_step", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
            "val_images", "lr", "trainable_params", "total_params", "groups_unfrozen",
            "groups_total", "epoch_seconds", "images_per_sec", "bad_images", "skipped_steps"}
    assert all(keys <= set(r) for r in history)
    assert [r["global_step"] for r in history] == [3, 6]


def test_quiet_prints_nothing(data: Path, tmp_path: Path, capsys) -> None:
    assert main(_args(data, tmp_path / "run", "--epochs", "1", "--quiet")) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(_history(tmp_path / "run")) == 1


def test_early_stopping_stops_the_stage(data: Path, tmp_path: Path) -> None:
    # A frozen backbone and a negligible LR: val top-1 cannot improve after the first epoch.
    result = stagewise.train(tiny_config(data, tmp_path / "run", strategy="probe", lr=1e-12,
                                         epochs=10, early_stopping=2), reporter="quiet")
    assert len(result.history) == 3 and len(_history(result.run_dir)) == 3
    assert result.stopped == "early stopping: no val_top1 improvement in 2 epochs"
    assert result.best["epoch"] == 1


def test_target_stops_the_stage(data: Path, tmp_path: Path) -> None:
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=8, target=0.6), reporter="quiet")
    tops = [r["val_top1"] for r in result.history]
    first = next(i for i, t in enumerate(tops) if t >= 0.6)  # the data is separable: it gets there
    assert len(tops) == first + 1 < 8
    assert result.stopped.startswith("target val_top1 0.6 reached")


def test_time_budget_stops_the_stage(data: Path, tmp_path: Path) -> None:
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=5, max_minutes=1e-6),
                             reporter="quiet")
    assert len(result.history) == 1 and result.stopped.startswith("time budget")


def test_epochs_0_evaluates_the_starting_weights(data: Path, tmp_path: Path, capsys) -> None:
    torch.manual_seed(7)
    start = {k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=3).state_dict().items()}
    save_file(start, str(tmp_path / "start.safetensors"))
    run = tmp_path / "run"
    assert main(_args(data, run, "--epochs", "0", "--weights", str(tmp_path / "start.safetensors"))) == 0
    assert "done (evaluated): best val top1" in capsys.readouterr().out
    (record,) = _history(run)
    assert record["epoch"] == 0 and record["val_images"] == 24 and "train_loss" not in record
    best = load_file(str(run / "best.safetensors"))
    assert all(torch.equal(best[k], start[k]) for k in start if not k.startswith("fc."))
    meta = json.loads((run / "model.json").read_text())
    assert meta["metrics"]["val_top1"] == record["val_top1"]
    assert not (run / "last").exists()


@pytest.mark.parametrize("options", [
    {"ema": 0.9},
    {"mixup": 0.4},
    {"mixup": 0.2, "cutmix": 1.0, "label_smoothing": 0.1},
    {"label_smoothing": 0.2},
    {"class_weights": "balanced"},
    {"class_weights": [1.0, 2.0, 0.5]},
    {"grad_accum": 2},
    {"grad_clip": 0.5, "optimizer": "sgd", "nesterov": True},
    {"channels_last": True},
    {"augmentation": "strong"},
], ids=lambda o: ",".join(o))
def test_training_options_give_finite_losses(data: Path, tmp_path: Path, options: dict) -> None:
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=2, **options), reporter="quiet")
    assert result.stopped == "completed" and len(result.history) == 2
    for r in result.history:
        assert math.isfinite(r["train_loss"]) and r["train_loss"] > 0
        assert math.isfinite(r["val_loss"]) and r["skipped_steps"] == 0
    if "ema" in options:
        assert (result.run_dir / "last" / "ema.safetensors").is_file()


def test_mixup_drops_the_odd_last_batch(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", per_class=3)  # 9 train images, batch 8: 8 + 1
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=1, mixup=0.4), reporter="quiet")
    assert result.history[0]["global_step"] == 1


def test_grad_accum_steps_per_epoch_and_schedule_end(data: Path, tmp_path: Path) -> None:
    # 3 batches per epoch, 2 per step: each epoch ends with a short window of its own.
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=2, grad_accum=2,
                                         scheduler="cosine", min_lr=1e-4), reporter="quiet")
    assert [r["global_step"] for r in result.history] == [2, 4]
    assert all(lr == pytest.approx(1e-4) for lr in result.history[-1]["lr"].values())


def test_class_weights_must_match_the_classes(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="class_weights: 2 values for 3 classes"):
        stagewise.train(tiny_config(data, tmp_path / "run", class_weights=[1.0, 2.0]), reporter="quiet")


def test_last_batch_of_one_image_is_dropped(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", per_class=3)  # 9 train images, batch 8
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=1), reporter="quiet")
    assert result.history[0]["global_step"] == 1 and math.isfinite(result.history[0]["train_loss"])


def test_non_finite_loss_stops_with_a_clear_error(data: Path, tmp_path: Path, capsys,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A diverging run, made certain: the loss is NaN from the first step (an LR high enough to
    # diverge is refused by the config's bounds).
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward",
                        lambda self, logits, target: logits.sum() * float("nan"))
    with pytest.raises(NonFiniteLoss, match="NaN/inf"):
        stagewise.train(tiny_config(data, tmp_path / "api", optimizer="sgd",
                                    scheduler="constant"), reporter="quiet")
    code = main(_args(data, tmp_path / "cli", "--optimizer", "sgd", "--quiet"))
    err = capsys.readouterr().err
    assert code == 2 and "Lower the LR" in err and "Traceback" not in err
