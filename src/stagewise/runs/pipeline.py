"""Chains stages: hands weights over by class identity, keeps the manifest, resumes.

The pipeline owns ordering, handoff and resume; each stage is an ordinary one-stage run
(`stage.train`) in RUN/stages/<name>/, which knows nothing about the others.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from .. import defaults
from ..config.schema import TrainConfig
from ..errors import ConfigError, StagewiseError
from ..io import file_sha256, write_json, write_with
from ..kinds import task
from ..models import LoadedWeights
from ..runfolder import (
    BEST,
    FINAL,
    MANIFEST,
    MANIFEST_FORMAT,
    MODEL_CARD,
    PIPELINE_HISTORY,
    BaselineEntry,
    Gain,
    Manifest,
    StageEntry,
    StageSummary,
    baseline_dir,
    gain_verdict,
    holds_nothing_trained,
    holds_run,
    proves_pipeline_run,
    read_history,
    read_json,
    read_manifest,
    read_model_card,
    stage_dir,
    trained_epochs,
    write_manifest,
    write_model_card,
)
from ..training import TrainResult, resume_config
from ..training.callbacks import Hooks
from ..training.distributed import from_main, is_main_process, wait_for_everyone
from ..training.progress import Reporter, make_reporter
from ..training.trackers import publish
from .plan import PipelinePlan, StagePlan, load_pipeline
from .single import Resume, locked, train_stage


@dataclass
class PipelineResult:
    """What `run` leaves behind: the manifest's stage entries, the final weights, the history."""

    run_dir: Path
    stages: dict[str, StageEntry]
    final_weights: Path | None
    history: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # every stage had already finished: a resume found nothing to do

    def summary(self) -> list[dict[str, Any]]:
        """One row per stage: its status, best val top-1, test top-1 (None without a test split)
        and transfer gain (None without a baseline)."""
        return [{"stage": n, **{k: s.get(k) for k in ("status", "best_val_top1", "test_top1", "gain")}}
                for n, s in self.stages.items()]


def sha256(path: Path) -> str:
    return file_sha256(path)


def run(
    pipeline: str | Path | dict[str, Any] | PipelinePlan | None,
    out: str | Path = defaults.PIPELINE_OUT,
    *,
    stages: list[str] | None = None,
    resume: Resume = False,
    overrides: Sequence[str] = (),
    reporter: str = "rich",
    callbacks: Sequence[Any] = (),
) -> PipelineResult:
    """Run a pipeline of stages into `out`; `callbacks` (stagewise.Callback) are called by every
    stage (baselines included: `info.run_dir` says which). `resume="auto"`: continue the run in
    `out` when it holds one, else start it (a requeued job passes it every time); a finished run
    returns at once with `complete=True`.

    Example:
        >>> import stagewise
        >>> r = stagewise.run("curriculum.yaml", out="runs/cur", overrides=["data_root=data"])  # doctest: +SKIP
    """
    out = Path(out)
    if resume == "auto":  # rank 0 looks, every rank follows
        resume = bool(from_main(read_quietly(out) is not None))
    if pipeline is None:  # a resume needs only the folder: it holds the resolved plan
        pipeline, overrides = _saved_plan(out, resume), ()
    elif resume and not overrides:  # the file again: with the overrides it was started with
        overrides = _saved_overrides(out)
    plan = pipeline if isinstance(pipeline, PipelinePlan) else load_pipeline(pipeline, list(overrides), out)
    with locked(out, "pipeline", proves_pipeline_run):
        return _run(plan, out, stages, resume, overrides, reporter, Hooks(callbacks).callbacks)


