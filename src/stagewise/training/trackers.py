"""Optional experiment trackers (TensorBoard, MLflow, Weights & Biases) through Accelerate's
tracker classes (W&B's placement of pipeline stages: wandb_tracker.py).

Nothing of TensorBoard, MLflow or W&B is imported unless a tracker is asked for; asking for one that
is not installed is a clear error naming the extra to install. The trainer calls
`open_tracker` once per run, `log_epoch` with every epoch record and `close_tracker` at the end;
the run level calls `publish` once the report is drawn (W&B: its plots, and the model).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..metrics import is_finite, tracked

TRACKERS = ("tensorboard", "mlflow", "wandb")


def open_tracker(log_with: str | None, run_dir: str | Path, run_name: str,
                 config: dict[str, Any] | None = None) -> Any:
    """An started Accelerate tracker for `log_with`, or None when `log_with` is None/'none'.

    TensorBoard writes to `run_dir/tensorboard/<run_name>`; MLflow logs to the tracking URI of
    the environment (MLFLOW_TRACKING_URI, default ./mlruns) in experiment 'stagewise'; W&B to the
    project WANDB_PROJECT (default stagewise), offline under `run_dir/wandb/` with WANDB_MODE=offline.
    """
    if not require_tracker(log_with):
        return None
    if log_with == "wandb":
        from .wandb_tracker import open_wandb

        return open_wandb(Path(run_dir), run_name, config)
    from accelerate.tracking import MLflowTracker, TensorBoardTracker

    if log_with == "tensorboard":
        tracker: Any = TensorBoardTracker(run_name, logging_dir=str(Path(run_dir) / "tensorboard"))
    else:
        tracker = MLflowTracker(experiment_name="stagewise", run_name=run_name)
    tracker.start()
    if config:
        tracker.store_init_configuration(_hparams(config))
    return tracker


def require_tracker(log_with: str | None) -> bool:
    """False for no tracker; True when `log_with` can be used; else a ConfigError saying what to
    install. Call it before training, so a missing package is found before the first epoch."""
    if log_with in (None, "", "none"):
        return False
    if log_with not in TRACKERS:
        raise ConfigError(f"log_with: unknown tracker '{log_with}'; choose one of none, {', '.join(TRACKERS)}")
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "mlflow": is_mlflow_available,
                 "wandb": is_wandb_available}[log_with]()
    if not available:
        raise ConfigError(f"--log-with {log_with}: the {log_with} package is not installed; "
                          f"pip install 'stagewise[{log_with}]' (or drop --log-with)")
    return True


def log_epoch(tracker: Any, record: Mapping[str, Any]) -> None:
    """Log one epoch record (as in history.jsonl): metrics, and the LR of each param group.

    The step is the global epoch when the record has one (pipelines), else the epoch.
    """
    if tracker is None:
        return
    # Every number the record holds that the metric registry marks as tracked: a stage's own
    # metrics (retrieval, distillation) reach the tracker without a list here to keep in step.
    values: dict[str, float] = {k: float(record[k]) for k in tracked() if is_finite(record.get(k))}
    for group, lr in (record.get("lr") or {}).items():
        if is_finite(lr):
            values[f"lr/{group}"] = float(lr)
    step = record.get("global_epoch", record.get("epoch", 0))
    if values:
        tracker.log(values, step=int(step))


def close_tracker(tracker: Any) -> None:
    if tracker is not None:
        tracker.finish()


def publish(log_with: str | None, run_dir: str | Path, files_dir: str | Path | None = None,
            log_model: bool = False) -> None:
    """After the report: W&B gets the plots of `files_dir` (default `run_dir`; a pipeline's
    folder for its last stage) as images, and with `log_model` its final weights as a model
    artifact, in the W&B run of `run_dir`. The other trackers keep their curves only."""
    if log_with != "wandb":
        return
    from .wandb_tracker import publish as publish_wandb

    publish_wandb(Path(run_dir), Path(files_dir or run_dir), log_model)


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
    """Trackers take scalar hyperparameters only: lists and mappings become strings."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out

