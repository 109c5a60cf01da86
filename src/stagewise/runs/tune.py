"""`stagewise tune`: a hyperparameter search with Optuna over any keys of a stage or a pipeline.

Each trial is an ordinary run (`runs.train`, `runs.pipeline.run`) in OUT/trials/<number>/,
scored by its monitor (a pipeline: its last stage's). Pruning reads the epoch records through
a stage callback (`PruneHook`, training/callbacks.py). Workers in other processes or on other machines
share one study through its storage (a journal file by default, or an RDB URL); the search
never runs one parameter set twice (`_duplicate_of`; docs/decisions.md says why this way).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..config.choices import TunePruner as PrunerName
from ..config.choices import TuneSampler as SamplerName
from ..config.schema import TrainConfig
from ..config.search_space import Param, Scalar, SearchSpace
from ..errors import ConfigError, StagewiseError, clip
from ..runfolder import TUNE_JOURNAL, EpochRecord, trial_dir
from ..training.callbacks import Callback, StageInfo, StopTraining
from ..training.distributed import from_main, is_main_process, world_size
from ..training.progress import Reporter, make_reporter
from .tune_summary import write_summary
from .tune_target import TuneTarget

if TYPE_CHECKING:
    import optuna

DEFAULT_STUDY = "stagewise"
# Duplicates drawn in a row before a worker concludes the sampler has nothing new to offer.
MAX_DUPLICATES = 20
_SPACE_ATTR = "stagewise.space"  # the study remembers its space: workers must agree on it


@dataclass
class TuneResult:
    """What one worker did, and where the study's summary is."""

    out: Path
    study: str
    finished: int  # trials this worker ran to the end or pruned (duplicates skipped not counted)
    best: dict[str, Any] | None  # the study's best trial: number, value, params, run_dir
    summary: Path | None  # the report (None when the study has no finished trial yet)
    stopped: str  # why the worker stopped: "done", or the space is used up


class _Duplicate(Exception):
    """A parameter set another trial already has: this trial is dropped and another is drawn."""


class _Failed(Exception):
    """A trial whose training failed (NaN loss at a too high LR, a bad combination of keys)."""


class PruneHook(Callback):
    """Reports the objective's monitor to the trial after each epoch and stops the stage when the
    pruner says so: never before `after` epochs, never at the last epoch (it is complete then).
    A stage callback (training/callbacks.py) on rank 0 only: the stage follows rank 0's stop."""

    def __init__(self, trial: optuna.Trial, final: Path, monitor: str, after: int) -> None:
        self.trial, self.final, self.monitor, self.after = trial, final.resolve(), monitor, after
        self.pruned_at: int | None = None
        self.cfg: TrainConfig | None = None

    def on_stage_start(self, info: StageInfo) -> None:
        # A pipeline calls every stage's and baseline's callbacks: only the final stage counts.
        self.cfg = info.config if Path(info.config.out).resolve() == self.final else None

    def on_epoch_end(self, record: EpochRecord) -> None:
        cfg, value, epoch = self.cfg, record.get(self.monitor), int(record.get("epoch", 0))
        if cfg is None or not isinstance(value, (int, float)) or epoch < 1:
            return
        if math.isfinite(value):
            self.trial.report(float(value), step=epoch)
        if epoch <= self.after or epoch >= cfg.epochs or not self.trial.should_prune():
            return
        self.pruned_at = epoch
        raise StopTraining(f"pruned by the search (trial {self.trial.number}): {self.monitor} "
                           "behind the other trials")


