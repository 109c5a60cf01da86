"""Resume is exact: SIGKILL after an epoch, or SIGTERM mid-epoch, then --resume to the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import stagewise
from conftest import crash_then_resume, make_image_folder, tiny_config
from stagewise.cli import main

# The children run single-threaded; the in-process runs they are compared with must too, or the
# CPU kernels may sum in another order and differ in the last bit.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
TIMING_KEYS = {"epoch_seconds", "wall_seconds", "images_per_sec"}


def _history(run: Path) -> list[dict]:
    path = run / "history.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert set(ta) == set(tb)
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{a} and {b} differ in {different[:5]}"


def _assert_same_history(a: Path, b: Path) -> None:
    ha, hb = _history(a), _history(b)
    assert len(ha) == len(hb)
    for ra, rb in zip(ha, hb, strict=True):
        assert {k: v for k, v in ra.items() if k not in TIMING_KEYS} == \
               {k: v for k, v in rb.items() if k not in TIMING_KEYS}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited early ({proc.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("child did not reach the expected point in time")
        time.sleep(0.05)


# Trains the given config; in epoch 2 the reporter blocks (the loop is mid-epoch, last/ holds
# epoch 1) so that the parent's SIGKILL lands at a known point, not wherever the clock says.
SIGKILL_CHILD = """
import json, sys, time
import stagewise
from stagewise.training.progress import QuietReporter

class BlockInSecondEpoch(QuietReporter):
    epoch = 0
    def epoch_start(self, epoch, epochs, batches):
        self.epoch = epoch
    def batch(self, done, loss, acc, lr):
        if self.epoch == 2:
            print("blocked", flush=True)
            time.sleep(600)

stagewise.train(json.loads(sys.argv[1]), reporter=BlockInSecondEpoch())
"""


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("resume") / "data", per_class=8)


def test_sigkill_then_resume_equals_uninterrupted(small_data: Path, tmp_path: Path) -> None:
    # Dropout, EMA, warmup + cosine, random crops and accumulation over an odd number of batches
    # (3 per epoch): every piece of state that resume restores.
    settings = dict(epochs=3, drop_rate=0.2, ema=0.9, warmup_epochs=1, augmentation="standard",
                    optimizer="adamw", weight_decay=0.05, grad_accum=2)
    full = stagewise.train(tiny_config(small_data, tmp_path / "full", **settings), reporter="quiet")
    assert full.stopped == "completed" and len(full.history) == 3

    run = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(SIGKILL_CHILD)
    cfg = tiny_config(small_data, run, **settings)
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], env=CHILD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        _wait_for(lambda: len(_history(run)) == 1 and (run / "last" / "state.pt").is_file(), proc)
        line = proc.stdout.readline()  # returns once the child blocks mid-epoch 2
        assert line.strip() == "blocked"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert len(_history(run)) == 1
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    assert (state["epoch"], state["batches_done"]) == (1, 0)

    resumed = stagewise.train(resume=True, out=str(run), reporter="quiet")
    assert resumed.stopped == "completed" and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    _assert_same_weights(full.run_dir / "last" / "model.safetensors", run / "last" / "model.safetensors")
    _assert_same_weights(full.run_dir / "last" / "ema.safetensors", run / "last" / "ema.safetensors")
    _assert_same_weights(full.weights, resumed.weights)
    _assert_same_history(full.run_dir, run)
    assert json.loads((run / "model.json").read_text())["metrics"] == \
        json.loads((full.run_dir / "model.json").read_text())["metrics"]


# The real CLI; JSON lines gain a "batch" event so the parent can signal mid-epoch.
SIGTERM_CHILD = """
import json, sys
from stagewise.training import progress
from stagewise.cli import main

def batch(self, done, loss, acc, lr):
    print(json.dumps({"event": "batch", "done": done}), flush=True)

progress.JsonReporter.batch = batch
sys.exit(main(sys.argv[1:]))
"""


def _cli_args(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--model", "test_resnet", "--image-size", "32",
            "--batch-size", "4", "--epochs", "2", "--num-workers", "0", "--lr", "0.01",
            "--out", str(out)]


def test_sigterm_mid_epoch_saves_and_resumes(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=("a", "b", "c", "d"), per_class=50,
                             splits=("train",))
    make_image_folder(data, classes=("a", "b", "c", "d"), per_class=2, splits=("val",), seed=1)
    run = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(SIGTERM_CHILD))
    proc = subprocess.Popen([sys.executable, str(script), *_cli_args(data, run), "--log-format", "json"],
                            env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if json.loads(line).get("event") == "batch":
                proc.send_signal(signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    hint = f"stagewise train --resume --out {run}"
    assert hint in err and hint in "".join(lines) + out
    assert (run / "last" / "model.safetensors").is_file()
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    assert state["epoch"] == 0 and 10 <= state["batches_done"] < 50  # stopped inside epoch 1
    assert _history(run) == []

    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    history = _history(run)
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["global_step"] == 100
    assert (run / "best.safetensors").is_file() and (run / "model.json").is_file()

    # The interrupted epoch picked up at the batch where it stopped: same weights as no stop.
    full = tmp_path / "full"
    assert main([*_cli_args(data, full), "--quiet"]) == 0
    _assert_same_weights(full / "last" / "model.safetensors", run / "last" / "model.safetensors")


def test_mid_epoch_checkpoint_then_crash_resumes_exactly(small_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """checkpoint_every: N saves last/ inside an epoch; a crash right after such a save and a
    resume continue with the same batches and end with the same weights as no crash."""
    cfg = dict(epochs=2, batch_size=4, checkpoint_every=3)
    straight = stagewise.train(tiny_config(small_data, tmp_path / "straight", **cfg), reporter="quiet")
    resumed = crash_then_resume(tiny_config(small_data, tmp_path / "crashed", **cfg), monkeypatch)
    assert resumed.history[-1]["epoch"] == 2
    _assert_same_weights(straight.run_dir / "last" / "model.safetensors",
                         resumed.run_dir / "last" / "model.safetensors")
    _assert_same_weights(straight.weights, resumed.weights)
