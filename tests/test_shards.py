"""Sharded data: `stagewise data shard` writes WebDataset tars, `--data SHARDS` trains from them,
each rank reads its own shards, and a SIGTERM mid-epoch resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_image_folder
from stagewise.cli import main
from stagewise.data.images import load_rgb
from stagewise.data.inspect import inspect_dataset
from stagewise.data.layouts import load_dataset
from stagewise.data.shard_sampler import shard_order
from stagewise.data.shard_writer import parse_size
from stagewise.data.shards import MANIFEST

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
       "PYTHONUNBUFFERED": "1"}
TRAIN = ["--model", "test_resnet", "--image-size", "32", "--batch-size", "4", "--epochs", "1",
         "--num-workers", "0", "--lr", "0.01", "--seed", "0", "--set", "report=false"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    data = make_image_folder(root / "data", classes=("a", "b", "c", "d"), per_class=12,
                             splits=("train",))
    make_image_folder(data, classes=("a", "b", "c", "d"), per_class=2, splits=("val",), seed=1)
    assert main(["data", "shard", str(data), str(root / "shards"), "--shard-size", "32kB",
                 "--quiet"]) == 0
    return root / "shards"


def test_shards_hold_every_image_with_classes_and_counts(shards: Path) -> None:
    manifest = json.loads((shards / MANIFEST).read_text())
    assert manifest["classes"]["ids"] == ["a", "b", "c", "d"]
    assert manifest["splits"]["train"]["counts"] == [12, 12, 12, 12]
    assert manifest["splits"]["val"]["counts"] == [2, 2, 2, 2]
    tars = sorted(shards.glob("train-*.tar"))
    assert len(tars) == len(manifest["splits"]["train"]["shards"]) >= 3
    # Plain WebDataset tars: <key>.png and <key>.cls per sample, readable by any tar reader.
    with tarfile.open(tars[0]) as tar:
        names = tar.getnames()
    assert names[0].endswith(".cls") or names[0].endswith(".png")
    assert {n.rsplit(".", 1)[1] for n in names} == {"png", "cls"}
    index = load_dataset(shards)  # detected as its own layout
    assert index.layout == "shards" and len(index.splits["train"]) == 48
    # A member reads back as the original file's pixels, with its label.
    src = load_dataset(shards.parent / "data")
    by_pixels = {load_rgb(p).tobytes(): lab for p, lab in zip(src.splits["train"].paths or [],
                                                             src.splits["train"].labels, strict=True)}
    train = index.splits["train"]
    for p, lab in zip((train.paths or [])[:6], train.labels[:6], strict=True):
        assert by_pixels[load_rgb(p).tobytes()] == lab
    # The training order was shuffled when written: the first shard mixes classes.
    assert len(set(train.labels[:10])) > 1
    # A shard folder re-shards (another size): the same images and labels.
    again = shards.parent / "again"
    assert main(["data", "shard", str(shards), str(again), "--shard-size", "1MB", "--quiet"]) == 0
    val = load_dataset(again).splits["val"]
    assert val.labels == index.splits["val"].labels
    assert load_rgb((val.paths or [])[3]).tobytes() == load_rgb((index.splits["val"].paths or [])[3]).tobytes()
    # `data inspect` reads the members (hash and decode) like files.
    report = inspect_dataset(shards)
    assert report.total == 56 and report.counts["train"] == [12, 12, 12, 12]
    assert not report.undecodable and report.sizes == {"32x32": 56}


def test_shard_order_is_seeded_disjoint_per_rank_and_equal_in_length() -> None:
    shard_of = np.repeat(np.arange(7), [10, 10, 10, 10, 10, 10, 4])  # 64 samples, a short last shard
    ranks = [shard_order(shard_of, 5, r, 2, window=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 32
    # Each rank reads its own shards: no shard is read by both.
    assert not {shard_of[i] for i in ranks[0]} & {shard_of[i] for i in ranks[1]}
    assert ranks[0] == shard_order(shard_of, 5, 0, 2, window=2)  # a pure function of its inputs
    assert shard_order(shard_of, 6, 0, 2, window=2) != ranks[0]  # another epoch, another order
    # One process reads every sample once, windows of 2 shards at a time.
    alone = shard_order(shard_of, 5, 0, 1, window=2)
    assert sorted(alone) == list(range(64))
    assert len({shard_of[i] for i in alone[:20]}) == 2
    # Fewer shards than ranks: disjoint slices of the samples instead.
    few = [shard_order(np.zeros(9, dtype=np.int64), 1, r, 2) for r in range(2)]
    assert len(few[0]) == len(few[1]) == 5 and set(few[0][:4]).isdisjoint(few[1])


SIGTERM_CHILD = """
import json, sys
from stagewise.training import progress
from stagewise.cli import main