def require_optuna() -> Any:
    """Optuna, or an error that says how to install it (it is an extra, not a core dependency)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("stagewise tune needs Optuna: pip install 'stagewise[tune]'") from None
    return optuna


def open_storage(url: str | None, out: Path) -> Any:
    """The study's storage: an RDB URL as is (heartbeats mark a dead worker's trial failed), else
    a journal file (OUT/study.journal by default), safe for processes sharing a filesystem."""
    import optuna

    if url and "://" in url:
        with warnings.catch_warnings():  # heartbeats are "experimental": they are what frees a dead worker's trial
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
    path = Path(url).expanduser() if url else out / TUNE_JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # Optuna >= 4.0
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    except ImportError:  # pragma: no cover - older Optuna spells it JournalFileStorage
        from optuna.storages import JournalFileOpenLock
        from optuna.storages import JournalFileStorage as JournalFileBackend
    # The symlink lock (Optuna's default) needs symlinks; O_EXCL works on Windows too.
    lock = JournalFileOpenLock(str(path)) if os.name == "nt" else None
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def _sampler(name: SamplerName, space: SearchSpace, seed: int | None) -> Any:
    """auto: every parameter set once in random order for a finite space, else TPE (with the
    constant liar, so parallel workers do not all chase the same region)."""
    import optuna

    if name == "brute" and space.size is None:
        raise ConfigError("--sampler brute needs a finite space (lists, int ranges, uniform with step)")
    # BruteForceSampler and the constant liar are "experimental" in Optuna's terms; they are
    # what a grid and parallel workers need, and the warning would only repeat that.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "brute" or (name == "auto" and space.size is not None):
            return optuna.samplers.BruteForceSampler(seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _pruner(name: PrunerName) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def open_study(target: TuneTarget, storage: Any, name: str, sampler: Any, pruner: Any) -> optuna.Study:
    """The study `name` in `storage`, created by the first worker; later ones must search the
    same space for the same objective."""
    import optuna

    direction: Literal["maximize", "minimize"] = "maximize" if target.goal == "max" else "minimize"
    study = optuna.create_study(storage=storage, study_name=name, direction=direction,
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} {study.direction.name.lower()}s its objective and this "
                          f"search would {direction} {target.monitor}: use another --study")
    wanted = {"space": target.space.as_data(), "monitor": target.monitor}
    saved = study.user_attrs.get(_SPACE_ATTR)
    if saved is None:
        study.set_user_attr(_SPACE_ATTR, wanted)
    elif saved != wanted:
        raise ConfigError(f"study {name!r} searches {_said(saved)} and this config {_said(wanted)}: "
                          "workers of one study need the same tune: section; use another --study")
    return study


def _said(searched: dict[str, Any]) -> str:
    space = searched.get("space") or {}
    return clip(f"{json.dumps(space)} for {searched.get('monitor')}", 400)


def suggest(trial: optuna.Trial, param: Param) -> Scalar:
    """One parameter's value for the trial, from its distribution."""
    if param.kind == "categorical":
        return trial.suggest_categorical(param.key, list(param.choices))
    if param.kind == "int":
        return trial.suggest_int(param.key, int(param.low), int(param.high),
                                 step=int(param.step or 1), log=param.log)
    return trial.suggest_float(param.key, param.low, param.high, step=param.step, log=param.log)


def _duplicate_of(study: optuna.Study, number: int, params: Mapping[str, Scalar]) -> int | None:
    """Another trial, running or finished (not failed), with these very parameters.

    Two workers can draw the same set at once. Each one writes its parameters, then looks: of
    two such trials at least the later looker sees the other, and the one that sees drops its
    own (both may, rarely: a redraw costs less than a repeat)."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    for other in study.get_trials(deepcopy=False, states=live):
        if other.number != number and other.params == dict(params):
            return other.number
    return None


def _distinct_sets(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len({tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False, states=live)})


def _run_trial(target: TuneTarget, params: dict[str, Scalar], out: Path, reporter: str,
               callbacks: tuple[Callback, ...] = ()) -> None:
    """The trial's training, exactly as `stagewise train` / `stagewise run` would do it."""
    if target.pipeline:
        from .pipeline import run

        run(target.pipeline_plan(params, out), out, overrides=[], reporter=reporter, callbacks=callbacks)
    else:
        from .single import train

        train(target.stage_config(params, out), reporter=reporter, callbacks=callbacks)


