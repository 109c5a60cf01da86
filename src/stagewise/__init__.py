"""stagewise: transfer learning and progressive, stage-by-stage training of image classifiers.

The public API is what this module exports; everything else may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import TrainConfig
from .errors import (
    ConfigError,
    DataError,
    NonFiniteLoss,
    StagewiseError,
    TrainingInterrupted,
    WeightsError,
)
from .inference import Classifier, Ensemble, Evaluation, Prediction, evaluate, export, load
from .runs import PipelineResult, compare, lr_find, run, train
from .training import TrainResult

if TYPE_CHECKING:
    from .reporting import write_report

__all__ = [
    "Classifier",
    "ConfigError",
    "DataError",
    "Ensemble",
    "Evaluation",
    "NonFiniteLoss",
    "PipelineResult",
    "Prediction",
    "StagewiseError",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "WeightsError",
    "__version__",
    "compare",
    "evaluate",
    "export",
    "load",
    "lr_find",
    "run",
    "train",
    "write_report",
]


def __getattr__(name: str) -> Any:
    # Reports draw with matplotlib: `write_report` imports it on first use, not with the package.
    if name != "write_report":
        raise AttributeError(f"module 'stagewise' has no attribute '{name}'")
    from .reporting import write_report

    return write_report
