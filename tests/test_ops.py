"""Cluster operations: the lock on filesystems without flock, --resume auto, the requeue signal,
keep_last checkpoints, every rank's RNG state, and resuming at another world size."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.errors import REQUEUE_EXIT, ConfigError
from stagewise.lock import LOCK, LockUnsupportedWarning, held_by_other, run_lock
from test_resume import CHILD_ENV, _assert_same_weights, _history


def test_lock_degrades_with_a_warning_where_the_filesystem_cannot_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "run"
    with pytest.warns(LockUnsupportedWarning, match="does not support file locks.*only one job"), \
            run_lock(out, "stage"):
        (out / "config.yaml").write_text("x: 1\n")
    assert (out / LOCK).is_file()
    with pytest.warns(LockUnsupportedWarning):
        assert held_by_other(out) is None  # nothing can say who holds it: treated as free


def test_lock_errors_other_than_no_locking_still_propagate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    def broken(fd: int, op: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="I/O error"), run_lock(tmp_path / "run", "stage"):
        pass


# ---- --resume auto, the requeue signal ----

# The real CLI; JSON lines gain a "batch" event so the parent can signal mid-epoch.
REQUEUE_CHILD = """
import json, sys
from stagewise.training import progress
from stagewise.cli import main

def batch(self, done, loss, acc, lr):
    print(json.dumps({"event": "batch", "done": done}), flush=True)

