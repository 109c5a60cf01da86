"""stagewise: transfer learning and progressive, stage-by-stage training of image classifiers.

The public API is what this module exports; everything else may change.

Names are imported on first use (PEP 562): `import stagewise` and `stagewise --help` should not
pay for torch, timm or matplotlib until a function that needs them is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__
from .errors import (
    CallbackError,
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
    from .training import Callback, StageInfo, StopTraining, TrainResult

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
    "Callback": "training",
    "StageInfo": "training",
    "StopTraining": "training",
}

__all__ = [
    "Callback",
    "CallbackError",
    "Classifier",
    "ConfigError",
    "DataError",
    "Ensemble",
    "Evaluation",
    "NonFiniteLoss",
    "PipelineResult",
    "Prediction",
    "StageInfo",
    "StagewiseError",
    "StopTraining",
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
