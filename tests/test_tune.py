"""`stagewise tune`: two workers share one study without running a parameter set twice, the best
config runs again as written, pruning stops a stage the way early stopping does, and a bad
search space fails at once (exit 2) with the valid forms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_image_folder
from stagewise.cli import main
from stagewise.config.search_space import parse_space
from stagewise.errors import ConfigError

optuna = pytest.importorskip("optuna")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
# 2 strategies x 2 LRs x 2 epoch counts: 8 sets for 6 trials, so two workers drawing at random
# would often repeat one; tiny steps (18 images of 32 px, test_resnet) keep a trial well under 1 s.
BASE = {"model": "test_resnet", "image_size": 32, "batch_size": 8, "num_workers": 0, "report": False}
SPACE = {"strategy": ["probe", "finetune"], "lr": [0.01, 0.001], "epochs": {"int": [1, 2]}}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_two_workers_share_one_study_and_the_best_config_runs_again(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=6)
    space = _write(tmp_path / "space.yaml", {**BASE, "tune": SPACE})
    out = tmp_path / "tune"
    cmd = [sys.executable, "-m", "stagewise", "tune", "--data", str(data), "--model", "test_resnet",
           "--config", str(space), "--trials", "3", "--out", str(out), "--quiet"]
    workers = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="stagewise", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    states = [t.state.name for t in study.trials]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6, states
    assert "RUNNING" not in states
    sets = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(sets)) == 6, f"a parameter set ran twice: {sets}"
    # A drawn repeat is dropped before it trains, and says which trial it repeats.
    assert all(t.user_attrs.get("duplicate_of") is not None for t in study.trials if t.state.name == "FAIL")
    for t in complete:  # each trial is a normal run folder
        run = out / "trials" / str(t.number)
        assert (run / "best.safetensors").is_file() and (run / "history.jsonl").is_file()
        assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == t.params["lr"]

    summary = json.loads((out / "trials.json").read_text())
    assert summary["best"]["number"] == study.best_trial.number
    assert summary["monitor"] == "val_top1" and len(summary["trials"]) == len(study.trials)
    assert (out / "tune.png").stat().st_size > 0 and "Parameter importance" in (out / "report.md").read_text()

    # best.yaml is a pipeline `stagewise run` runs as it is; same seed, same data: same score.
    again = tmp_path / "again"
    assert main(["run", str(out / "best.yaml"), "--out", str(again), "--quiet"]) == 0
    history = [json.loads(x) for x in (again / "stages" / "best" / "history.jsonl").read_text().splitlines()]
    assert max(r["val_top1"] for r in history) == pytest.approx(study.best_value, abs=1e-6)
    stage = yaml.safe_load((out / "best_stage.yaml").read_text())
    assert {k: stage[k] for k in SPACE} == study.best_params and "out" not in stage


def test_pruned_trial_stops_like_early_stopping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pruned trial keeps a normal run folder (its epochs so far, best weights) and is marked
    pruned in the study; it never stops before --prune-after epochs."""
    from stagewise.runs import tune as tune_module
    from stagewise.runs.tune_target import tune_target

    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:  # noqa: ANN001
            return True

    monkeypatch.setattr(tune_module, "_pruner", lambda name: Always())
    data = make_image_folder(tmp_path / "data", per_class=4)
    base = {**BASE, "data": str(data), "epochs": 4, "strategy": "finetune"}
    target = tune_target(base, parse_space({"lr": {"log_uniform": [1e-3, 1e-2]}}, "t"), "t", [])
    result = tune_module.tune(target, tmp_path / "tune", trials=1, prune_after=2, reporter="quiet")
    rows = json.loads((tmp_path / "tune" / "trials.json").read_text())["trials"]
    assert [r["state"] for r in rows] == ["pruned"] and result.finished == 1
    run = tmp_path / "tune" / "trials" / "0"
    epochs = [json.loads(x)["epoch"] for x in (run / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3] and rows[0]["epochs_reported"] == 3
    assert (run / "best.safetensors").is_file() and not (tmp_path / "tune" / "best.yaml").exists()


@pytest.mark.parametrize(("spec", "said"), [
    ({"lr": {"loguniform": [1e-4, 1e-2]}}, "is not a search range"),
    ({"lr": {"log_uniform": [0, 1e-2]}}, "0 < low"),
    ({"epochs": {"int": [8, 2]}}, "must be below high"),
    ({"epochs": {"int": [1, 8], "step": 0.5}}, "positive whole number"),
    ({"strategy": []}, "non-empty list"),
    ({"lr": 0.01}, "is not a search range"),
])
def test_bad_space_exits_2_with_the_valid_forms(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 spec: dict, said: str) -> None:
    space = _write(tmp_path / "space.yaml", {**BASE, "data": str(tmp_path), "tune": spec})
    assert main(["tune", "--config", str(space), "--out", str(tmp_path / "t"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert said in err and "{log_uniform: [low, high]}" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_unknown_key_is_the_configs_own_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_image_folder(tmp_path / "data", per_class=2)
    space = _write(tmp_path / "space.yaml", {**BASE, "tune": {"lrr": [0.1, 0.01]}})
    assert main(["tune", "--data", str(data), "--config", str(space), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "lrr" in err and "unknown" in err.lower()
    # A value out of the key's range is refused at its corner of the space, before any trial.
    _write(space, {**BASE, "tune": {"batch_size": {"int": [0, 8]}}})
    assert main(["tune", "--data", str(data), "--config", str(space), "--out", str(tmp_path / "t")]) == 2
    assert "batch_size" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_pipeline_space_uses_run_set_keys(tmp_path: Path) -> None:
    """In a pipeline a key is what `stagewise run --set` takes; the objective is the last stage's."""
    from stagewise.runs.tune_target import tune_target

    data = make_image_folder(tmp_path / "data", per_class=2)
    pipeline = {"defaults": {**BASE, "epochs": 1}, "stages": [
        {"name": "first", "data": str(data)}, {"name": "last", "data": str(data), "monitor": "val_loss"}]}
    space = parse_space({"stages.last.lr": {"log_uniform": [1e-4, 1e-2]}, "defaults.epochs": {"int": [1, 3]}}, "p")
    target = tune_target(dict(pipeline), space, "p.yaml", [])
    assert target.pipeline and (target.monitor, target.goal) == ("val_loss", "min")
    params = {"stages.last.lr": 0.003, "defaults.epochs": 2}
    assert target.final_dir(tmp_path / "t", params) == tmp_path / "t" / "stages" / "last"
    best = target.best_files(params)["pipeline"]
    assert best["stages"][1]["lr"] == 0.003 and best["defaults"]["epochs"] == 2
    with pytest.raises(ConfigError, match=r"no variable \$\{lr\}"):
        tune_target(dict(pipeline), parse_space({"lr": [0.1, 0.01]}, "p"), "p.yaml", [])


def test_space_forms() -> None:
    space = parse_space({"a": ["x", "y"], "b": {"int": [2, 8], "step": 2}, "c": {"uniform": [0, 1], "step": 0.25},
                         "d": {"int": [1, 64], "log": True}}, "s")
    assert [p.size for p in space.params] == [2, 4, 5, 64] and space.size == 2 * 4 * 5 * 64
    assert parse_space({"lr": {"log_uniform": [1e-4, 1e-2]}}, "s").size is None
    corners = list(space.corners())
    assert {c["a"] for c in corners} == {"x", "y"} and {c["b"] for c in corners} == {2, 8}
    with pytest.raises(ConfigError, match="lists a value twice"):
        parse_space({"a": [1, 1]}, "s")


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_drawn_repeat_is_dropped_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sampler that draws a set another trial has (running or finished) gets its trial dropped,
    with the trial it repeats named, and the worker stops after a bounded number in a row."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from stagewise.runs import tune as tune_module
    from stagewise.runs.tune_target import tune_target

    out = tmp_path / "tune"
    target = tune_target({**BASE, "data": str(tmp_path), "epochs": 1},
                         parse_space({"strategy": ["probe", "finetune"]}, "t"), "t", [])
    # Another worker already ran strategy=probe in this study.
    study = tune_module.open_study(target, tune_module.open_storage(None, out), "stagewise",
                                   optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
    study.add_trial(create_trial(params={"strategy": "probe"}, value=0.5,
                                 distributions={"strategy": CategoricalDistribution(["probe", "finetune"])}))
    always_probe = optuna.samplers.PartialFixedSampler({"strategy": "probe"}, optuna.samplers.RandomSampler())
    monkeypatch.setattr(tune_module, "_sampler", lambda *a: always_probe)
    result = tune_module.tune(target, out, trials=1, reporter="quiet")
    assert result.finished == 0 and "in a row" in result.stopped
    rows = json.loads((out / "trials.json").read_text())["trials"]
    assert len(rows) == 1 + tune_module.MAX_DUPLICATES
    assert all(r["state"] == "fail" and r["duplicate_of"] == 0 for r in rows[1:])
    assert not (out / "trials").exists()  # nothing trained
