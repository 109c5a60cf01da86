"""What `stagewise tune` searches over: a base config (one stage, or a pipeline) and the way a
parameter set becomes a trial's config, the same way `--set` changes a config.

A stage's parameter `lr` is `--set lr=...` for `stagewise train`; a pipeline's `stages.NAME.lr`,
`defaults.lr` or a variable `NAME` is `--set` for `stagewise run`. Every corner of the space is
validated by the config's own checks before the first trial, so an unknown key or a value out of
its range fails at once (exit 2) with the config's message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config.overrides import apply_overrides
from ..config.schema import TrainConfig, build_config
from ..config.search_space import Scalar, SearchSpace
from ..errors import ConfigError
from ..metrics import Goal, metric
from ..runfolder import best_record, read_history, stage_dir
from .plan import PipelinePlan, load_pipeline

# Keys a search may not set: where a trial writes is the search's to decide.
_FIXED = ("out",)


def as_override(key: str, value: Scalar) -> str:
    """`key=value` with the value written as YAML, so `--set`'s parser reads back exactly it
    (1e-05 as a float, 'yes' as text)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return f"{key}={text.removesuffix(chr(10) + '...' + chr(10)).strip()}"


@dataclass
class TuneTarget:
    """A base config and its search space; `pipeline` says which kind the base is."""

    base: dict[str, Any]
    space: SearchSpace
    source: str
    pipeline: bool
    overrides: list[str] = field(default_factory=list)  # a pipeline's own --set, before the params
    monitor: str = "val_top1"
    goal: Goal = "max"

    def stage_config(self, params: Mapping[str, Scalar], out: Path) -> TrainConfig:
        """A stage trial's config: the base, the parameters, its folder."""
        data = apply_overrides(self.base, [as_override(k, v) for k, v in params.items()])
        return build_config({**data, "out": str(out)}, source=self.source)

    def pipeline_plan(self, params: Mapping[str, Scalar], out: Path, check_data: bool = True) -> PipelinePlan:
        """A pipeline trial's plan: the file, its --set, then the parameters."""
        given = [*self.overrides, *(as_override(k, v) for k, v in params.items())]
        return load_pipeline(self.base, given, out, check_data=check_data)

    def final_dir(self, out: Path, params: Mapping[str, Scalar]) -> Path:
        """The run folder whose epochs are the objective: the trial's, or its last stage's."""
        return stage_dir(out, self.pipeline_plan(params, out, False).stages[-1].name) if self.pipeline else out

    def objective(self, final: Path) -> float | None:
        """The best value of the monitor in the objective's run folder (None: nothing measured)."""
        value = best_record(read_history(final), self.monitor).get(self.monitor)
        return float(value) if isinstance(value, (int, float)) else None

    def best_files(self, params: Mapping[str, Scalar]) -> dict[str, dict[str, Any]]:
        """The configs of a parameter set, ready to run: a pipeline (`stagewise run`) and, for a
        stage, the stage config itself (`stagewise train --config`). No `out`: the user picks it."""
        if self.pipeline:
            source = self.pipeline_plan(params, Path("."), False).source
            return {"pipeline": source}
        data = apply_overrides(self.base, [as_override(k, v) for k, v in params.items()])
        data.pop("out", None)
        return {"pipeline": {"name": "best", "stages": [{"name": "best", **data}]}, "stage": data}


def tune_target(raw: dict[str, Any], space: SearchSpace, source: str, overrides: list[str]) -> TuneTarget:
    """The base config (`raw` without its `tune:`) checked at every corner of the space."""
    fixed = [k for k in space.keys if k.split(".")[-1] in _FIXED]
    if fixed:
        raise ConfigError(f"{source}: tune.{fixed[0]}: a search decides where trials write "
                          "(OUT/trials/<number>); remove it from tune:")
    pipeline = isinstance(raw.get("stages"), list)
    target = TuneTarget(base=raw, space=space, source=source, pipeline=pipeline, overrides=overrides)
    monitors = {_monitor(target, corner) for corner in space.corners()}
    if len(monitors) > 1:
        raise ConfigError(f"{source}: the trials would be scored by different metrics "
                          f"({', '.join(sorted(monitors))}): the search compares one; do not tune "
                          "monitor or task")
    target.monitor = monitors.pop()
    goal = metric(target.monitor).goal
    if goal is None:
        raise ConfigError(f"{source}: monitor {target.monitor} has no better direction to search")
    target.goal = goal
    return target


def _monitor(target: TuneTarget, params: dict[str, Scalar]) -> str:
    """The objective's metric at one corner, validating the whole config there."""
    probe = Path("tune-validation")  # never written: the configs are only validated
    if target.pipeline:
        return target.pipeline_plan(params, probe).stages[-1].config.monitor
    return target.stage_config(params, probe).monitor
