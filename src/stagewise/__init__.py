"""stagewise: transfer learning and progressive, stage-by-stage training of image classifiers.

The public API is what this module exports; everything else may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any  # noqa: E402

from .config import TrainConfig  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError,
    DataError,
    NonFiniteLoss,
    StagewiseError,
    TrainingInterrupted,
    WeightsError,
)
from .inference import Classifier, Evaluation, Prediction, evaluate, export, load  # noqa: E402
from .pipeline import PipelineResult, run  # noqa: E402
from .stage import TrainResult, train  # noqa: E402

if TYPE_CHECKING:
    from .reporting import compare, lr_find, write_report

# Reporting draws with matplotlib; these names import it on first use, not with the package.
_LAZY = {"compare": "compare", "lr_find": "lr_find", "write_report": "report"}

__all__ = [
    "Classifier",
    "ConfigError",
    "DataError",
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
    if name not in _LAZY:
        raise AttributeError(f"module 'stagewise' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(f".reporting.{_LAZY[name]}", __name__), name)
