"""Failures a run must survive and explain: a full disk, a damaged checkpoint, NaN loss, what a
kill leaves behind; and progress bars for the passes that are not training epochs."""

from __future__ import annotations

import errno
import math
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.errors import CheckpointError, NonFiniteLoss
from stagewise.io import remove_leftovers
from stagewise.training import checkpoint, loop, progress
from stagewise.training.checkpoint import Resumable, load_last, save_last, save_weights
from stagewise.training.stopping import StopTracker


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("hardening") / "data", per_class=8)


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "test_resnet", "--image-size", "32",
            "--batch-size", "8", "--num-workers", "0", "--lr", "0.01", "--seed", "0", "--quiet",
            "--out", str(out), *extra]


def _train(data: Path, out: Path, **kw) -> stagewise.training.TrainResult:
    return stagewise.train(tiny_config(data, out, **kw), reporter="quiet")


# --- 1a: a full disk while saving --------------------------------------------------------------

def _tiny_parts(value: float) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    return model, opt, sched


def _half_then_enospc(real):
    """A writer that writes half of what `real` writes, then fails as a full disk does."""
    def fake(obj, path, *args, **kwargs):
        real(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    return fake


@pytest.mark.parametrize("fails", ["save_file", "torch.save", "safetensors-error", "torch-runtime"])
def test_full_disk_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, fails: str) -> None:
    last, best = tmp_path / "last", tmp_path / "best.safetensors"
    model, opt, sched = _tiny_parts(1.0)
    save_last(last, model, opt, sched, None, None, Resumable(1, 0, 3, StopTracker(), 1))
    save_weights(model, best)
    if fails == "save_file":
        monkeypatch.setattr(checkpoint, "save_file", _half_then_enospc(checkpoint.save_file))
    elif fails == "torch.save":
        monkeypatch.setattr(torch, "save", _half_then_enospc(torch.save))
    elif fails == "safetensors-error":
        def broken(*a, **k):
            raise SafetensorError("Error while serializing: IoError(No space left on device)")
        monkeypatch.setattr(checkpoint, "save_file", broken)
    else:
        def broken(*a, **k):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        monkeypatch.setattr(torch, "save", broken)

    newer, opt2, sched2 = _tiny_parts(2.0)
    with pytest.raises(CheckpointError, match=f"cannot write {last}"):
        save_last(last, newer, opt2, sched2, None, None, Resumable(2, 0, 6, StopTracker(), 2))
    if fails in ("save_file", "safetensors-error"):
        with pytest.raises(CheckpointError, match=f"cannot write {best}"):
            save_weights(newer, best)
    monkeypatch.undo()

    restored, opt3, sched3 = _tiny_parts(0.0)
    where = load_last(last, restored, opt3, sched3, None, None)
    assert where is not None and where.epoch == 1
    assert float(restored.weight.detach()[0, 0]) == 1.0
    assert float(load_file(str(best))["weight"][0, 0]) == 1.0
    # The half-written folder and temp files are gone: they would only hold the full disk.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "last"]