def _run(plan: PipelinePlan, out: Path, stages: list[str] | None, resume: bool,
         overrides: Sequence[str], reporter: str, callbacks: Sequence[Any] = ()) -> PipelineResult:
    manifest = _open(plan, out, stages, resume, overrides)
    hint = _resume_hint(out)
    trained: StagePlan | None = None  # the last stage trained now
    for stage in plan.stages:
        entry = manifest["stages"][stage.name]
        if stages and stage.name not in stages:
            if entry["status"] != "done":
                entry["status"] = "skipped"
            continue
        if entry["status"] == "done":
            _check_finished(out, stage, entry)
            continue
        rep = make_reporter(reporter, stage.name)
        try:
            _run_stage(plan, stage, out, manifest, rep, hint, callbacks)
        finally:
            rep.close()
        _save(out, plan, manifest, report=stage.config.report)
        trained = stage
    # Without training (a kill after the manifest marked the last stage done but before the
    # final files were written), the final files are written now so they match the manifest.
    _save(out, plan, manifest, report=False, files=trained is None)
    if trained is not None and is_main_process():  # W&B: the pipeline's plots and final model,
        cfg = trained.config                        # in the W&B run of its last stage
        publish(cfg.log_with, stage_dir(out, trained.name), out, log_model=cfg.wandb_log_model)
    complete = trained is None and all(manifest["stages"][s.name]["status"] == "done" for s in plan.stages)
    if complete and is_main_process():
        make_reporter(reporter).message(f"pipeline complete: every stage in {out} finished before; "
                                        "nothing to do")
    return PipelineResult(run_dir=out, stages=manifest["stages"],
                          final_weights=out / FINAL if (out / FINAL).exists() else None,
                          history=read_json(out / PIPELINE_HISTORY) or {}, complete=complete)


def _open(plan: PipelinePlan, out: Path, stages: list[str] | None, resume: bool,
          overrides: Sequence[str]) -> Manifest:
    """The manifest to continue (resume) or a new one, after every check; written by rank 0."""
    if (out / MANIFEST).exists() and not resume:
        raise ConfigError(f"{out} already holds a pipeline run; pass --resume to continue it, or another --out")
    unknown = [s for s in stages or [] if s not in plan.order]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(plan.order)}")
    manifest = _load_manifest(out / MANIFEST, plan) if resume else _new_manifest(plan, overrides)
    _check_skips(plan, stages, manifest, out)
    wait_for_everyone()  # every rank has checked the folder before rank 0 writes into it
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        write_manifest(out, manifest)
    return manifest


def _check_skips(plan: PipelinePlan, stages: list[str] | None, manifest: Manifest, out: Path) -> None:
    """A stage that starts from an earlier one's weights cannot run while that one is skipped and
    has none: it would silently start from random init instead."""
    if not stages:
        return
    problems = []
    for stage in plan.stages:
        parent = stage.parent(plan.order)
        if stage.name not in stages or parent is None or parent in stages:
            continue
        if not (stage_dir(out, parent) / BEST).is_file():
            problems.append(f"stage '{stage.name}' starts from stage '{parent}', which --stages skips "
                            f"and which has no weights in {stage_dir(out, parent)}: add it to --stages, or "
                            f"say where '{stage.name}' starts (--set stages.{stage.name}.init=pretrained "
                            f"with weights, or init=scratch)")
    if problems:
        raise ConfigError("\n".join(problems))


def _save(out: Path, plan: PipelinePlan, manifest: Manifest, report: bool, files: bool = True) -> None:
    """The manifest, and with `files` history.json, the final model and the report (rank 0)."""
    if is_main_process():
        write_manifest(out, manifest)
        if files:
            _write_history(out, plan, manifest)
            _write_final(out, plan, manifest)
        if report:
            from ..reporting import write_report  # lazy: matplotlib only when a report is drawn

            write_report(out)
    wait_for_everyone()


def _new_manifest(plan: PipelinePlan, overrides: Sequence[str] = ()) -> Manifest:
    return {
        "overrides": list(overrides),
        "format": MANIFEST_FORMAT,
        "name": plan.name,
        "pipeline": plan.source,
        "order": plan.order,
        "stages": {s.name: {"status": "pending", "parent": s.parent(plan.order), "init": s.init}
                   for s in plan.stages},
    }


