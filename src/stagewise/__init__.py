"""stagewise: transfer learning and progressive, stage-by-stage training of image classifiers.

The public API is what this module exports; everything else may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import TrainConfig  # noqa: E402
from .errors import ConfigError, DataError, StagewiseError, TrainingInterrupted, WeightsError  # noqa: E402
from .inference import Classifier, Prediction, load  # noqa: E402
from .pipeline import PipelineResult, run  # noqa: E402
from .stage import TrainResult, train  # noqa: E402

__all__ = [
    "Classifier",
    "ConfigError",
    "PipelineResult",
    "Prediction",
    "DataError",
    "StagewiseError",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "WeightsError",
    "__version__",
    "load",
    "run",
    "train",
]
