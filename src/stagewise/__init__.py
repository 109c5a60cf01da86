"""stagewise: transfer learning and progressive, stage-by-stage training of image classifiers.

The public API is what this module exports; everything else may change.

Names are imported on first use (PEP 562): `import stagewise` and `stagewise --help` should not
pay for torch, timm or matplotlib until a function that needs them is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    ConfigError,
    DataError,
    NonFiniteLoss,
    StagewiseError,
    TrainingInterrupted,
    WeightsError,
)

if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from .config import TrainConfig
    from .inference import Classifier, Ensemble, Evaluation, Prediction, evaluate, export, load
    from .reporting import write_report
    from .runs import PipelineResult, compare, lr_find, run, train
    from .training import TrainResult

# Exported name -> the module that defines it (relative to this package).
_EXPORTS = {
    "TrainConfig": "config",
    "Classifier": "inference",
    "Ensemble": "inference",
    "Evaluation": "inference",
    "Prediction": "inference",
    "evaluate": "inference",
    "export": "inference",
    "load": "inference",
    "write_report": "reporting",
    "PipelineResult": "runs",
    "compare": "runs",
    "lr_find": "runs",
    "run": "runs",
    "train": "runs",
    "TrainResult": "training",
}

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
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stagewise' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
