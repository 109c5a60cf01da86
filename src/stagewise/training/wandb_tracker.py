"""Weights & Biases through Accelerate's `WandBTracker`: one W&B run per stagewise run folder.

Where a stage sits decides how its W&B run is named and grouped: a pipeline's stages (and their
baselines) share the pipeline's W&B group, and a stage logs its epochs at the pipeline's global
epoch (the epochs the earlier stages trained, plus its own), so the group's charts put the stages
one after the other; the stage's name, index and step offset are its W&B config. The W&B run id
is kept in the run folder (`wandb_run.json`), so a resumed stage continues its W&B run, and the
run level reopens it once the report is drawn to add the report's plots (and, with
`wandb_log_model`, the final weights as a model artifact).

Everything W&B offers through its environment applies: WANDB_MODE=offline (the run is written
under the run folder's wandb/, for `wandb sync`), WANDB_PROJECT (default: stagewise),
WANDB_ENTITY, WANDB_DIR (instead of the run folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import write_json
from ..runfolder import (
    BASELINES,
    CELLS,
    MODEL_CARD,
    STAGES,
    WANDB_RUN,
    read_history,
    read_manifest,
    stage_dir,
    trained_epochs,
)

DEFAULT_PROJECT = "stagewise"


@dataclass(frozen=True)
class Placement:
    """Where a run folder sits: alone, or as a stage/baseline of a pipeline or a compare cell."""

    group: str | None = None  # the W&B group: the pipeline's or comparison's folder name
    job_type: str = "stage"  # stage | baseline | cell
    stage: str | None = None
    stage_index: int | None = None
    step_offset: int = 0  # epochs trained by the pipeline's earlier stages


def placement(run_dir: Path) -> Placement:
    """The pipeline or comparison `run_dir` belongs to, read from the folder layout and manifest."""
    parent = run_dir.parent
    if parent.name == CELLS:
        return Placement(group=parent.parent.name, job_type="cell", stage=run_dir.name)
    if parent.name not in (STAGES, BASELINES):
        return Placement()
    pipeline = parent.parent
    try:
        manifest = read_manifest(pipeline)
    except (ValueError, OSError):
        manifest = None
    order = list(manifest["order"]) if manifest else []
    name = run_dir.name
    if parent.name == BASELINES or name not in order:
        return Placement(group=pipeline.name, job_type="baseline" if parent.name == BASELINES else "stage",
                         stage=name)
    index = order.index(name)
    offset = sum(len(trained_epochs(read_history(stage_dir(pipeline, s)))) for s in order[:index])
    return Placement(group=pipeline.name, stage=name, stage_index=index, step_offset=offset)


def open_wandb(run_dir: Path, run_name: str, config: dict[str, Any] | None) -> Any:
    """A started tracker for `run_dir`: a new W&B run, or the one this folder logged to before."""
    from accelerate.tracking import WandBTracker

    where = placement(run_dir)
    name = f"{where.group}/{run_name}" if where.group else run_name

    class StageTracker(WandBTracker):
        """Logs at the pipeline's global epoch, and says which stage each point belongs to."""

        def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
            extra = {"stage_index": where.stage_index} if where.stage_index is not None else {}
            global_step = None if step is None else step + where.step_offset
            super().log({**values, **extra, "epoch": step}, step=global_step, **kwargs)

    tracker = StageTracker(_project(), **_init_kwargs(run_dir, name, where))
    try:
        tracker.start()
    except Exception as exc:  # wandb raises its own types (UsageError, CommError) for these
        raise ConfigError(f"log_with: wandb could not start a run ({_first_line(exc)}); log in with "
                          "`wandb login`, or set WANDB_MODE=offline to write the run locally and "
                          "`wandb sync` it later") from None
    _remember(run_dir, tracker.run)
    if config:
        tracker.store_init_configuration(config)
    if where.group:
        tracker.run.config.update({"stage": where.stage, "stage_index": where.stage_index,
                                   "step_offset": where.step_offset, "job_type": where.job_type},
                                  allow_val_change=True)
    return tracker


def publish(run_dir: Path, files_dir: Path, log_model: bool) -> bool:
    """Reopen the W&B run of `run_dir` to log the report's plots of `files_dir` (its plots/ as
    images) and, with `log_model`, the weights model.json names as a model artifact.
    False when `run_dir` never logged to W&B."""
    saved = _saved(run_dir)
    if saved is None:
        return False
    import wandb

    plots = sorted((files_dir / "plots").glob("*.png"))
    card = files_dir / MODEL_CARD
    if not plots and not (log_model and card.is_file()):
        return True
    where = placement(run_dir)
    run = wandb.init(project=saved.get("project") or _project(),
                     **_init_kwargs(run_dir, saved.get("name") or run_dir.name, where, saved["id"]))
    try:
        if plots:
            run.log({f"report/{p.stem}": wandb.Image(str(p), caption=p.stem) for p in plots})
        if log_model and card.is_file():
            run.log_artifact(_model_artifact(wandb, files_dir, card, saved.get("name") or run_dir.name))
    finally:
        run.finish()
    return True


def _model_artifact(wandb: Any, folder: Path, card: Path, name: str) -> Any:
    meta = json.loads(card.read_text())
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    art = wandb.Artifact(f"{safe}-model", type="model", metadata={
        "architecture": meta.get("architecture"), "classes": len(meta.get("class_ids") or []),
        "metrics": meta.get("metrics") or {}})
    art.add_file(str(folder / str(meta.get("weights") or "best.safetensors")))
    art.add_file(str(card))
    return art


def _init_kwargs(run_dir: Path, name: str, where: Placement, run_id: str | None = None) -> dict[str, Any]:
    saved = _saved(run_dir) or {}
    kwargs: dict[str, Any] = {"name": name, "id": run_id or saved.get("id"), "resume": "allow",
                              "dir": os.environ.get("WANDB_DIR") or str(run_dir),
                              "group": where.group, "job_type": where.job_type}
    return {k: v for k, v in kwargs.items() if v is not None}


def _project() -> str:
    return os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT


def _remember(run_dir: Path, run: Any) -> None:
    """The W&B run's id (and where it is), so a resume and `publish` reopen the same run."""
    write_json(run_dir / WANDB_RUN, {"id": run.id, "project": run.project, "name": run.name,
                                     "url": getattr(run, "url", None), "dir": str(run.dir)})


def _saved(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / WANDB_RUN
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("id"), str) else None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
