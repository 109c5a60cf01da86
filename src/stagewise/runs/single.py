"""`stagewise.train`: one stage as a whole run, i.e. the stage plus what a run adds around it
(the report, the command that resumes it)."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from .. import defaults
from ..config.schema import TrainConfig
from ..errors import ConfigError, RunStopped, TrainingInterrupted
from ..lock import run_lock, running_in
from ..models import LoadedWeights
from ..runfolder import (
    BEST,
    MODEL_CARD,
    holds_nothing_trained,
    holds_run,
    proves_stage_run,
    read_done,
    read_history,
    read_model_card,
    read_test,
    write_done,
)
from ..training import TrainResult, coerce_config, resume_config, run_stage
from ..training.callbacks import Hooks
from ..training.distributed import from_main, is_main_process, peer_failures
from ..training.progress import Reporter, make_reporter
from ..training.setup import Given
from ..training.trackers import publish, require_tracker
from .objects import resume_hint, split_objects
from .teacher import load_teacher


def run_folder(config: TrainConfig | dict | str | Path | None, overrides: dict[str, Any],
               resume: bool) -> Path:
    """The folder a run writes: checked config's `out`, or on a resume the given one."""
    if not resume:
        return coerce_config(config, overrides).out
    given = dict(overrides)
    if config is not None:
        given = {**coerce_config(config, {}).model_dump(exclude_unset=True), **given}
    return Path(given.get("out") or (config.out if isinstance(config, TrainConfig) else defaults.TRAIN_OUT))