def test_full_disk_in_a_run_is_exit_2_with_the_resume_command(data: Path, tmp_path: Path,
                                                              monkeypatch, capsys) -> None:
    monkeypatch.setattr(checkpoint, "save_file", _half_then_enospc(checkpoint.save_file))
    out = tmp_path / "run"
    assert main(_args(data, out, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    assert f"stagewise train --resume --out {out}" in err
    assert "cannot write" in err and str(out) in err


# --- 1b: a damaged checkpoint on --resume ------------------------------------------------------

@pytest.fixture(scope="module")
def finished(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    _train(data, out, epochs=1)
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", ["state.pt", "model.safetensors"])
def test_damaged_checkpoint_on_resume_names_the_file(finished: Path, data: Path, tmp_path: Path,
                                                    capsys, name: str) -> None:
    run = _copy(finished, tmp_path / "run")
    damaged = run / "last" / name
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(damaged) in err and "cannot resume" in err
    assert "weights_only" not in err and "Traceback" not in err
    assert (run / "last" / name).is_file()  # never deleted: the user decides


def test_damaged_checkpoint_points_to_last_old_and_keeps_it(finished: Path, tmp_path: Path,
                                                            capsys) -> None:
    run = _copy(finished, tmp_path / "run")
    _copy(run / "last", run / "last.old")
    (run / "last" / "state.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'last.old'} holds the checkpoint before it" in err
    assert (run / "last.old" / "state.pt").is_file()


def test_missing_state_file_is_damaged_not_a_fresh_start(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path / "run")
    (run / "last" / "state.pt").unlink()
    with pytest.raises(CheckpointError, match="state.pt is missing"):
        stagewise.train(resume=True, out=str(run), reporter="quiet")


# --- 2: NaN/inf loss says what was saved -------------------------------------------------------

def _nan_from_call(monkeypatch, first_bad: int) -> None:
    """The epoch's loss is NaN from the `first_bad`-th epoch on (1-based: the loop sums it over
    the ranks once per epoch, at its end)."""
    real, calls = loop._Tally.means, {"n": 0}

    def means(self, acc):
        calls["n"] += 1
        loss, top1, seen = real(self, acc)
        return (math.nan if calls["n"] >= first_bad else loss), top1, seen

    monkeypatch.setattr(loop._Tally, "means", means)


def test_nan_before_any_epoch_says_nothing_was_saved_and_reruns(data: Path, tmp_path: Path,
                                                               monkeypatch) -> None:
    out = tmp_path / "run"
    _nan_from_call(monkeypatch, 1)
    with pytest.raises(NonFiniteLoss) as info:
        _train(data, out)
    text = str(info.value)
    assert "No epoch finished and nothing was saved" in text and "resume with" not in text
    assert "checkpoint is kept" not in text
    monkeypatch.undo()
    # The same folder starts afresh (with other settings, too) instead of "already holds a run".
    result = _train(data, out, lr=5e-3)
    assert [r["epoch"] for r in result.history] == [1, 2]


def test_nan_after_an_epoch_names_the_checkpoint_and_resume(data: Path, tmp_path: Path,
                                                           monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    _nan_from_call(monkeypatch, 2)  # NaN in epoch 2
    assert main(_args(data, out, "--epochs", "2")) == 2
    err = capsys.readouterr().err
    assert f"{out / 'last'} holds the checkpoint saved at the end of epoch 1" in err
    assert f"resume with: stagewise train --resume --out {out}" in err
    assert "Traceback" not in err
    monkeypatch.undo()
    # A run that trained an epoch is kept: a fresh start there is refused.
    assert main(_args(data, out, "--epochs", "2")) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_nan_weights_are_never_checkpointed(data: Path, tmp_path: Path, monkeypatch) -> None:
    from stagewise.training import stage

    model = nn.Linear(2, 2)
    assert stage._finite(model)
    with torch.no_grad():
        model.bias[0] = math.nan
    assert not stage._finite(model)
    # Weights that go bad between two loss checks: the second epoch's checkpoint is refused.
    checks = {"n": 0}

    def finite(m: nn.Module) -> bool:
        checks["n"] += 1
        return checks["n"] == 1

    monkeypatch.setattr(stage, "_finite", finite)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match="weights became NaN/inf") as info:
        _train(data, out)
    assert "saved at the end of epoch 1" in str(info.value)
    assert checkpoint.saved_position(out / "last") == (1, 0)


# --- 3: leftovers of killed writes -------------------------------------------------------------

def _litter(run: Path) -> tuple[list[str], list[str]]:
    """Leftovers in io.py's exact patterns, and look-alikes a user might own."""
    (run / ".history.jsonl.ab1_cd2e.tmp").write_text("{")
    (run / ".best.safetensors.zz99zz99.tmp").write_bytes(b"\0" * 10)
    (run / ".last.new").mkdir()
    (run / ".last.new" / "model.safetensors").write_bytes(b"\0")
    ours = [".history.jsonl.ab1_cd2e.tmp", ".best.safetensors.zz99zz99.tmp", ".last.new"]
    (run / "notes.tmp").write_text("mine")
    (run / ".notes.ABCDEFGH.tmp").write_text("mine")
    (run / ".notes.short.tmp").write_text("mine")
    (run / "last.older").mkdir()
    (run / ".other.new").mkdir()
    return ours, ["notes.tmp", ".notes.ABCDEFGH.tmp", ".notes.short.tmp", "last.older", ".other.new"]


def test_resume_removes_leftovers_and_last_old_only(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path / "run")
    ours, theirs = _litter(run)
    _copy(run / "last", run / "last.old")
    stagewise.train(resume=True, out=str(run), reporter="quiet")
    names = {p.name for p in run.iterdir()}
    assert not names & {*ours, "last.old"}
    assert set(theirs) <= names and "last" in names


def test_fresh_start_removes_leftovers(data: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    _nan_from_call(monkeypatch, 1)
    with pytest.raises(NonFiniteLoss):
        _train(data, out, epochs=1)
    monkeypatch.undo()
    ours, theirs = _litter(out)
    _train(data, out, epochs=1)
    names = {p.name for p in out.iterdir()}
    assert not names & set(ours) and set(theirs) <= names


def test_last_old_is_kept_while_it_is_the_only_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "last.old").mkdir()
    assert remove_leftovers(tmp_path, ("last",)) == []
    assert (tmp_path / "last.old").is_dir()
    (tmp_path / "last").mkdir()
    assert remove_leftovers(tmp_path, ("last",)) == [tmp_path / "last.old"]


# --- 4: progress bars for validation and the LR sweep -------------------------------------------

def _record_bars(monkeypatch) -> list[tuple[str, int | None, int]]:
    seen: list[tuple[str, int | None, int]] = []
    real = progress.RichReporter.task

    def task(self, description, total=None):
        entry = [description, total, 0]
        seen.append(entry)  # type: ignore[arg-type]
        cm = real(self, description, total)

        class Counting:
            def __enter__(self_inner):
                advance = cm.__enter__()

                def counted(n: int = 1) -> None:
                    entry[2] += n
                    advance(n)
                return counted

            def __exit__(self_inner, *exc):
                return cm.__exit__(*exc)
        return Counting()

    monkeypatch.setattr(progress.RichReporter, "task", task)
    return seen  # type: ignore[return-value]


def test_rich_reporter_draws_a_validation_bar(data: Path, tmp_path: Path, monkeypatch) -> None:
    bars = _record_bars(monkeypatch)
    rep = progress.RichReporter()
    _ = stagewise.train(tiny_config(data, tmp_path / "run", epochs=1), reporter=rep)
    validating = [b for b in bars if b[0] == "validating"]
    assert validating and all(b[2] == b[1] for b in validating)  # every batch advanced it


def test_lr_find_bar_when_rich_and_silence_otherwise(data: Path, tmp_path: Path, monkeypatch,
                                                    capsys) -> None:
    bars = _record_bars(monkeypatch)
    cfg = tiny_config(data, tmp_path / "run")
    stagewise.lr_find(cfg, steps=6, reporter="rich")
    assert ("lr-find", 6, 6) in [tuple(b) for b in bars]
    capsys.readouterr()
    for kind in ("json", "quiet"):
        stagewise.lr_find(cfg, steps=6, reporter=kind)
    assert "lr-find" not in capsys.readouterr().out


def test_evaluate_without_a_callback_is_unchanged(data: Path, tmp_path: Path) -> None:
    from stagewise.training import prepare_stage
    from stagewise.training.setup import coerce_config

    setup = prepare_stage(coerce_config(tiny_config(data, tmp_path / "run"), {}),
                          progress.QuietReporter())
    parts = setup.parts
    calls: list[int] = []
    plain = loop.evaluate(setup.eval_model, parts.val_loader, parts.accelerator, parts.num_classes)
    counted = loop.evaluate(setup.eval_model, parts.val_loader, parts.accelerator,
                            parts.num_classes, progress=calls.append)
    assert plain.keys() == counted.keys() and len(calls) == len(parts.val_loader)
    for key in plain:  # the saved predictions are a tensor: compared by value
        if isinstance(plain[key], torch.Tensor):
            assert torch.equal(plain[key], counted[key]), key
        else:
            assert plain[key] == counted[key], key


def test_pipeline_stage_that_saved_nothing_restarts_with_new_settings(data: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    def spec(lr: float) -> dict:
        return {"defaults": {"model": "test_resnet", "image_size": 32, "batch_size": 8,
                             "num_workers": 0, "seed": 0, "lr": lr},
                "stages": [{"name": "s1", "data": str(data), "strategy": "scratch", "epochs": 1}]}

    out = tmp_path / "pipe"
    _nan_from_call(monkeypatch, 1)
    with pytest.raises(NonFiniteLoss, match="nothing was saved"):
        stagewise.run(spec(0.01), out, reporter="quiet")
    monkeypatch.undo()
    # Resuming with a lower LR: the stage had nothing to keep, so it starts afresh with it.
    result = stagewise.run(spec(0.005), out, resume=True, reporter="quiet")
    assert result.stages["s1"]["status"] == "done"
    assert "lr: 0.005" in (out / "stages" / "s1" / "config.yaml").read_text()
