"""The metric registry (metrics.py) is the one table every consumer reads: the epoch record and
the table cannot drift, and every metric a stage records reaches its tracker."""

from __future__ import annotations

from pathlib import Path
from typing import get_type_hints

import pytest

import stagewise
from conftest import make_identity_folder, make_image_folder, tiny_config
from stagewise import metrics
from stagewise.kinds import TASKS
from stagewise.runfolder import CARD_METRICS, EpochRecord, best_record


def test_every_epoch_record_key_is_in_the_registry_and_back() -> None:
    recorded = set(get_type_hints(EpochRecord))
    assert recorded - set(metrics.METRICS) == set(), "add these to metrics.py's table"
    assert set(metrics.METRICS) - recorded == set(), "add these to runfolder.EpochRecord"


def test_each_task_monitors_what_it_measures() -> None:
    for task in TASKS.values():
        assert task.default_monitor in task.monitors and task.score in task.monitors
        assert all(metrics.metric(m).task == task.name for m in task.monitors)
    assert set(CARD_METRICS) >= {"val_top1", "val_map", "epoch"}


def test_direction_comes_from_the_registry() -> None:
    records = [{"epoch": 1, "val_loss": 0.5, "val_top1": 0.7},
               {"epoch": 2, "val_loss": 0.4, "val_top1": 0.6}]
    assert best_record(records, "val_loss")["epoch"] == 2
    assert best_record(records, "val_top1")["epoch"] == 1
    loss = metrics.metric("val_loss")
    assert loss.better(0.3, 0.4) and not loss.better(float("nan"), 0.4) and loss.better(1.0, None)
    with pytest.raises(KeyError, match="known: epoch"):
        metrics.metric("val_accuracy")


def test_summary_shows_what_the_record_measured() -> None:
    line = metrics.summary({"train_loss": 1.0, "train_top1": 0.5, "val_loss": 2.0, "val_top1": 0.25,
                            "val_top5": 1.0})
    assert line == "train loss 1.0000 acc 0.5000 | val loss 2.0000 top1 0.2500 top5 1.0000"
    assert metrics.summary({"val_map": 0.5, "val_recall1": 0.75}) == "train - | val R@1 0.7500 mAP 0.5000"


def _scalars(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_an_embed_stage_logs_its_retrieval_metrics_to_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("pytorch_metric_learning", reason="embed stages need stagewise[retrieval]")
    pytest.importorskip("faiss", reason="embed stages need stagewise[retrieval]")
    data = make_identity_folder(tmp_path / "ids", identities=12, views=4)
    cfg = tiny_config(data, tmp_path / "run", task="embed", strategy="scratch", batch_size=16,
                      val_fraction=0.3, epochs=1, metric_loss="supcon", log_with="tensorboard")
    stagewise.train(cfg, reporter="quiet")
    logged = _scalars(tmp_path / "run")
    assert {"val_map", "val_map_at_r", "val_recall1", "val_recall5", "val_recall10"} <= logged
    assert "train_loss" in logged and "val_top1" not in logged


def test_a_distilled_stage_logs_its_distillation_loss_to_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    data = make_image_folder(tmp_path / "data", per_class=6)
    teacher = stagewise.train(tiny_config(data, tmp_path / "teacher", epochs=1), reporter="quiet")
    cfg = tiny_config(data, tmp_path / "student", epochs=1, teacher=str(teacher.run_dir),
                      log_with="tensorboard")
    stagewise.train(cfg, reporter="quiet")
    logged = _scalars(tmp_path / "student")
    assert {"train_distill_loss", "train_loss", "val_top1", "val_top5"} <= logged
