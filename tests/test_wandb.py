"""`log_with: wandb` with WANDB_MODE=offline: the offline run under the run folder holds the
config, every tracked metric of every epoch, the report's plots and the model artifact; a
pipeline stage's steps follow the earlier stages'; a missing wandb is a clear exit 2."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_image_folder
from stagewise.cli import main
from stagewise.metrics import tracked
from stagewise.runfolder import WANDB_RUN, read_config, read_history

pytest.importorskip("wandb")

_BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of framed records


def _records(path: Path) -> Iterator[bytes]:
    """The records of a .wandb file (wandb 0.2x+ has no Python reader of its own)."""
    raw, pos, chunk = path.read_bytes(), 7, b""  # 7: the ':W&B' header with its version
    while pos + 7 <= len(raw):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, size, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + size], pos + 7 + size
        if kind in (1, 2):  # full record, or the first part of one
            chunk = data
        elif kind in (3, 4):  # middle or last part
            chunk += data
        if kind in (1, 4):
            yield chunk


def _offline_run(run_dir: Path) -> dict:
    """History rows, config, artifacts and media files of every offline W&B run of `run_dir`."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_id = json.loads((run_dir / WANDB_RUN).read_text())["id"]
    found: dict = {"history": [], "config": {}, "artifacts": [], "media": []}
    folders = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert folders, f"no offline W&B run {run_id} under {run_dir / 'wandb'}"
    for folder in folders:
        found["media"] += [p.name for p in (folder / "files" / "media").rglob("*.png")]
        for data in _records(next(folder.glob("*.wandb"))):
            record = pb.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                found["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                         for i in record.history.item})
            elif kind in ("config", "run"):
                items = record.config.update if kind == "config" else record.run.config.update
                found["config"].update({i.key: json.loads(i.value_json) for i in items})
            elif kind == "artifact":
                found["artifacts"].append((record.artifact.type, record.artifact.name))
    return found


def test_wandb_offline_run_holds_the_metrics_plots_and_model(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    data = make_image_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "test_resnet", "--out", str(run), "--quiet",
                 "--set", "image_size=32", "--set", "epochs=2", "--set", "batch_size=8",
                 "--set", "num_workers=0", "--set", "augmentation=none", "--set", "log_with=wandb",
                 "--set", "wandb_log_model=true"]) == 0
    import wandb

    wandb.teardown()  # stops wandb-core, which writes the .wandb files: all records are on disk
    found = _offline_run(run)
    history = read_history(run)
    by_step = {row["_step"]: row for row in found["history"] if "val_top1" in row}
    assert sorted(by_step) == [r["epoch"] for r in history] == [1, 2]
    for record in history:
        row = by_step[record["epoch"]]
        for key in tracked():
            if isinstance(record.get(key), (int, float)):
                assert row[key] == pytest.approx(record[key]), key
        assert any(k.startswith("lr/") for k in row)
    saved = read_config(run)
    for key in ("model", "lr", "strategy", "epochs", "image_size"):
        assert found["config"][key] == saved[key], key
    # the report's plots as images, and the best weights as a model artifact
    images = {"/".join(k.split("/")[:2]) for row in found["history"] for k in row
              if k.startswith("report/")}
    assert {"report/curves", "report/confusion"} <= images
    assert any(name.startswith("curves") for name in found["media"])
    assert found["artifacts"] and found["artifacts"][0][0] == "model"


def test_pipeline_stage_steps_follow_the_earlier_stages(tmp_path):
    from stagewise.runfolder import stage_dir, write_history, write_manifest
    from stagewise.training.wandb_tracker import placement

    pipe = tmp_path / "pipe"
    write_manifest(pipe, {"format": "stagewise.pipeline/1", "name": "p", "pipeline": {},
                          "overrides": [], "order": ["probe", "finetune"], "stages": {}})
    stage_dir(pipe, "probe").mkdir(parents=True)
    write_history(stage_dir(pipe, "probe"), [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
    where = placement(stage_dir(pipe, "finetune"))
    assert (where.group, where.stage, where.stage_index, where.step_offset) == ("pipe", "finetune", 1, 3)
    assert placement(stage_dir(pipe, "probe")).step_offset == 0
    assert placement(pipe / "baselines" / "finetune").job_type == "baseline"
    assert placement(tmp_path / "alone").group is None


def test_missing_wandb_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    data = make_image_folder(tmp_path / "data", per_class=2)
    code = main(["train", "--data", str(data), "--model", "test_resnet", "--out", str(tmp_path / "run"),
                 "--quiet", "--set", "log_with=wandb"])
    assert code == 2
    assert "pip install 'stagewise[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "history.jsonl").exists()


def test_a_run_wandb_cannot_start_says_how_to_log_in(tmp_path, monkeypatch):
    import wandb

    from stagewise.errors import ConfigError
    from stagewise.training.trackers import open_tracker

    def refuse(**kwargs: object) -> None:
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(ConfigError, match="wandb login.*WANDB_MODE=offline"):
        open_tracker("wandb", tmp_path, "run", {"lr": 0.1})
    assert not (tmp_path / WANDB_RUN).exists()