def batch(self, done, loss, acc, lr):
    print(json.dumps({"event": "batch", "done": done}), flush=True)

progress.JsonReporter.batch = batch
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(SIGTERM_CHILD))
    args = ["train", "--data", str(shards), *TRAIN, "--out", str(run), "--log-format", "json"]
    proc = subprocess.Popen([sys.executable, str(script), *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line).get("event") == "batch":
                proc.send_signal(signal.SIGTERM)
                break
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    assert state["epoch"] == 0 and 0 < state["batches_done"] < 12  # stopped inside epoch 1
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1] and history[-1]["global_step"] == 12
    full = tmp_path / "full"
    assert main(["train", "--data", str(shards), *TRAIN, "--out", str(full), "--quiet"]) == 0
    a, b = load_file(full / "last" / "model.safetensors"), load_file(run / "last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


# Each rank writes down which shards its sampler gave it, then runs the real CLI.
RANK_CHILD = """
import json, os, sys
from pathlib import Path
from stagewise.data import shard_sampler
from stagewise.cli import main

real = shard_sampler.ShardSampler._indices

def logged(self):
    order = real(self)
    shards = sorted({int(self.shard_of[i]) for i in order})
    path = Path(os.environ["SHARDS_LOG"]) / f"rank{os.environ['RANK']}-epoch{self.epoch}.json"
    path.write_text(json.dumps({"shards": shards, "n": len(order)}))
    return order

shard_sampler.ShardSampler._indices = logged
sys.exit(main(sys.argv[1:]))
"""


def test_two_processes_read_disjoint_shards_and_finish(shards: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "two", tmp_path / "log"
    log.mkdir()
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(RANK_CHILD))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              str(script), "train", "--data", str(shards), *TRAIN, "--out", str(out), "--quiet"]
    done = subprocess.run(launch, env={**ENV, "SHARDS_LOG": str(log)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    # 48 images over 2 ranks at batch 4: 6 steps, every val image counted once.
    assert record["epoch"] == 1 and record["global_step"] == 6 and record["val_images"] == 8
    ranks = [json.loads((log / f"rank{r}-epoch0.json").read_text()) for r in range(2)]
    assert ranks[0]["n"] == ranks[1]["n"] == 24
    assert not set(ranks[0]["shards"]) & set(ranks[1]["shards"])
    every = len(json.loads((shards / MANIFEST).read_text())["splits"]["train"]["shards"])
    assert sorted(ranks[0]["shards"] + ranks[1]["shards"]) == list(range(every))


def test_bad_input_exits_2_with_the_fix(shards: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new"
    assert main(["data", "shard", str(shards.parent / "data"), str(out), "--shard-size", "256"]) == 2
    assert "--shard-size '256'" in capsys.readouterr().err and not out.exists()
    with pytest.raises(Exception, match="256MB"):
        parse_size("lots")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in shards.glob("*"):
        if f.name != MANIFEST:
            (broken / f.name).symlink_to(f)
    code = main(["train", "--data", str(broken), *TRAIN, "--set", "format=shards", "--out",
                 str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and MANIFEST in err and "stagewise data shard" in err and "Traceback" not in err
    # A shard lost in a copy is named before anything trains.
    (broken / MANIFEST).write_text((shards / MANIFEST).read_text())
    (broken / "train-000001.tar").unlink()
    code = main(["train", "--data", str(broken), *TRAIN, "--out", str(tmp_path / "run2"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "train-000001.tar: missing" in err


def test_disk_cache_of_shards_is_refused_with_the_alternatives(shards: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--data", str(shards), *TRAIN, "--set", "cache=disk", "--out",
                 str(tmp_path / "run"), "--quiet"])
    assert code == 2 and "cache: memory (small data) or none" in capsys.readouterr().err
