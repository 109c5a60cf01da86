"""Configuration, one module per job:

- `schema`: `TrainConfig`, every key of a stage with its type, bounds and default;
- `pipeline`: a pipeline file's own keys (`PipelineFile`, `PipelineStage`);
- `choices`: the names a key may take (`Literal` types), light enough for the CLI's --help;
- `yaml_loader`: the hardened YAML reader (`parse_yaml`, `load_yaml`);
- `overrides`: `--set key=value` (`apply_overrides`);
- `errors_format`: pydantic errors as one message with key paths and valid choices.

Names are imported on first use (PEP 562): reading config.yaml (`yaml_loader`) must not build the
schema, and the schema's validators reach into models/ and data/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from .choices import (
        OWN_OPTIMIZERS,
        Augmentation,
        CacheMode,
        DataFormat,
        HeadMode,
        LogWith,
        MetricLoss,
        Miner,
        Precision,
        SchedulerName,
        Strategy,
        Task,
        choices_of,
    )
    from .errors_format import (
        CHOICE_ERROR,
        MAX_LISTED,
        MAX_PER_KEY,
        format_validation_error,
        listing,
        validation_problems,
    )
    from .overrides import (
        apply_overrides,
    )
    from .pipeline import (
        MAX_STAGES,
        PipelineFile,
        PipelineStage,
    )
    from .schema import (
        MAX_EPOCHS,
        MAX_LR,
        ClassWeight,
        Distill,
        EpochNumber,
        EpochPoint,
        LearningRate,
        LossArg,
        Mean,
        ProgressiveResize,
        Std,
        TrainConfig,
        build_config,
        optimizer_names,
    )
    from .yaml_loader import (
        MAX_CONFIG_BYTES,
        MAX_DEPTH,
        load_yaml,
        parse_yaml,
    )

# Exported name -> the module of this package that defines it (every public name of the former
# single config.py, so imports written against it keep working).
_EXPORTS = {
    "OWN_OPTIMIZERS": "choices",
    "Augmentation": "choices",
    "CacheMode": "choices",
    "DataFormat": "choices",
    "HeadMode": "choices",
    "LogWith": "choices",
    "MetricLoss": "choices",
    "Miner": "choices",
    "Precision": "choices",
    "SchedulerName": "choices",
    "Strategy": "choices",
    "Task": "choices",
    "choices_of": "choices",
    "CHOICE_ERROR": "errors_format",
    "MAX_LISTED": "errors_format",
    "MAX_PER_KEY": "errors_format",
    "format_validation_error": "errors_format",
    "listing": "errors_format",
    "validation_problems": "errors_format",
    "apply_overrides": "overrides",
    "MAX_STAGES": "pipeline",
    "PipelineFile": "pipeline",
    "PipelineStage": "pipeline",
    "MAX_EPOCHS": "schema",
    "MAX_LR": "schema",
    "ClassWeight": "schema",
    "Distill": "schema",
    "EpochNumber": "schema",
    "EpochPoint": "schema",
    "LearningRate": "schema",
    "LossArg": "schema",
    "Mean": "schema",
    "ProgressiveResize": "schema",
    "Std": "schema",
    "TrainConfig": "schema",
    "build_config": "schema",
    "optimizer_names": "schema",
    "MAX_CONFIG_BYTES": "yaml_loader",
    "MAX_DEPTH": "yaml_loader",
    "load_yaml": "yaml_loader",
    "parse_yaml": "yaml_loader",
}

__all__ = [
    "Augmentation",
    "CHOICE_ERROR",
    "CacheMode",
    "ClassWeight",
    "DataFormat",
    "Distill",
    "EpochNumber",
    "EpochPoint",
    "HeadMode",
    "LearningRate",
    "LogWith",
    "LossArg",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_EPOCHS",
    "MAX_LISTED",
    "MAX_LR",
    "MAX_PER_KEY",
    "MAX_STAGES",
    "Mean",
    "MetricLoss",
    "Miner",
    "OWN_OPTIMIZERS",
    "PipelineFile",
    "PipelineStage",
    "Precision",
    "ProgressiveResize",
    "SchedulerName",
    "Std",
    "Strategy",
    "Task",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "choices_of",
    "format_validation_error",
    "listing",
    "load_yaml",
    "optimizer_names",
    "parse_yaml",
    "validation_problems",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
