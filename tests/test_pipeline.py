"""Pipelines: chained stages, class-aware handoff, resume after SIGKILL, validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import stagewise
from conftest import make_image_folder
from stagewise.errors import ConfigError, StagewiseError

FAST = {"model": "test_resnet", "image_size": 32, "batch_size": 8, "num_workers": 0, "seed": 0,
        "lr": 0.01, "optimizer": "adamw", "scheduler": "cosine", "augmentation": "none"}


def _folders(tmp: Path) -> tuple[Path, Path, Path]:
    a = make_image_folder(tmp / "a", classes=("red", "green", "blue"), per_class=12)
    b = make_image_folder(tmp / "b", classes=("red", "green", "blue", "cyan"), per_class=10, seed=1)
    c = make_image_folder(tmp / "c", classes=("red", "cyan", "white", "green", "blue"), per_class=8, seed=2)
    return a, b, c


def _pipeline(tmp: Path, epochs: tuple[int, int, int] = (2, 2, 1), **extra) -> dict:
    a, b, c = _folders(tmp)
    return {"defaults": {**FAST, **extra},
            "stages": [{"name": "s1", "data": str(a), "strategy": "scratch", "epochs": epochs[0]},
                       {"name": "s2", "data": str(b), "strategy": "finetune", "epochs": epochs[1]},
                       {"name": "s3", "data": str(c), "strategy": "gradual", "epochs": epochs[2],
                        "init": "s1"}]}


def test_three_stage_pipeline_from_python(tmp_path: Path) -> None:
    result = stagewise.run(_pipeline(tmp_path), tmp_path / "run", reporter="quiet")
    run = tmp_path / "run"
    manifest = json.loads((run / "pipeline.json").read_text())
    assert [manifest["stages"][s]["status"] for s in ("s1", "s2", "s3")] == ["done"] * 3
    assert manifest["stages"]["s3"]["parent"] == "s1"
    assert result.stages["s2"]["head"] == {"mode": "match", "kept": 3, "total": 4, "by_name": 0,
                                           "source": "stage 's1'"}
    history = json.loads((run / "history.json").read_text())
    assert [s["first_epoch"] for s in history["stages"]] == [1, 3, 5]
    assert [e["global_epoch"] for e in history["epochs"]] == [1, 2, 3, 4, 5]
    final = load_file(str(run / "final.safetensors"))
    assert torch.equal(final["fc.weight"], load_file(str(run / "stages/s3/best.safetensors"))["fc.weight"])
    meta = json.loads((run / "model.json").read_text())
    assert meta["weights"] == "final.safetensors" and meta["class_ids"] == ["blue", "cyan", "green", "red", "white"]


def test_pipeline_cli_runs_and_lists_stages(tmp_path: Path) -> None:
    spec = tmp_path / "pipe.yaml"
    spec.write_text(yaml.safe_dump(_pipeline(tmp_path, epochs=(1, 1, 1))))
    proc = subprocess.run([sys.executable, "-m", "stagewise", "run", str(spec), "--out",
                           str(tmp_path / "run"), "--stages", "s1,s2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert manifest["stages"]["s3"]["status"] == "skipped"
    assert "pipeline summary" in proc.stdout


def test_head_rows_of_shared_classes_are_copied_exactly(tmp_path: Path) -> None:
    stagewise.run(_pipeline(tmp_path, epochs=(1, 1, 1)), tmp_path / "run", reporter="quiet", stages=["s1"])
    s1 = load_file(str(tmp_path / "run/stages/s1/best.safetensors"))
    ids1 = json.loads((tmp_path / "run/stages/s1/model.json").read_text())["class_ids"]
    # s2 with zero epochs evaluates the handed-over weights without training them.
    stagewise.run(_pipeline(tmp_path, epochs=(1, 0, 1)), tmp_path / "run", reporter="quiet",
                  stages=["s2"], resume=True)
    s2 = load_file(str(tmp_path / "run/stages/s2/best.safetensors"))
    ids2 = json.loads((tmp_path / "run/stages/s2/model.json").read_text())["class_ids"]
    for new_row, cid in enumerate(ids2):
        if cid in ids1:
            old = ids1.index(cid)
            assert torch.equal(s2["fc.weight"][new_row], s1["fc.weight"][old])
            assert torch.equal(s2["fc.bias"][new_row], s1["fc.bias"][old])
        else:
            assert not any(torch.equal(s2["fc.weight"][new_row], row) for row in s1["fc.weight"])
    assert torch.equal(s2["conv1.0.weight"], s1["conv1.0.weight"])


def test_handoff_beats_scratch_baseline_on_first_epoch(tmp_path: Path) -> None:
    a = make_image_folder(tmp_path / "a", classes=("red", "green", "blue", "yellow"), per_class=24)
    b = make_image_folder(tmp_path / "b", classes=("red", "green", "blue", "yellow", "white"),
                          per_class=6, seed=3)
    spec = {"defaults": FAST, "stages": [
        {"name": "easy", "data": str(a), "strategy": "scratch", "epochs": 3},
        {"name": "hard", "data": str(b), "strategy": "finetune", "epochs": 1, "lr": 0.001,
         "baseline": "scratch"}]}
    result = stagewise.run(spec, tmp_path / "run", reporter="quiet")
    hard = result.stages["hard"]
    assert hard["baseline"]["kind"] == "scratch"
    assert hard["first_epoch_val_top1"] > hard["baseline"]["first_epoch_val_top1"]
    assert hard["gain"]["first_epoch"] > 0
    # The verdict: wall times (the earlier stage's counted against the handoff) and whether it paid.
    gain, easy = hard["gain"], result.stages["easy"]
    assert gain["baseline_s"] == pytest.approx(hard["baseline"]["wall_seconds"]) and gain["baseline_s"] > 0
    if gain["epochs_to_baseline_best"] is not None:
        assert gain["time_to_baseline_best_s"] > easy["wall_seconds"] > 0
        assert gain["pays"] == (gain["time_to_baseline_best_s"] < gain["baseline_best_s"])
    else:
        assert gain["time_to_baseline_best_s"] is None and gain["pays"] is False
    assert hard["score"] == "val_top1" and hard["best_score"] == hard["best_val_top1"]


def test_validation_lists_every_problem_at_once(tmp_path: Path) -> None:
    a, _, _ = _folders(tmp_path)
    spec = {"defaults": {**FAST, "epochs": 1}, "stages": [
        {"name": "s1", "data": str(a), "optimizer": "adamx"},
        {"name": "s2", "data": str(tmp_path / "missing"), "init": "s3"},
        {"name": "s3", "data": str(a), "init": "nowhere", "lr": "fast"},
        {"name": "s1", "data": "${undefined_root}/x"}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        stagewise.run(path, tmp_path / "run")
    text = str(err.value)
    for needle in ("adamx", "missing", "later stage 's3'", "'nowhere' is not a stage", "lr",
                   "duplicate stage name 's1'", "undefined_root"):
        assert needle in text, needle
    assert not (tmp_path / "run").exists()
    proc = subprocess.run([sys.executable, "-m", "stagewise", "run", str(path), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "adamx" in proc.stderr


def test_set_overrides_a_stage_key_and_variables(tmp_path: Path) -> None:
    from stagewise.runs.plan import load_pipeline

    a, b, _ = _folders(tmp_path)
    spec = {"vars": {"root": str(tmp_path)}, "defaults": FAST, "stages": [
        {"name": "s1", "data": "${root}/a"}, {"name": "s2", "data": "${root}/b"}]}
    plan = load_pipeline(spec, ["stages.s2.lr=0.5", "defaults.epochs=7"], tmp_path / "out")
    assert plan.stage("s2").config.lr == 0.5 and plan.stage("s1").config.lr == FAST["lr"]
    assert plan.stage("s1").config.epochs == 7
    assert plan.stage("s1").config.data == a
    assert plan.stage("s2").config.out == tmp_path / "out" / "stages" / "s2"


def test_finished_stage_with_changed_artifact_is_not_silently_reused(tmp_path: Path) -> None:
    spec = _pipeline(tmp_path, epochs=(1, 1, 1))
    stagewise.run(spec, tmp_path / "run", reporter="quiet", stages=["s1"])
    with open(tmp_path / "run/stages/s1/best.safetensors", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(StagewiseError, match="hash mismatch"):
        stagewise.run(spec, tmp_path / "run", reporter="quiet", resume=True)


def test_sigkill_mid_stage_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    spec = _pipeline(tmp_path, epochs=(1, 4, 1))
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    full = tmp_path / "full"
    stagewise.run(path, full, reporter="quiet")

    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "stagewise", "run", str(path), "--out", str(cut), "--quiet"]
    # Same thread count as this process (conftest): float sums must happen in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    history = cut / "stages" / "s2" / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= 1:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((cut / "pipeline.json").read_text())
    assert manifest["stages"]["s2"]["status"] == "running"

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(str(full / "final.safetensors")), load_file(str(cut / "final.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    s2_full = load_file(str(full / "stages/s2/last/model.safetensors"))
    s2_cut = load_file(str(cut / "stages/s2/last/model.safetensors"))
    assert all(torch.equal(s2_full[k], s2_cut[k]) for k in s2_full)


def test_vit_position_embeddings_follow_the_image_size(tmp_path: Path) -> None:
    import timm

    a, b, _ = _folders(tmp_path)
    spec = {"defaults": {**FAST, "model": "test_vit"}, "stages": [
        {"name": "small", "data": str(a), "image_size": 32, "strategy": "scratch", "epochs": 1},
        {"name": "large", "data": str(b), "image_size": 64, "strategy": "finetune", "epochs": 1}]}
    result = stagewise.run(spec, tmp_path / "run", reporter="quiet")
    assert result.stages["large"]["status"] == "done"
    small = load_file(str(tmp_path / "run/stages/small/best.safetensors"))["pos_embed"]
    large_start = timm.create_model("test_vit", img_size=64, num_classes=4).state_dict()["pos_embed"]
    large = load_file(str(tmp_path / "run/stages/large/best.safetensors"))["pos_embed"]
    assert small.shape[1] == 1 + (32 // 16) ** 2 and large.shape == large_start.shape
    assert large.shape[1] == 1 + (64 // 16) ** 2 and torch.isfinite(large).all()


def test_resume_needs_only_the_run_folder(tmp_path: Path) -> None:
    """The run folder keeps the resolved plan and the --set overrides: `run --out RUN --resume`
    continues it; the file again without the overrides continues it too; other settings for a
    stage that has run are refused with what differs."""
    from stagewise.cli import main

    data = make_image_folder(tmp_path / "data", per_class=4)
    spec = {"vars": {"data_root": None},
            "defaults": {"model": "test_resnet", "image_size": 32, "batch_size": 8, "num_workers": 0,
                         "report": False, "data": "${data_root}"},
            "stages": [{"name": "one", "epochs": 1, "strategy": "scratch"},
                       {"name": "two", "epochs": 1, "strategy": "finetune"}]}
    path = tmp_path / "cur.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    stagewise.run(path, out, stages=["one"], overrides=[f"data_root={data}"], reporter="quiet")
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 0
    manifest = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in manifest["stages"].values()] == ["done", "done"]
    assert stagewise.run(path, out, resume=True, reporter="quiet").stages["two"]["status"] == "done"
    with pytest.raises(ConfigError, match=r"would change the run in .*two: epochs: 1 -> 3"):
        stagewise.run(path, out, resume=True, reporter="quiet",
                      overrides=[f"data_root={data}", "stages.two.epochs=3"])
