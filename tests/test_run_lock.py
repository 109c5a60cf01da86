"""One run per folder, and never into a folder of the user's own files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.errors import ConfigError
from stagewise.lock import LOCK, run_lock

HOLD = """
import sys, time
from pathlib import Path
from stagewise.lock import run_lock
with run_lock(Path(sys.argv[1]), "stage"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", per_class=4)


def test_a_second_run_on_the_same_folder_is_refused_naming_the_holder(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by another stagewise process \(PID {holder.pid}\)"):
            stagewise.train(tiny_config(data, out, epochs=1), reporter="quiet")
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing of a run was written
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing anything by hand: its lock is free, the run goes ahead.
    result = stagewise.train(tiny_config(data, out, epochs=1), reporter="quiet")
    assert result.history[-1]["epoch"] == 1


def test_a_pipeline_folder_is_locked_too(data: Path, tmp_path: Path) -> None:
    spec = {"defaults": {"model": "test_resnet", "image_size": 32, "batch_size": 8, "num_workers": 0,
                         "report": False, "data": str(data)},
            "stages": [{"name": "one", "epochs": 1, "strategy": "scratch"}]}
    out = tmp_path / "pipe"
    with run_lock(out, "pipeline"), pytest.raises(ConfigError, match="in use by another"):
        stagewise.run(spec, out, reporter="quiet")


def test_a_folder_of_the_users_own_files_is_refused_and_untouched(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.json").write_text('{"mine": true}')
    (out / "report.md").write_text("my notes")
    with pytest.raises(ConfigError, match="not a stagewise run"):
        stagewise.train(tiny_config(data, out, epochs=1), reporter="quiet")
    assert json.loads((out / "model.json").read_text()) == {"mine": True}
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "report.md"]


def test_a_failed_start_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(stagewise.DataError):
        stagewise.train(tiny_config(tmp_path / "no-such-data", out), reporter="quiet")
    assert not out.exists()


def test_json_epoch_lines_say_epoch_and_keep_their_note(data: Path, tmp_path: Path, capsys) -> None:
    stagewise.train(tiny_config(data, tmp_path / "g", strategy="gradual", epochs=2), reporter="json")
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    epochs = [x for x in lines if x.get("epoch") is not None and "train_loss" in x]
    assert [x["event"] for x in epochs] == ["epoch", "epoch"]
    assert epochs[1]["note"].startswith("unfreeze:")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_lock_file_names_the_pid(tmp_path: Path) -> None:
    with run_lock(tmp_path / "x", "stage"):
        assert (tmp_path / "x" / LOCK).read_text().split() == [str(os.getpid()), "stage"]
