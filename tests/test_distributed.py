"""Several processes on one machine: 2 CPU processes over gloo, started by torchrun exactly as a
user would (`torchrun --standalone --nproc_per_node 2 -m stagewise ...`). Each test launches a
real process group, so they are few and tiny."""

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

from conftest import make_image_folder
from test_ops import resume_epoch_two_at_one_process

CHILD = Path(__file__).parent / "dist_child.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
# test_vit has no BatchNorm: N processes at batch B then equal 1 process at batch N x B.
TINY = ["--model", "test_vit", "--image-size", "32", "--num-workers", "0", "--augmentation", "none",
        "--seed", "0", "--lr", "0.001", "--optimizer", "adamw", "--set", "report=false"]


def torchrun(args: list[str], out: Path, nproc: int = 2, module: bool = False,
             timeout: int = 300) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    target = ["-m", "stagewise"] if module else [str(CHILD)]
    return subprocess.run([*launch, *target, *args], env={**ENV, "STAGEWISE_TEST_OUT": str(out)},
                          capture_output=True, text=True, timeout=timeout)


def one_and_two_processes(common: list[str], one: Path, two: Path) -> tuple[dict, dict]:
    """`common` run by 1 process at batch 16 into `one` and 2 at batch 8 into `two`; the weights
    of each last/ checkpoint."""
    single = subprocess.run([sys.executable, "-m", "stagewise", *common, "--batch-size", "16",
                             "--out", str(one)], env=ENV, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = torchrun([*common, "--batch-size", "8", "--out", str(two)], two)
    assert double.returncode == 0, double.stderr[-3000:]
    return load_file(one / "last" / "model.safetensors"), load_file(two / "last" / "model.safetensors")


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist") / "data"
    make_image_folder(root, classes=("a", "b", "c", "d"), per_class=8, splits=("train",))
    make_image_folder(root, classes=("a", "b", "c", "d"), per_class=5, splits=("val",), seed=1)
    (root / "val" / "d" / "d_4.png").unlink()  # 19 val images: not a multiple of 2
    return root


def test_two_processes_equal_one_at_the_same_global_batch(data: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["train", "--data", str(data), *TINY, "--epochs", "2", "--set", "keep_last=2", "--quiet"]
    a, b = one_and_two_processes(common, one, two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    ra, rb = _records(one), _records(two)
    assert [r["epoch"] for r in rb] == [1, 2]
    for x, y in zip(ra, rb, strict=True):
        # Every val image counted once across the two shards, and train metrics over both ranks.
        assert y["val_images"] == x["val_images"] == 19
        assert y["val_top1"] == pytest.approx(x["val_top1"])
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
        assert y["train_top1"] == pytest.approx(x["train_top1"])
    resume_epoch_two_at_one_process(two, tmp_path)  # test_ops.py: another world size


def test_stop_rules_end_every_rank(data: Path, tmp_path: Path) -> None:
    common = ["train", "--data", str(data), *TINY, "--batch-size", "8", "--quiet"]
    budget = torchrun([*common, "--epochs", "5", "--out", str(tmp_path / "budget"),
                       "--set", "max_minutes=0.00001"], tmp_path / "budget")
    assert budget.returncode == 0, budget.stderr[-3000:]
    assert [r["epoch"] for r in _records(tmp_path / "budget")] == [1]
    early = torchrun([*common, "--epochs", "6", "--lr", "0.00001", "--out", str(tmp_path / "early"),
                      "--set", "early_stopping=1", "--set", "monitor=val_loss"], tmp_path / "early")
    assert early.returncode == 0, early.stderr[-3000:]
    assert len(_records(tmp_path / "early")) <= 6


def _rank_pid(out: Path, rank: str, deadline: float) -> int:
    """The pid of the torchrun worker with RANK=`rank` writing to `out`."""
    wanted = {f"RANK={rank}".encode(), f"STAGEWISE_TEST_OUT={out}".encode()}
    while time.time() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                env = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if wanted <= env:
                return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank}")


def test_sigterm_to_one_rank_saves_and_resumes(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(data), *TINY, "--batch-size", "4", "--epochs", "3",
            "--out", str(run), "--log-format", "json"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              str(CHILD), *args]
    proc = subprocess.Popen(launch, env={**ENV, "STAGEWISE_TEST_OUT": str(run)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # rank 0's JSON lines: wait for the first finished epoch
            if line.startswith("{") and json.loads(line).get("event") == "epoch":
                os.kill(_rank_pid(run, "1", time.time() + 30), signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Both ranks stop cleanly with the resume hint (torchrun then reports their exit code 143
    # with a traceback of its own, which holds no stagewise frame).
    assert proc.returncode != 0 and err.count("interrupted by signal 15") == 2, err[-3000:]
    assert "stagewise/" not in err.replace(str(CHILD), ""), err[-3000:]
    assert (run / "last" / "state.pt").is_file()
    done = len(_records(run))
    assert done < 3, "the signal should have stopped the run before its last epoch"
    again = torchrun(["train", "--resume", "--out", str(run), "--quiet"], run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["epoch"] for r in _records(run)] == [1, 2, 3]
    # The requeue command on a finished run: complete, whatever the number of processes
    # (test_ops.py: another number resumes at an epoch's end, and is refused inside one).
    again = subprocess.run([sys.executable, "-m", "stagewise", *args, "--resume", "auto"],
                           env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and '"complete": true' in again.stdout, again.stderr[-2000:]


def test_a_two_stage_pipeline_under_two_processes(data: Path, tmp_path: Path) -> None:
    spec = {"name": "dist", "defaults": {"model": "test_vit", "image_size": 32, "batch_size": 8,
                                          "num_workers": 0, "augmentation": "none", "lr": 0.001,
                                          "report": False, "data": str(data)},
            "stages": [{"name": "one", "epochs": 1, "strategy": "scratch"},
                       {"name": "two", "epochs": 1, "strategy": "finetune", "baseline": "scratch"}]}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "run"
    proc = torchrun(["run", str(path), "--out", str(out), "--quiet"], out, module=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "pipeline.json").read_text())
    assert [s["status"] for s in manifest["stages"].values()] == ["done", "done"]
    assert manifest["stages"]["two"]["baseline"]["epochs_run"] == 1
    assert (out / "final.safetensors").is_file()


def test_embed_stage_on_two_processes_equals_one(tmp_path: Path) -> None:
    """ArcFace's class centres live in the network (used outside its forward): DDP still averages
    their gradients, and every rank scores the same gathered validation search."""
    pytest.importorskip("pytorch_metric_learning")
    pytest.importorskip("faiss")
    from conftest import make_identity_folder

    ids = make_identity_folder(tmp_path / "ids", identities=10, views=4)
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["train", "--data", str(ids), *TINY, "--epochs", "2", "--quiet", "--set", "task=embed",
              "--set", "val_fraction=0.3", "--set", "loss_args={scale: 16}"]
    a, b = one_and_two_processes(common, one, two)
    assert any(".objective." in k for k in a) and a.keys() == b.keys()
    # The attention key bias gets a zero gradient in exact arithmetic (softmax ignores a shift),
    # so AdamW turns rounding differences of summation order into full steps there: skipped.
    for k in (k for k in a if not k.endswith("qkv.bias")):
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    for x, y in zip(_records(one), _records(two), strict=True):
        assert y["val_images"] == x["val_images"]
        assert y["val_map"] == pytest.approx(x["val_map"], abs=1e-5)
