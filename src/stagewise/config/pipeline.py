"""The keys of a pipeline file, typed: `PipelineFile` (the top level) and `PipelineStage` (what a
stage entry adds to a stage's TrainConfig keys: name, init, baseline).

Validated with the same messages as a stage's keys (key path, valid keys or choices). What needs
the whole file (variables, stage references, data folders) is checked by runs/plan.py, after
`${var}` substitution; these models check only the shape.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STAGES = 100
InitSource = str  # "previous" | "pretrained" | "scratch" | the name of an earlier stage
Baseline = Literal["scratch", "pretrained", "none"]


class PipelineFile(BaseModel):
    """The top level of a pipeline file. Stage entries stay plain data here: their `${var}`s are
    substituted before each is validated (PipelineStage, then TrainConfig)."""

    # Numbers where text belongs (`name: 2024`) are read as text, as they always were.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
    # Said after an unknown top-level key (errors_format): the likeliest reason for one.
    unknown_key_hint: ClassVar[str] = "a variable goes under vars:"

    name: str | None = Field(None, description="the pipeline's name; default: the file's name")
    description: str | None = None
    vars: dict[str, Any] | None = Field(None, description="variables for ${name} in any value; "
                                        "--set NAME=VALUE overrides one")
    defaults: dict[str, Any] | None = Field(None, description="stage keys every stage starts from")
    stages: list[dict[str, Any]] = Field(description="the stages in order: name:, data: and any "
                                         "stage key, plus init: and baseline:")

    @field_validator("stages", mode="before")
    @classmethod
    def _stage_count(cls, value: Any) -> Any:
        # Before the items are validated: a hostile file's 10^6 entries are not checked one by one.
        if isinstance(value, list) and not value:
            raise ValueError("expected a non-empty list of stages")
        if isinstance(value, list) and len(value) > MAX_STAGES:
            raise ValueError(f"{len(value)} stages; a pipeline may have at most {MAX_STAGES}")
        return value


class PipelineStage(BaseModel):
    """The keys a stage entry has beyond TrainConfig's; every other key is a TrainConfig key."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    name: str | None = Field(None, description="the stage's folder name (stages/<name>); "
                             "default: stage<N>")
    init: InitSource = Field("previous", description="previous, pretrained, scratch or the name of "
                             "an earlier stage: where the stage's weights come from")
    baseline: Baseline = Field("none", description="train the same stage again without the handoff "
                               "(from scratch or from the pretrained weights) to measure the gain")

    def train_keys(self) -> dict[str, Any]:
        """The entry's TrainConfig keys (everything but the pipeline's own)."""
        return dict(self.__pydantic_extra__ or {})