def _saved_plan(out: Path, resume: bool) -> dict[str, Any]:
    """The resolved pipeline a run folder was started with (what `--resume` alone continues)."""
    if not resume:
        raise ConfigError("run needs a pipeline file, or --resume with the --out of a pipeline run")
    try:
        manifest = read_manifest(out)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{out / MANIFEST}: cannot read the pipeline manifest ({exc})") from None
    if manifest is None or not isinstance(manifest.get("pipeline"), dict):
        if not out.is_dir():
            raise ConfigError(f"--out {out}: no such folder, so no pipeline run to resume; pass "
                              "the --out of a pipeline run, or start one with: stagewise run "
                              f"PIPELINE.yaml --out {out}")
        raise ConfigError(
            f"--out {out} holds no pipeline plan ({out / MANIFEST}): the run there stopped before "
            "it saved one (during start-up), so --resume has nothing to continue and starts "
            f"nothing else. Start it again: stagewise run PIPELINE.yaml --out {out} (the same "
            f"file; or `stagewise run --out {out}` for the demo), or pass the file with --resume")
    return manifest["pipeline"]
    return manifest["pipeline"]


def read_quietly(out: Path) -> Manifest | None:
    """The manifest of `out`, or None where there is none (or none that reads: a resume says why)."""
    try:
        return read_manifest(out)
    except (OSError, ValueError):
        return None


def _saved_overrides(out: Path) -> list[str]:
    try:
        manifest = read_manifest(out)
    except (OSError, ValueError):
        return []  # _load_manifest says what is wrong with it
    return [str(o) for o in (manifest["overrides"] if manifest else None) or []]


def _load_manifest(path: Path, plan: PipelinePlan) -> Manifest:
    try:
        manifest = read_manifest(path.parent)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the pipeline manifest ({exc}); start a new run with "
                          "another --out") from None
    if manifest is None:
        return _new_manifest(plan)  # killed before its first write: nothing to compare with
    if manifest.get("order") != plan.order:
        saved = manifest.get("order")
        raise ConfigError(
            f"{path}: the saved pipeline has stages {saved}, the file now has {plan.order}; "
            "resume with the original pipeline or start a new run"
        )
    # Settings may change for stages that have not started; a started stage refuses a change
    # with the differences listed (`_check_finished`, and `resume_config` as it resumes).
    return manifest


def _check_finished(out: Path, stage: StagePlan, entry: StageEntry) -> None:
    """A finished stage is skipped only when its artifacts still hash as recorded and the
    pipeline still asks for the settings it was trained with: either change is an error (raised
    here), never ignored."""
    name = stage.name
    folder = stage_dir(out, name)
    if holds_run(folder):
        resume_config(folder, _stage_config(stage, folder).model_dump())
    for rel, digest in entry.get("artifacts", {}).items():
        path = out / rel
        if not path.is_file() or sha256(path) != digest:
            raise StagewiseError(
                f"stage '{name}': {path} changed or vanished since the stage finished (hash mismatch). "
                f"Restore it, or delete {folder} and set its status to pending in "
                f"{out / MANIFEST} to train it again"
            )


def _incoming(
    plan: PipelinePlan, stage: StagePlan, out: Path, manifest: Manifest
) -> tuple[LoadedWeights | None, str]:
    """The weights a stage starts from, and a sentence saying where they came from."""
    parent = stage.parent(plan.order)
    if stage.init in ("pretrained", "scratch") or parent is None:
        source = "its own weights" if stage.config.weights else "random init"
        return None, f"starts from {source} (init: {stage.init})"
    weights = stage_dir(out, parent) / BEST
    if weights.is_file() and (stage_dir(out, parent) / MODEL_CARD).is_file():
        card = read_model_card(stage_dir(out, parent))
        # The architecture in the source name makes a model change between stages plain to see
        # when the weights do not fit.
        loaded = LoadedWeights(state_dict=load_file(str(weights)),
                               source=f"stage '{parent}' ({card.architecture})",
                               class_ids=card.class_ids, class_names=card.class_names,
                               class_list_name=f"stage '{parent}'")
        status = manifest["stages"][parent]["status"]
        note = "" if status == "done" else f" (stage '{parent}' is {status}; using its saved weights)"
        return loaded, f"starts from stage '{parent}'{note}"
    fallback = "its own weights" if stage.config.weights else "random init"
    return None, f"parent stage '{parent}' has no saved weights; starts from {fallback} instead"