progress.JsonReporter.batch = batch
sys.exit(main(sys.argv[1:]))
"""


def _args(data: Path, out: Path, *more: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "test_resnet", "--image-size", "32",
            "--batch-size", "4", "--epochs", "2", "--num-workers", "0", "--lr", "0.01",
            "--set", "report=false", "--out", str(out), *more]


def test_sigusr1_saves_exits_for_requeue_and_resume_auto_finishes_exactly(tmp_path: Path, capsys) -> None:
    """A requeued job's life: `--resume auto` on an empty folder trains; SIGUSR1 saves at the next
    step and exits 75; the same command again resumes and ends with the weights of a run that
    was never stopped; once more, it says the run is complete and exits 0 without training."""
    data = make_image_folder(tmp_path / "data", classes=("a", "b", "c", "d"), per_class=16,
                             splits=("train",))
    make_image_folder(data, classes=("a", "b", "c", "d"), per_class=2, splits=("val",), seed=1)
    run = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(REQUEUE_CHILD)
    command = _args(data, run, "--resume", "auto")
    proc = subprocess.Popen([sys.executable, str(script), *command, "--log-format", "json"],
                            env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line).get("event") == "batch":
                proc.send_signal(signal.SIGUSR1)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == REQUEUE_EXIT == 75, err
    assert "stopped for requeue by signal" in err and "Traceback" not in err
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    assert state["epoch"] == 0 and 0 < state["batches_done"] < 16 and not (run / "done.json").exists()

    assert main([*command, "--quiet"]) == 0  # resumes mid-epoch 1 and finishes
    assert [r["epoch"] for r in _history(run)] == [1, 2]
    full = tmp_path / "full"
    assert main([*_args(data, full), "--quiet"]) == 0
    _assert_same_weights(full / "last" / "model.safetensors", run / "last" / "model.safetensors")
    _assert_same_weights(full / "best.safetensors", run / "best.safetensors")

    before = (run / "history.jsonl").read_text()
    capsys.readouterr()
    assert main(command) == 0
    assert "run complete, nothing to do (completed)" in capsys.readouterr().out
    assert (run / "history.jsonl").read_text() == before


def test_resume_auto_library_and_an_empty_start(tmp_path: Path) -> None:
    """`stagewise.train(cfg, resume="auto")`: a folder a run left with nothing trained starts
    afresh; a finished one returns its result from its files (complete=True)."""
    data = make_image_folder(tmp_path / "data", per_class=4)
    cfg = tiny_config(data, tmp_path / "run", epochs=1)
    first = stagewise.train(cfg, resume="auto", reporter="quiet")
    assert not first.complete and len(first.history) == 1
    again = stagewise.train(cfg, resume="auto", reporter="quiet")
    assert again.complete and again.best == first.best and again.stopped == "completed"
    assert again.class_ids == first.class_ids and len(again.history) == 1
    with pytest.raises(ConfigError, match="resuming would change the run"):
        stagewise.train({**cfg, "lr": 0.5}, resume="auto", reporter="quiet")


def test_run_resume_auto_starts_then_says_complete(tmp_path: Path, capsys) -> None:
    """`stagewise run PIPELINE --resume auto`: the first call runs the pipeline, the next one
    finds every stage done and exits 0 without training."""
    import yaml

    data = make_image_folder(tmp_path / "data", per_class=4)
    spec = tmp_path / "pipe.yaml"
    spec.write_text(yaml.safe_dump({
        "defaults": {"model": "test_resnet", "image_size": 32, "batch_size": 8, "num_workers": 0,
                     "seed": 0, "lr": 0.01, "report": False},
        "stages": [{"name": "s1", "data": str(data), "strategy": "scratch", "epochs": 1}]}))
    out = tmp_path / "pipe"
    assert main(["run", str(spec), "--out", str(out), "--resume", "auto", "--quiet"]) == 0
    stamp = (out / "stages" / "s1" / "history.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["run", str(spec), "--out", str(out), "--resume", "auto"]) == 0
    assert "pipeline complete, nothing to do" in capsys.readouterr().out
    assert (out / "stages" / "s1" / "history.jsonl").stat().st_mtime_ns == stamp
    assert main(["run", "--resume", "maybe", "--out", str(out), "--quiet"]) == 2  # a file that is not there


# ---- keep_last, every rank's RNG, another world size ----

def test_keep_last_keeps_the_newest_checkpoints_as_hard_links(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=4)
    run = stagewise.train(tiny_config(data, tmp_path / "run", epochs=3, keep_last=2),
                          reporter="quiet").run_dir
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    steps = [json.loads(line)["global_step"] for line in (run / "history.jsonl").read_text().splitlines()]
    assert kept == [f"step-{s:09d}" for s in steps[-2:]]  # epochs 2 and 3; epoch 1's pruned
    newest = run / "checkpoints" / kept[-1]
    for f in (run / "last").iterdir():  # the newest is last/ itself, at no extra space
        assert (newest / f.name).stat().st_ino == f.stat().st_ino
    older = torch.load(run / "checkpoints" / kept[0] / "state.pt", weights_only=True)
    assert (older["epoch"], older["batches_done"]) == (2, 0)
    # The default keeps today's layout: last/ only.
    plain = stagewise.train(tiny_config(data, tmp_path / "plain", epochs=1), reporter="quiet").run_dir
    assert not (plain / "checkpoints").exists()


def test_every_ranks_rng_state_is_saved_and_restored_per_rank(tmp_path: Path) -> None:
    from torch import nn

    from stagewise.training.checkpoint import Resumable, load_last, rng_state, save_last
    from stagewise.training.stopping import StopTracker

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class Schedule:
        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, _state: dict) -> None:
            pass

    per_rank = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        per_rank.append(rng_state())
    where = Resumable(epoch=1, batches_done=0, global_step=3, tracker=StopTracker(), history_len=1,
                      world_size=2)
    save_last(tmp_path / "last", model, opt, Schedule(), None, None, where, per_rank)
    state = torch.load(tmp_path / "last" / "state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2
    for rank in (0, 1):
        torch.manual_seed(99)
        load_last(tmp_path / "last", model, opt, Schedule(), None, None, rank=rank)
        assert torch.equal(torch.get_rng_state(), per_rank[rank]["torch"])
    torch.manual_seed(99)
    seeded = torch.get_rng_state()
    load_last(tmp_path / "last", model, opt, Schedule(), None, None, rank=2)  # a rank it lacks
    assert torch.equal(torch.get_rng_state(), seeded)


def _checkpoint_of(last: Path, world: int, accum: int, batches_done: int) -> Path:
    last.mkdir(parents=True)
    torch.save({"world_size": world, "grad_accum": accum, "batches_done": batches_done},
               last / "state.pt")
    return last


def test_another_world_size_keeps_the_global_batch_or_refuses_with_the_arithmetic(tmp_path: Path) -> None:
    from stagewise.config import build_config
    from stagewise.training.cluster import fit_world

    cfg = build_config(tiny_config(tmp_path, tmp_path / "run", batch_size=8))
    last = _checkpoint_of(tmp_path / "a" / "last", world=4, accum=1, batches_done=0)
    assert fit_world(cfg, last, 2).grad_accum == 2  # 4 x 8 x 1 = 2 x 8 x 2
    assert fit_world(cfg, last, 4).grad_accum == 1
    with pytest.raises(ConfigError, match=r"4 process\(es\) x batch 8 x grad_accum 1 = 32.*"
                       r"32 / 24 = 1\.33, not a whole number.*divides 4 \(1, 2, 4\)"):
        fit_world(cfg, last, 3)
    mid = _checkpoint_of(tmp_path / "b" / "last", world=2, accum=2, batches_done=5)
    with pytest.raises(ConfigError, match=r"middle of an epoch \(after batch 5\) by 2 process"):
        fit_world(cfg, mid, 1)
    assert fit_world(cfg, mid, 2).grad_accum == 2  # the accumulation it was saved with



def resume_epoch_two_at_one_process(two: Path, tmp_path: Path) -> None:
    """For test_distributed's 2-process run (batch 8, 2 epochs, keep_last: 2, test_vit: no
    BatchNorm, so the global batch is all that counts): its checkpoint holds both ranks' RNG
    states; epoch 2 resumed from its epoch-1 checkpoint by 1 process accumulates 2 batches of 8
    and ends where the 2 processes did. Shares that test's torchrun run (the slow part)."""
    import shutil

    from safetensors.torch import load_file

    from test_distributed import ENV

    state = torch.load(two / "last" / "state.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2 and state["world_size"] == 2
    one = tmp_path / "two_then_one"
    shutil.copytree(two, one)
    shutil.rmtree(one / "last")
    (one / "done.json").unlink()
    sorted((one / "checkpoints").iterdir())[0].rename(one / "last")  # saved at epoch 1's end
    resumed = subprocess.run([sys.executable, "-m", "stagewise", "train", "--resume", "--out", str(one)],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "grad_accum 2 keeps the global batch 16" in resumed.stdout + resumed.stderr
    state = torch.load(one / "last" / "state.pt", weights_only=True)
    assert (state["world_size"], state["grad_accum"], state["epoch"]) == (1, 2, 2)
    a, b = load_file(two / "last" / "model.safetensors"), load_file(one / "last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert "grad_accum: 1" in (one / "config.yaml").read_text()  # the settings as given


# ---- the report reuses the last validation pass ----

def test_report_grid_reuses_saved_val_predictions_without_running_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stagewise.reporting.report as report
    from stagewise.reporting.samples import load_model, predict, split_samples, spread
    from stagewise.runfolder import read_config, read_val_predictions

    data = make_image_folder(tmp_path / "data", per_class=6)
    run = stagewise.train(tiny_config(data, tmp_path / "run", epochs=2), reporter="quiet").run_dir
    saved = read_val_predictions(run, run / "best.safetensors")
    samples, _ = split_samples(read_config(run), run, "val")
    assert saved is not None and sorted(saved) == list(range(len(samples)))  # each image once

    # What inference on the saved weights gives, image by image (the same eval transform).
    model, pre = load_model(run / "best.safetensors")
    for p in predict(model, pre, samples, spread(len(samples), 256)):
        assert saved[p.index][0] == p.pred and saved[p.index][1] == pytest.approx(p.confidence, abs=1e-5)

    def no_model(_weights):
        raise AssertionError("the report ran the model although its predictions were saved")

    monkeypatch.setattr(report, "load_model", no_model)
    blocks = report._predictions(report.read_run(run), run / "plots")  # the report's grid section
    assert (run / "plots" / "predictions.png").is_file() and "of 18 images checked" in blocks[0].caption
    # Other weights than the saved predictions': the model runs again.
    (run / "val_predictions.safetensors").unlink()
    with pytest.raises(AssertionError, match="ran the model"):
        report._predictions(report.read_run(run), run / "plots")