def stage_config(config: TrainConfig | dict | str | Path | None, overrides: dict[str, Any],
                 resume: bool) -> TrainConfig:
    """The config a run will use: the given one, or on `resume` the saved one (given keys must
    agree with it). A fresh run refuses a folder that already holds a run, unless that run saved
    nothing (it failed before its first epoch finished): then it starts afresh there."""
    if not resume:
        cfg = coerce_config(config, overrides)
        if holds_run(cfg.out) and not holds_nothing_trained(cfg.out):
            raise ConfigError(
                f"{cfg.out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        return cfg
    given = dict(overrides)
    if config is not None:
        given = {**coerce_config(config, {}).model_dump(exclude_unset=True), **given}
    return resume_config(run_folder(config, overrides, resume), given)


Resume = bool | Literal["auto"]


def resolve_resume(resume: Resume, folder: Path) -> bool:
    """`resume="auto"`: continue when `folder` holds a run that saved something, else start
    afresh (what a requeued job passes every time). Rank 0 looks and every rank follows, so a
    folder rank 0 starts writing meanwhile cannot split the decision."""
    if resume != "auto":
        return bool(resume)
    return bool(from_main(holds_run(folder) and not holds_nothing_trained(folder)))


def finished_result(cfg: TrainConfig) -> TrainResult | None:
    """The result of a stage run that already finished everything (done.json), read from its
    files without building anything; None when there is work left."""
    done = read_done(cfg.out)
    if done is None or not (cfg.out / BEST).is_file():
        return None
    card = read_model_card(cfg.out / MODEL_CARD)
    return TrainResult(run_dir=cfg.out, best=done["best"], history=read_history(cfg.out),
                       stopped=done["stopped"], weights=cfg.out / BEST, class_ids=card.class_ids,
                       class_names=card.class_names or card.class_ids, head=card.head, test=read_test(cfg.out),
                       task=cfg.task, complete=True)


def locked(folder: Path, kind: str, proof: Callable[[Path], bool]) -> contextlib.AbstractContextManager:
    """The run-folder lock, held by rank 0 (the other ranks of the same run share its folder);
    `kind` and `proof` say what an existing folder must hold to be written into (lock.py)."""
    return run_lock(folder, kind, proof) if is_main_process() else contextlib.nullcontext()


def train_stage(cfg: TrainConfig, reporter: Reporter, resume: bool, hint: str,
                incoming: LoadedWeights | None = None, given: Given | None = None,
                callbacks: Sequence[Any] = ()) -> TrainResult:
    """run_stage, with `hint` attached to an interruption (or a resumable error: a full disk,
    NaN loss after a checkpoint) so the user is told how to go on."""
    teacher = load_teacher(cfg.teacher) if cfg.teacher else None
    if cfg.teacher:
        _warn_if_training(Path(cfg.teacher).expanduser(), reporter)
    try:
        with peer_failures(cfg.out):
            return run_stage(cfg, reporter, resume=resume, incoming=incoming, teacher=teacher,
                             given=given, hooks=Hooks(callbacks))
    except TrainingInterrupted as exc:
        exc.resume_hint = exc.resume_hint or hint
        reporter.message(f"resume with: {exc.resume_hint}")  # scripts read it from the JSON lines
        raise
    except RunStopped as exc:
        if exc.resumable:
            exc.resume_hint = exc.resume_hint or hint
        raise


def _warn_if_training(teacher: Path, reporter: Reporter) -> None:
    """A teacher whose own run is still training: its best weights may still change."""
    found = running_in(teacher if teacher.is_dir() else teacher.parent)
    if found is not None:
        reporter.message(
            f"warning: teacher {teacher} is still being trained (PID {found[1]} holds {found[0]}): "
            "this stage learns from the weights saved there now (their sha256 is recorded in "
            "teacher.json), not the run's final ones; wait for it to finish for those")


def train(
    config: TrainConfig | dict | str | Path | None = None,
    /,
    *,
    resume: Resume = False,
    reporter: Reporter | str = "rich",
    incoming: LoadedWeights | None = None,
    callbacks: Sequence[Any] = (),
    **overrides: Any,
) -> TrainResult:
    """Train one stage and write its run folder (and its report unless `report: false`).

    `incoming` starts the stage from weights already in memory (with their class list, so the
    head is matched by class id), as a pipeline hands one stage's weights to the next.
    `model` may be a torch module and `data` a (train, val[, test]) tuple of datasets or
    DataLoaders (runs/objects.py; with a module, `head=` names its classifier); `callbacks`:
    `stagewise.Callback` instances called at each epoch's end (training/callbacks.py).

    `resume=True` continues the run in `out`; `resume="auto"` continues it when `out` holds one
    and starts it otherwise (give the full settings then); for a run that already finished it
    returns the saved result (`complete=True`) without building anything.

    Example:
        >>> import stagewise
        >>> r = stagewise.train(data="data/pets", model="resnet18", weights="r18.safetensors",
        ...                     strategy="probe", epochs=5, out="runs/pets")  # doctest: +SKIP
        >>> r.best["val_top1"]  # doctest: +SKIP
    """
    hooks = Hooks(callbacks)  # a class instead of an instance is refused before anything is written
    overrides, given = split_objects(overrides)
    auto = resume == "auto"
    # With "auto" the folder comes from the full settings, which a fresh start needs.
    go_on = resolve_resume(resume, coerce_config(config, overrides).out) if auto else bool(resume)
    with locked(run_folder(config, overrides, go_on), "stage", proves_stage_run):
        cfg = stage_config(config, overrides, go_on)
        require_tracker(cfg.log_with)  # a missing extra is found before anything is written
        rep = make_reporter(reporter) if isinstance(reporter, str) else reporter
        try:
            # A requeue after the end must not rebuild data and model (minutes on ImageNet); a
            # plain --resume still goes through the checkpoint (and says when it is damaged).
            finished = finished_result(cfg) if auto and go_on else None
            if finished is not None:
                rep.message(f"run complete: {cfg.out} finished before ({finished.stopped}); "
                            "nothing to do")
                return finished
            hint = resume_hint(given, f"stagewise train --resume --out {shlex.quote(str(cfg.out))}",
                               str(cfg.out))
            result = train_stage(cfg, rep, go_on, hint, incoming, given, hooks.callbacks)
            if cfg.report and is_main_process():
                from ..reporting import write_report  # lazy: matplotlib only when a report is drawn

                rep.message(f"report: {write_report(cfg.out)}")
            if is_main_process():  # W&B: the report's plots and (wandb_log_model) the weights
                publish(cfg.log_with, cfg.out, log_model=cfg.wandb_log_model)
                write_done(cfg.out, result.stopped, result.best)
            return result
        finally:
            rep.close()