def _resume_hint(out: Path) -> str:
    """The command that continues this pipeline (an interrupted stage prints it): the folder
    holds the resolved plan and overrides, so nothing else is needed."""
    return f"stagewise run --out {shlex.quote(str(out))} --resume"


def _run_stage(
    plan: PipelinePlan, stage: StagePlan, out: Path, manifest: Manifest, rep: Reporter, hint: str,
    callbacks: Sequence[Any] = (),
) -> None:
    entry = manifest["stages"][stage.name]
    incoming, how = _incoming(plan, stage, out, manifest)
    rep.message(how)
    folder = stage_dir(out, stage.name)
    cfg = _stage_config(stage, folder)
    entry.update({"status": "running", "started": entry.get("started") or time.time(), "how": how})
    if is_main_process():
        write_manifest(out, manifest)
    # A partly trained stage resumes; its config is checked against the saved one, so a changed
    # setting is an error instead of being silently replaced by the saved one. A stage that saved
    # nothing (NaN in its first epoch) starts afresh, with the settings the file has now.
    resume = holds_run(folder) and not holds_nothing_trained(folder)
    if resume:
        cfg = resume_config(folder, cfg.model_dump())
    result = train_stage(cfg, rep, resume, hint, incoming, callbacks=callbacks)
    entry.update(_stage_summary(result))
    if stage.baseline != "none":
        entry["baseline"] = _run_baseline(stage, out, rep, hint, callbacks)
        entry["gain"] = _gain(result, entry["baseline"], _earlier_wall(plan, stage, manifest))
        rep.message(_describe_gain(stage.name, entry["gain"]))
    entry.update({"status": "done", "finished": time.time(),
                  "artifacts": {(stage_dir(Path(), stage.name) / f).as_posix(): sha256(folder / f)
                                for f in (BEST, MODEL_CARD)}})


def _stage_config(stage: StagePlan, folder: Path) -> TrainConfig:
    # The pipeline writes one report for all stages (RUN/report.html), not one per stage.
    return stage.config.model_copy(update={"out": folder, "report": False})


def _stage_summary(result: TrainResult) -> StageSummary:
    hist: list[Mapping[str, Any]] = list(trained_epochs(result.history))
    key = task(result.task).score
    return {
        "task": result.task, "score": key, "best_score": result.best.get(key),
        "first_epoch_score": hist[0].get(key) if hist else None,
        "best_val_top1": result.best.get("val_top1"),
        "best_epoch": result.best.get("epoch"),
        "test_top1": result.test.top1 if result.test is not None else None,
        "first_epoch_val_top1": hist[0].get("val_top1") if hist else None,
        "epochs_run": len(hist),
        "seconds": sum(r.get("epoch_seconds", 0.0) for r in hist),
        "wall_seconds": sum(r.get("wall_seconds", 0.0) for r in hist),
        "best_wall_seconds": _wall_until(hist, result.best.get("epoch")),
        "stopped": result.stopped,
        "head": result.head,
        "classes": len(result.class_ids),
    }


def _run_baseline(stage: StagePlan, out: Path, rep: Reporter, hint: str,
                  callbacks: Sequence[Any] = ()) -> BaselineEntry:
    """The same stage, same budget and seed, without the handoff."""
    bdir = baseline_dir(out, stage.name)
    cfg = stage.config.model_copy(update={"out": bdir, "report": False})
    if stage.baseline == "scratch":
        cfg = cfg.as_scratch()
    rep.message(f"baseline ({stage.baseline}) for stage '{stage.name}'")
    resume = holds_run(bdir) and not holds_nothing_trained(bdir)
    if resume:
        cfg = resume_config(bdir, cfg.model_dump())
    result = train_stage(cfg, rep, resume, hint, callbacks=callbacks)
    return {"kind": stage.baseline, "run_dir": str(bdir.relative_to(out)), **_stage_summary(result),
            "curve": _curve(result)}


def _curve(result: TrainResult) -> list[float]:
    """The stage's score per trained epoch (NaN where an epoch has none)."""
    key = task(result.task).score
    values: list[Mapping[str, Any]] = list(trained_epochs(result.history))
    return [float(v) if isinstance(v := r.get(key), (int, float)) else float("nan") for r in values]


