"""Things that run stages: a single stage as a run, pipelines, comparison grids, the LR range
test, the built-in presets and the demo. They decide about reports and resume commands."""

from .comparison import CompareResult, compare
from .lr_range import lr_find, lr_range_test
from .pipeline import PipelineResult, run
from .single import train

__all__ = ["CompareResult", "PipelineResult", "compare", "lr_find", "lr_range_test", "run", "train"]
