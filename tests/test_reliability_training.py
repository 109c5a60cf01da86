"""Issue #22, training side: each test is a defect an adversarial pass found, kept fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import stagewise
from conftest import Crash, make_image_folder, tiny_config


def _same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert set(ta) == set(tb)
    assert not [k for k in ta if not torch.equal(ta[k], tb[k])]


# ---- 1. a step checkpoint at the epoch's last batch, then a kill in its validation ----

def test_checkpoint_at_last_batch_then_crash_in_validation_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """60 images, batch 16: 4 batches, so checkpoint_every 2 saves at the epoch's last batch.
    A crash during that epoch's validation must resume (it skipped 64 > 60 images) to the
    weights of a run that never stopped."""
    import stagewise.training.stage as stage

    data = make_image_folder(tmp_path / "data", per_class=20)
    cfg = dict(epochs=2, batch_size=16, checkpoint_every=2)
    straight = stagewise.train(tiny_config(data, tmp_path / "straight", **cfg), reporter="quiet")
    real_checkpoint, real_validate = stage._checkpoint, stage._validate
    saved: list[tuple[int, int]] = []

    def remember(setup, where) -> None:
        real_checkpoint(setup, where)
        saved.append((where.epoch, where.batches_done))

    def crash_after_last_batch_checkpoint(setup, rep):
        if saved and saved[-1] == (0, 4):
            raise Crash
        return real_validate(setup, rep)

    crashed = tiny_config(data, tmp_path / "crashed", **cfg)
    with monkeypatch.context() as patched:
        patched.setattr(stage, "_checkpoint", remember)
        patched.setattr(stage, "_validate", crash_after_last_batch_checkpoint)
        with pytest.raises(Crash):
            stagewise.train(crashed, reporter="quiet")
    resumed = stagewise.train(resume=True, reporter="quiet", out=crashed["out"])
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    _same_weights(straight.run_dir / "last" / "model.safetensors",
                  resumed.run_dir / "last" / "model.safetensors")
    _same_weights(straight.weights, resumed.weights)


# ---- 2. a folder of the user's own files, named like a run's, is never written into ----

def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "test_resnet", "--image-size", "32",
            "--epochs", "1", "--out", str(out), "--set", "num_workers=0", "--set", "report=false",
            "--quiet", *extra]


@pytest.mark.parametrize("files", [
    {"config.yaml": "lr: 0.1\nlayers: 3\n", "train.py": "print('mine')\n"},
    {"history.jsonl": '{"epoch": 1, "loss": 0.5}\n', "analysis.ipynb": "{}"},
    {"split.json": '{"mine": 1}', "notes.txt": "x"},
])
def test_users_files_named_like_a_runs_are_refused_and_kept(
        tmp_path: Path, files: dict[str, str], capsys: pytest.CaptureFixture) -> None:
    from stagewise.cli import main

    data = make_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    for extra in ((), ("--resume",)):
        assert main(_train_args(data, out, *extra)) == 2
        err = capsys.readouterr().err
        assert str(out) in err and "not a stagewise run" in err and "stage run" in err and "Traceback" not in err
        assert {p.name: p.read_text() for p in out.iterdir()} == files


def test_a_pipeline_folder_of_the_users_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from stagewise.cli import main

    data = make_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "mine"
    (out / "stages").mkdir(parents=True)
    (out / "pipeline.json").write_text('{"my": "pipeline"}')
    spec = tmp_path / "p.yaml"
    spec.write_text(f"stages:\n  - name: one\n    data: {data}\n    model: test_resnet\n")
    assert main(["run", str(spec), "--out", str(out), "--quiet"]) == 2
    assert "not a stagewise run (none of them is what a pipeline run" in capsys.readouterr().err
    assert (out / "pipeline.json").read_text() == '{"my": "pipeline"}'


def test_a_run_folder_is_still_resumable_and_kinds_are_not_mixed(tmp_path: Path) -> None:
    """The lock file records the kind of run; a folder written before it did is read instead."""
    from stagewise.errors import ConfigError
    from stagewise.lock import LOCK

    data = make_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    stagewise.train(tiny_config(data, out, epochs=1), reporter="quiet")
    assert (out / LOCK).read_text().split()[1] == "stage"
    (out / LOCK).unlink()  # a run folder from before the lock: its config.yaml proves it
    assert stagewise.train(resume=True, reporter="quiet", out=str(out)).history[-1]["epoch"] == 1
    spec = {"stages": [{"name": "one", **tiny_config(data, out, epochs=1)}]}
    spec["stages"][0].pop("out")
    with pytest.raises(ConfigError, match="holds a stagewise stage run, not a pipeline run"):
        stagewise.run(spec, out, reporter="quiet")


# ---- 4. `run --out X --resume` with no plan in X never starts something else ----

@pytest.mark.parametrize("state", ["empty", "missing", "startup"])
def test_resume_without_a_saved_plan_starts_nothing(tmp_path: Path, state: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    from stagewise.cli import main
    from stagewise.lock import LOCK

    out = tmp_path / "run"
    if state != "missing":
        out.mkdir()
    if state == "startup":  # a pipeline killed during start-up: its lock file, no manifest
        (out / LOCK).write_text("123\npipeline\n")
        (out / "stages").mkdir()
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "stagewise run PIPELINE.yaml --out" in err and "Traceback" not in err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before
    assert not (tmp_path / "runs").exists()  # and no demo elsewhere either


# ---- 12. augment: steps that pass their constructor but fail on an image, or are too large ----

@pytest.mark.parametrize("step, needle", [
    ({"RandomResizedCrop": {"interpolation": "__import__"}}, "Invalid interpolation mode"),
    ({"RandomPosterize": {"bits": 100}}, "bits must be"),
    ({"RandomCrop": {"size": 64}}, "pad_if_needed: true"),
    ({"Resize": {"size": 30000}}, "30000 px is over 2048 px"),
    ({"Pad": {"padding": 20000}}, "20000 px is over 2048 px"),
    ({"Pad": {"padding": 2000}}, "makes a 4032 px image"),
])
def test_augment_steps_are_run_once_at_config_load(tmp_path: Path, step: dict, needle: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    import yaml

    from stagewise.cli import main

    data = make_image_folder(tmp_path / "data", per_class=4)
    config = tmp_path / "stage.yaml"
    config.write_text(yaml.safe_dump({**tiny_config(data, tmp_path / "run"),
                                      "augment": ["RandomHorizontalFlip", step]}))
    assert main(["train", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    name = next(iter(step))
    assert f"augment: step 2: {name}(" in err and needle in err and "Traceback" not in err
    assert str(config) in err  # the file, not "config:"
    assert not (tmp_path / "run").exists()


def test_a_sound_augment_list_still_loads_and_keeps_the_random_streams() -> None:
    from stagewise.config import build_config

    before = torch.get_rng_state()
    cfg = build_config({"data": "d", "image_size": 32, "augment": [
        {"RandomResizedCrop": {"scale": [0.5, 1.0]}}, "RandomHorizontalFlip", "TrivialAugmentWide",
        {"RandomErasing": {"p": 0.25}}, {"RandomCrop": {"size": 24}}]})
    assert len(cfg.augment) == 5 and torch.equal(before, torch.get_rng_state())


# ---- 9, 13. metric-learning settings that train nothing, or blow up, are refused at load ----

@pytest.mark.parametrize("settings, needle", [
    ({"metric_loss": "supcon", "loss_args": {"temperature": 0}}, "trains nothing"),
    ({"metric_loss": "arcface", "loss_args": {"scale": 0}}, "trains nothing"),
    ({"metric_loss": "arcface", "loss_args": {"margin": "abc"}}, "loss_args.margin: 'abc' is not a number"),
    ({"metric_loss": "supcon", "m_per_class": 8}, "each batch would hold one identity"),
    ({"head_layers": [1_000_000_000]}, "head_layers[0]"),
])
def test_degenerate_embed_settings_exit_2_at_load(tmp_path: Path, settings: dict, needle: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("pytorch_metric_learning")
    import yaml

    from stagewise.cli import main

    config = tmp_path / "embed.yaml"
    config.write_text(yaml.safe_dump({**tiny_config(tmp_path / "ids", tmp_path / "run"), "task": "embed",
                                      "strategy": "scratch", **settings}))
    assert main(["train", "--config", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(config) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_sound_loss_args_still_load() -> None:
    pytest.importorskip("pytorch_metric_learning")
    from stagewise.config import build_config

    for loss, args in [("supcon", {"temperature": 0.07}), ("arcface", {"margin": 28.6, "scale": 16}),
                       ("triplet", {"margin": 0.1}), ("contrastive", {"neg_margin": 1}),
                       ("multi_similarity", {"alpha": 2}), ("cosface", {"margin": 0.35})]:
        build_config({"data": "d", "task": "embed", "metric_loss": loss, "loss_args": args})


def test_m_per_class_beyond_every_identity_is_refused_before_the_run(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("faiss")
    from conftest import make_identity_folder
    from stagewise.cli import main

    data = make_identity_folder(tmp_path / "ids", identities=8, views=3)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "test_resnet", "--image-size", "32",
                 "--epochs", "1", "--out", str(out), "--quiet", "--set", "num_workers=0",
                 "--set", "report=false", "--set", "task=embed", "--set", "strategy=scratch",
                 "--set", "metric_loss=supcon", "--set", "m_per_class=4", "--set", "batch_size=8"]) == 2
    err = capsys.readouterr().err
    assert "m_per_class: 4" in err and "more than 3 image(s)" in err and "m_per_class <= 3" in err
    assert not out.exists()


# ---- 10. validation identities that are training identities: said, and recorded ----

def test_val_identities_that_are_trained_on_are_warned_and_recorded(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("faiss")
    import json

    from conftest import make_identity_folder

    make_identity_folder(tmp_path / "ids" / "train", identities=4, views=4)
    make_identity_folder(tmp_path / "ids" / "val", identities=4, views=3, seed=1)
    result = stagewise.train(tiny_config(tmp_path / "ids", tmp_path / "run", task="embed",
                                         strategy="scratch", epochs=1, batch_size=8), reporter="quiet")
    assert result.history[-1]["val_map"] is not None
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["embedding"]["val_not_held_out"] == ["id00", "id01", "id02", "id03"]
    err = capsys.readouterr().err
    assert "4 of the 4 validation identities are training identities" in err


# ---- 19. a val file skipped at indexing counts in bad_val_images ----

def test_bad_val_file_skipped_at_indexing_is_counted(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    (data / "val" / "alpha" / "empty.png").write_bytes(b"")
    (data / "train" / "beta" / "empty.png").write_bytes(b"")  # a training file: not a val one
    result = stagewise.train(tiny_config(data, tmp_path / "run", epochs=1), reporter="quiet")
    assert [r["bad_val_images"] for r in result.history] == [1]


# ---- 17. torchrun: one rank SIGKILLed, the survivor says so (no traceback) ----

def test_a_dead_peer_in_a_collective_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Simulated in one process: the backend error a survivor gets, raised from a collective."""
    import torch.distributed as dist

    import stagewise.training.distributed as distributed
    import stagewise.training.loop as loop
    from stagewise.cli import main

    data = make_image_folder(tmp_path / "data", per_class=4)

    def dead_peer(items, flags, processes):  # the loop's per-batch agreement (distributed.agreed)
        raise dist.DistBackendError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500")

    monkeypatch.setattr(distributed, "rank_and_world", lambda: (0, 2))  # as rank 0 of 2 would be
    monkeypatch.setattr(loop, "agreed", dead_peer)
    assert main(_train_args(data, tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "rank 1 of this 2-process run died" in err and "--resume" in err and "Traceback" not in err


@pytest.mark.slow
def test_sigkill_of_one_rank_under_torchrun(tmp_path: Path) -> None:
    """The real thing: torchrun with 2 gloo processes, rank 1 killed after the first epoch
    (about 35 s on 2 busy cores, most of it torchrun's start: marked slow)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_distributed import CHILD, ENV, TINY, _rank_pid

    data = make_image_folder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              str(CHILD), "train", "--data", str(data), *TINY, "--batch-size", "4", "--epochs", "30",
              "--out", str(run), "--log-format", "json"]
    proc = subprocess.Popen(launch, env={**ENV, "STAGEWISE_TEST_OUT": str(run)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{") and json.loads(line).get("event") == "epoch":
                os.kill(_rank_pid(run, "1", time.time() + 30), signal.SIGKILL)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank 1 of this 2-process run died" in err, err[-3000:]
    assert "stagewise/" not in err.replace(str(CHILD), ""), err[-3000:]


# ---- 19. the epoch record's LRs: one per layer group, as groups_total counts them ----

@pytest.mark.parametrize("strategy", ["probe", "finetune"])
def test_one_lr_per_layer_group(tmp_path: Path, strategy: str) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    # convnext_atto: 7 coarse groups, 15 finer layers for layer_decay
    result = stagewise.train(tiny_config(data, tmp_path / "run", model="convnext_atto", epochs=1,
                                         strategy=strategy, layer_decay=0.8), reporter="quiet")
    last = result.history[-1]
    assert len(last["lr"]) == last["groups_total"] == 7
    assert last["lr"]["layer6"] == max(last["lr"].values())  # the head's, the highest


def test_done_is_printed_by_rank_0_only(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import argparse

    from stagewise.cli.common import print_done

    args = argparse.Namespace(quiet=False, log_format="rich")
    monkeypatch.setenv("RANK", "1")
    assert not print_done(args, {}, "done (completed)")
    monkeypatch.setenv("RANK", "0")
    assert print_done(args, {}, "done (completed)")
    assert capsys.readouterr().out.count("done (completed)") == 1


# ---- 19. a refused resume leaves config.yaml as it was ----

def test_a_refused_resume_does_not_rewrite_config_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import stagewise.training.stage as stage
    from stagewise.errors import CheckpointError

    data = make_image_folder(tmp_path / "data", per_class=4)
    real = stage._checkpoint

    def crash_after_epoch_1(setup, where) -> None:
        real(setup, where)
        if where.epoch == 1:
            raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(stage, "_checkpoint", crash_after_epoch_1)
        with pytest.raises(Crash):
            stagewise.train(tiny_config(data, tmp_path / "old", epochs=2), reporter="quiet")
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "old", moved)
    saved = (moved / "config.yaml").read_bytes()
    good = (moved / "last" / "state.pt").read_bytes()
    (moved / "last" / "state.pt").write_bytes(b"damaged")
    with pytest.raises(CheckpointError):
        stagewise.train(resume=True, reporter="quiet", out=str(moved))
    assert (moved / "config.yaml").read_bytes() == saved  # out: still names the old folder
    (moved / "last" / "state.pt").write_bytes(good)
    stagewise.train(resume=True, reporter="quiet", out=str(moved))
    assert f"out: {moved}" in (moved / "config.yaml").read_text()  # an accepted resume records it


# ---- 19. report and evaluate refuse a folder a training holds; a training teacher is warned of ----

HOLD = """
import sys, time
from pathlib import Path
from stagewise.lock import run_lock
with run_lock(Path(sys.argv[1]), "stage"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_report_and_evaluate_refuse_a_folder_in_training_and_a_teacher_is_warned(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import subprocess
    import sys

    from stagewise.cli import main

    data = make_image_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    stagewise.train(tiny_config(data, run, epochs=1), reporter="quiet")
    before = sorted(p.name for p in run.iterdir())
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(["report", str(run)]) == 2
        err = capsys.readouterr().err
        assert f"{run} is being trained by another stagewise process (PID {holder.pid})" in err
        assert "wait for the run to finish" in err
        assert main(["evaluate", str(run), "--data", str(data), "--quiet", "--num-workers", "0"]) == 2
        assert "evaluate would write into it" in capsys.readouterr().err
        assert sorted(p.name for p in run.iterdir()) == before
        # A student of that teacher trains, and is told that the teacher is still training.
        student = stagewise.train(tiny_config(data, tmp_path / "student", epochs=1, teacher=str(run)),
                                  reporter="quiet")
        assert student.history[-1]["epoch"] == 1
        assert f"warning: teacher {run} is still being trained (PID {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert main(["report", str(run)]) == 0  # free again


def test_starting_weights_stay_best_when_no_trained_epoch_beats_them(tmp_path: Path, capsys) -> None:
    """#22 item 11: a matched head's epoch 0 is measured; a trained epoch must beat it to replace
    the starting weights in best.safetensors, and the log says so when none did."""
    import json

    from safetensors.torch import load_file

    data = make_image_folder(tmp_path / "d", per_class=8)
    first = stagewise.train(tiny_config(data, tmp_path / "a", epochs=3), reporter="quiet")
    # A vanishing LR changes nothing measurable: every trained epoch ties epoch 0, and a tie is
    # no improvement.
    second = stagewise.train(tiny_config(data, tmp_path / "b", epochs=2, strategy="finetune",
                                         weights=str(first.weights), lr=1e-9), reporter="quiet")
    assert [r["epoch"] for r in second.history] == [0, 1, 2]
    card = json.loads((tmp_path / "b" / "model.json").read_text())
    assert card["metrics"]["epoch"] == 0 and second.best["epoch"] == 0
    start, kept = load_file(str(first.weights)), load_file(str(second.weights))
    assert all(torch.equal(start[k], kept[k]) for k in start)
    assert "no trained epoch beat the starting weights on val_top1" in capsys.readouterr().err