def _wall_until(records: Sequence[Mapping[str, Any]], epoch: int | None) -> float | None:
    """Wall time from the stage's first epoch to the end of `epoch` (None: not an epoch)."""
    if epoch is None or epoch < 1:
        return None
    return sum(r.get("wall_seconds", 0.0) for r in records if r["epoch"] <= epoch)


def _gain(result: TrainResult, base: BaselineEntry, earlier_s: float) -> Gain:
    """The stage against its baseline. `earlier_s`: the wall time of the earlier stages whose
    weights this one started from (the price of the handoff)."""
    hist: list[Mapping[str, Any]] = list(trained_epochs(result.history))
    key = task(result.task).score
    target = base.get("best_score") or 0.0
    elapsed, reached_s, reached_e = 0.0, None, None
    for r in hist:
        elapsed += r.get("epoch_seconds", 0.0)
        if (r.get(key) or 0.0) >= target:
            reached_s, reached_e = elapsed, r["epoch"]
            break
    first = hist[0].get(key) if hist else None
    base_first = base.get("first_epoch_score")
    own = _wall_until(hist, reached_e)
    to_best = earlier_s + own if own is not None else None
    base_best = base.get("best_wall_seconds")
    return {
        "first_epoch": (first - base_first) if first is not None and base_first is not None else None,
        "best": ((result.best.get(key) or 0.0) - target),
        "epochs_to_baseline_best": reached_e,
        "seconds_to_baseline_best": reached_s,
        "baseline_seconds": base.get("seconds"),
        "baseline_s": base.get("wall_seconds"),
        "baseline_best_s": base_best,
        "time_to_baseline_best_s": to_best,
        "pays": to_best is not None and base_best is not None and to_best < base_best,
    }


def _earlier_wall(plan: PipelinePlan, stage: StagePlan, manifest: Manifest) -> float:
    """Wall time of the chain of earlier stages whose weights `stage` starts from."""
    total, current = 0.0, stage
    while (parent := current.parent(plan.order)) is not None:
        total += manifest["stages"][parent].get("wall_seconds") or 0.0
        current = plan.stage(parent)
    return total


def _describe_gain(name: str, gain: Gain) -> str:
    first = f"{gain['first_epoch']:+.3f}" if gain.get("first_epoch") is not None else "-"
    reached = (f"reached the baseline's best at epoch {gain['epochs_to_baseline_best']}"
               if gain.get("epochs_to_baseline_best") else "did not reach the baseline's best")
    return (f"transfer gain for '{name}': first epoch {first}, best {gain['best']:+.3f}; {reached}; "
            f"{gain_verdict(gain)}")


def _write_history(out: Path, plan: PipelinePlan, manifest: Manifest) -> None:
    """history.json: every stage's trained epochs on one global epoch axis."""
    stages, epochs, global_epoch = [], [], 0
    for name in plan.order:
        records = trained_epochs(read_history(stage_dir(out, name)))
        if not records and not holds_run(stage_dir(out, name)):
            continue
        first = global_epoch + 1
        for r in records:
            global_epoch += 1
            epochs.append({"global_epoch": global_epoch, "stage": name, **r})
        entry = manifest["stages"][name]
        stages.append({"name": name, "run_dir": stage_dir(Path(), name).as_posix(), "first_epoch": first,
                       "last_epoch": global_epoch, "strategy": plan.stage(name).config.strategy,
                       "baseline": entry.get("baseline"), "gain": entry.get("gain"), "head": entry.get("head")})
    write_json(out / PIPELINE_HISTORY, {"stages": stages, "epochs": epochs})


def _write_final(out: Path, plan: PipelinePlan, manifest: Manifest) -> None:
    """final.safetensors + model.json: the last stage of the plan that has finished."""
    done = [n for n in plan.order if manifest["stages"][n]["status"] == "done"]
    if not done:
        return
    src = stage_dir(out, done[-1])
    write_with(out / FINAL, lambda tmp: _copy(src / BEST, tmp))
    card = read_model_card(src)
    card.weights, card.stage = FINAL, done[-1]
    write_model_card(out, card)


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