class _Objective:
    """One trial: draw, drop a duplicate, train with the pruning hook, score."""

    def __init__(self, target: TuneTarget, out: Path, reporter: str, prune_after: int, say: Reporter) -> None:
        self.target, self.out, self.reporter, self.prune_after, self.say = target, out, reporter, prune_after, say
        self.outcome = ""

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        params = {p.key: suggest(trial, p) for p in self.target.space.params}
        other = _duplicate_of(trial.study, trial.number, params)
        if other is not None:
            trial.set_user_attr("duplicate_of", other)
            self.outcome = "duplicate"
            raise _Duplicate(other)
        folder = trial_dir(self.out, trial.number)
        if folder.exists() and any(folder.iterdir()):  # not this study's: never write into it
            raise ConfigError(f"{folder} already holds a run that is not trial {trial.number} of study "
                              f"{trial.study.study_name!r}; give this study another --out")
        trial.set_user_attr("run_dir", str(folder))
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        self.say.message(f"trial {trial.number}: {shown} -> {folder}")
        if world_size() > 1:
            from_main((trial.number, params))  # the other ranks train this trial with rank 0
        hook = PruneHook(trial, self.target.final_dir(folder, params), self.target.monitor, self.prune_after)
        try:
            _run_trial(self.target, params, folder, self.reporter, (hook,))
        except StagewiseError as exc:  # NaN at a too high LR is an answer of the search, not a bug
            trial.set_user_attr("error", str(exc)[:2000])
            self.outcome = "failed"
            self.say.message(f"warning: trial {trial.number} failed: {exc}")
            raise _Failed(str(exc)) from None
        value = self.target.objective(hook.final)
        if hook.pruned_at is not None:
            self.outcome = "pruned"
            self.say.message(f"trial {trial.number} pruned after epoch {hook.pruned_at}")
            raise optuna.TrialPruned(f"pruned after epoch {hook.pruned_at}")
        if value is None:
            self.outcome = "failed"
            raise _Failed(f"no {self.target.monitor} was measured")
        self.outcome = "complete"
        self.say.message(f"trial {trial.number} complete: {self.target.monitor} {value:.4f}")
        return value


def tune(target: TuneTarget, out: str | Path, *, trials: int, storage: str | None = None,
         study: str = DEFAULT_STUDY, sampler: SamplerName = "auto", pruner: PrunerName = "median",
         prune_after: int = 1, seed: int | None = None, reporter: str = "rich") -> TuneResult:
    """Run `trials` trials of the study (with other workers, if any) and write its summary.

    Example:
        >>> from stagewise.config.search_space import parse_space
        >>> from stagewise.runs.tune_target import tune_target
        >>> base = {"data": "data/pets", "model": "resnet18", "weights": "hub", "epochs": 5}
        >>> space = parse_space({"lr": {"log_uniform": [1e-4, 1e-2]}, "strategy": ["probe", "finetune"]}, "t")
        >>> tune(tune_target(base, space, "t", []), "runs/tune", trials=20)  # doctest: +SKIP
    """
    optuna = require_optuna()
    out = Path(out)
    if not is_main_process():  # under torchrun: rank 0 runs the study, the others train with it
        return _follow(target, out, reporter, study)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the worker says what happens, once
    opened = open_study(target, open_storage(storage, out), study, _sampler(sampler, target.space, seed),
                        _pruner(pruner))
    say = make_reporter(reporter, "tune")
    try:
        finished, stopped = _work(opened, target, out, trials, reporter, prune_after, say)
    finally:
        say.close()
        if world_size() > 1:
            from_main(None)  # the other ranks stop following
    summary, best = write_summary(opened, target, out)
    return TuneResult(out=out, study=study, finished=finished, best=best, summary=summary, stopped=stopped)


def _work(study: optuna.Study, target: TuneTarget, out: Path, trials: int, reporter: str,
          prune_after: int, say: Reporter) -> tuple[int, str]:
    """Trials one at a time until `trials` have finished here, or the space is used up."""
    objective = _Objective(target, out, reporter, prune_after, say)
    finished = duplicates = 0
    size = target.space.size
    while finished < trials:
        if size is not None and _distinct_sets(study) >= size:
            return finished, f"all {size} parameter sets of the space have been tried"
        study.optimize(objective, n_trials=1, catch=(_Duplicate, _Failed))
        if objective.outcome == "duplicate":
            duplicates += 1
            if duplicates >= MAX_DUPLICATES:
                return finished, f"the sampler drew {MAX_DUPLICATES} parameter sets in a row that had run"
            continue
        duplicates = 0
        finished += 1
        write_summary(study, target, out, report=False)
    return finished, "done"


def _follow(target: TuneTarget, out: Path, reporter: str, study: str) -> TuneResult:
    """A rank other than 0 under torchrun: train each trial rank 0 announces, until it says stop.
    Rank 0 alone talks to the study, and its hook decides about pruning for all (stage.py)."""
    finished = 0
    while (announced := from_main(None)) is not None:
        number, params = announced
        # Rank 0 records a failure; this rank goes on with the next trial.
        with contextlib.suppress(StagewiseError):
            _run_trial(target, params, trial_dir(out, number), reporter)
        finished += 1
    return TuneResult(out=out, study=study, finished=finished, best=None, summary=None, stopped="done")
