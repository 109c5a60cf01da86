"""Training one stage: set-up (shared by everything that trains), the loop, checkpoints, stopping.

Never imports runs/, reporting/ or cli/: whether a report is written or which command resumes a
run is decided by whoever called the stage.
"""

from .callbacks import Callback, StageInfo, StopTraining
from .setup import StageSetup, coerce_config, prepare_stage, resume_config, start_epoch
from .stage import TrainResult, run_stage

__all__ = [
    "Callback",
    "StageInfo",
    "StopTraining",
    "StageSetup",
    "TrainResult",
    "coerce_config",
    "prepare_stage",
    "resume_config",
    "run_stage",
    "start_epoch",
]
