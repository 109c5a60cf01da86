"""A search's summary from its study: trials.json, the best config as files ready to run
(best.yaml for `stagewise run`, best_stage.yaml for `stagewise train --config`), parameter
importance and the report (drawn by reporting/tune_report.py, which reads plain data only).

Every worker writes it after each of its trials (atomically: workers may write at once), and the
report when it stops; `stagewise tune --trials 0` writes it again from the study alone.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..io import write_json, write_text
from ..runfolder import TUNE_BEST, TUNE_BEST_STAGE, TUNE_TRIALS
from .tune_target import TuneTarget

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("stagewise")


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One plain row per trial, in number order (a dropped duplicate says which trial it repeats)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        steps = sorted(t.intermediate_values)
        rows.append({
            "number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
            "epochs_reported": len(steps),
            "last_reported": t.intermediate_values[steps[-1]] if steps else None,
            "seconds": seconds, "run_dir": t.user_attrs.get("run_dir"),
            "duplicate_of": t.user_attrs.get("duplicate_of"), "error": t.user_attrs.get("error"),
        })
    return rows


def best_trial(study: optuna.Study) -> dict[str, Any] | None:
    """The best complete trial, or None before one has completed."""
    try:
        t = study.best_trial
    except ValueError:  # no complete trial yet
        return None
    return {"number": t.number, "value": t.value, "params": t.params, "run_dir": t.user_attrs.get("run_dir")}


def importance(study: optuna.Study) -> tuple[dict[str, float], str]:
    """Parameter importance (Optuna's default evaluator) and a note; {} with the reason when it
    cannot be said (fewer than 2 complete trials, or no parameter varied among them)."""
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return {}, f"importance needs at least 2 complete trials ({len(done)} so far)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature and small-sample warnings
            found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {}, f"importance could not be computed from {len(done)} trials: {exc}"
    return {k: float(v) for k, v in found.items()}, f"from {len(done)} complete trials"


def write_best(target: TuneTarget, best: dict[str, Any], out: Path, study: str) -> None:
    """best.yaml (and best_stage.yaml for a stage) with a header that says how to run them."""
    files = target.best_files(best["params"])
    head = (f"# The best trial ({best['number']}) of study {study!r}: {target.monitor} "
            f"{best['value']:.4f}, run folder {best['run_dir']}\n")
    write_text(out / TUNE_BEST, head + f"# Run it again: stagewise run {out / TUNE_BEST} --out RUN_FOLDER\n"
               + yaml.safe_dump(files["pipeline"], sort_keys=False))
    if "stage" in files:
        write_text(out / TUNE_BEST_STAGE, head + f"# Train it again: stagewise train --config "
                   f"{out / TUNE_BEST_STAGE} --out RUN_FOLDER\n" + yaml.safe_dump(files["stage"], sort_keys=False))


def write_summary(study: optuna.Study, target: TuneTarget, out: Path,
                  report: bool = True) -> tuple[Path | None, dict[str, Any] | None]:
    """trials.json and the best config; with `report`, importance and the report too. Returns
    the report's path (None before any trial finished) and the best trial."""
    rows = trial_rows(study)
    best = best_trial(study)
    if best is not None:
        write_best(target, best, out, study.study_name)
    scores, note = importance(study) if report else ({}, "")
    write_json(out / TUNE_TRIALS, {
        "study": study.study_name, "monitor": target.monitor, "direction": target.goal,
        "space": target.space.as_data(), "best": best, "importance": scores, "importance_note": note,
        "trials": rows,
    })
    if not report or not any(r["state"] in ("complete", "pruned") for r in rows):
        return None, best
    from ..reporting.tune_report import write_tune_report

    return write_tune_report(out, {"study": study.study_name, "monitor": target.monitor,
                                   "goal": target.goal, "space": target.space.as_data(), "best": best,
                                   "importance": scores, "importance_note": note, "trials": rows}), best
