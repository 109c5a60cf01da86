"""Pipeline files: `defaults`, `stages`, variables; validated whole before anything trains.

Every problem (a bad key in any stage, an unknown stage reference, a missing data folder, an
undefined variable) is collected and reported at once, so a user fixes the file in one pass.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from ..config import TrainConfig, apply_overrides, format_validation_error, load_yaml
from ..errors import ConfigError

InitSource = str  # "previous" | "pretrained" | "scratch" | the name of an earlier stage
Baseline = Literal["scratch", "pretrained", "none"]
STAGE_ONLY_KEYS = {"name", "init", "baseline"}
TOP_KEYS = {"vars", "defaults", "stages", "name", "description"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class StagePlan:
    """One stage, resolved: its training config, where its weights come from, its baseline."""

    name: str
    config: TrainConfig
    init: InitSource
    baseline: Baseline

    def parent(self, order: list[str]) -> str | None:
        """The stage whose weights this one starts from, if any."""
        if self.init == "previous":
            i = order.index(self.name)
            return order[i - 1] if i > 0 else None
        return self.init if self.init in order else None


@dataclass
class PipelinePlan:
    """The validated pipeline: its stages in order, and the resolved file for the manifest."""

    name: str
    stages: list[StagePlan]
    source: dict[str, Any]  # the resolved file contents, stored in the manifest

    @property
    def order(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> StagePlan:
        return next(s for s in self.stages if s.name == name)


def substitute(value: Any, variables: dict[str, Any], problems: list[str], where: str = "") -> Any:
    """Replace ${name} and ${name:-default} from `variables`, then the environment."""
    if isinstance(value, dict):
        return {k: substitute(v, variables, problems, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, problems, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in variables and variables[name] is not None:
            return str(variables[name])
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.append(f"{where}: variable ${{{name}}} is not defined; set it with --set {name}=... "
                        "or in the file's vars: section or the environment")
        return m.group(0)

    whole = _VAR.fullmatch(value)
    if whole and whole.group(1) in variables and not isinstance(variables[whole.group(1)], str):
        return variables[whole.group(1)]  # keep a number a number
    return _VAR.sub(repl, value)


def load_pipeline(
    source: str | Path | dict[str, Any], overrides: Sequence[str] = (), out: Path | None = None,
    check_data: bool = True,
) -> PipelinePlan:
    """Read, substitute, override and validate a pipeline; raise ConfigError listing every problem."""
    label = str(source) if not isinstance(source, dict) else "pipeline"
    raw = load_yaml(Path(source)) if not isinstance(source, dict) else dict(source)
    raw, problems = _apply_pipeline_overrides(raw, list(overrides))
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        problems.append(f"unknown top-level key(s) {', '.join(unknown)}; valid: {', '.join(sorted(TOP_KEYS))}"
                        " (a variable goes under vars:)")
    variables = dict(raw.get("vars") or {})
    defaults = substitute(raw.get("defaults") or {}, variables, problems, "defaults")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        problems.append("stages: expected a non-empty list of stages")
        stages_raw = []
    if not isinstance(defaults, dict):
        problems.append("defaults: expected a mapping of stage keys")
        defaults = {}
    plans = _stage_plans(stages_raw, defaults, variables, problems, out, check_data)
    _check_references(plans, problems)
    if problems:
        raise ConfigError(f"{label}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    return PipelinePlan(name=str(raw.get("name") or Path(label).stem), stages=plans,
                        source=substitute(raw, variables, [], ""))


def _apply_pipeline_overrides(raw: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """`stages.<name>.<key>=v` targets one stage, `defaults.<key>=v` all, `<var>=v` a variable."""
    problems: list[str] = []
    raw = dict(raw)
    stage_sets: list[str] = []
    plain: list[str] = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if key.startswith("stages."):
            stage_sets.append(item)
        elif key.startswith("defaults."):
            plain.append(item)
        elif "=" in item:
            plain.append(f"vars.{item}")
        else:
            problems.append(f"--set {item!r}: expected key=value")
    declared, used = set(raw.get("vars") or {}), _referenced(raw)
    for item in plain:
        name = item.split("=", 1)[0].removeprefix("vars.")
        if not item.startswith("defaults.") and name not in declared | used:
            # Most likely a stage key meant for every stage, or a typo: never ignore it silently.
            problems.append(f"--set {name}=...: the pipeline uses no variable ${{{name}}}; to change a "
                            f"stage key use defaults.{name}=... (all stages) or stages.NAME.{name}=...")
    raw = apply_overrides(raw, plain)
    stages = [dict(s) if isinstance(s, dict) else s for s in raw.get("stages") or []]
    # The same names _stage_plans gives; a name may contain dots, so match whole names.
    names = [str(s.get("name") or f"stage{i + 1}") if isinstance(s, dict) else None
             for i, s in enumerate(stages)]
    for item in stage_sets:
        key = item.split("=", 1)[0]
        path = key.removeprefix("stages.")
        name = max((n for n in names if n and (path == n or path.startswith(f"{n}."))), key=len, default=None)
        if name is None:
            problems.append(f"--set {key}: no stage named '{path.split('.')[0]}'; "
                            f"stages: {', '.join(n for n in names if n)}")
            continue
        if path == name or "=" not in item:
            problems.append(f"--set {key}: expected stages.{name}.KEY=VALUE")
            continue
        rest = item[len(f"stages.{name}."):]
        i = names.index(name)
        stages[i] = apply_overrides(stages[i], [rest])
    if stages:
        raw["stages"] = stages
    return raw, problems


def _referenced(value: Any) -> set[str]:
    """The variable names `${name}` used anywhere in `value`."""
    if isinstance(value, dict):
        return set().union(*(_referenced(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_referenced(v) for v in value))
    return {m.group(1) for m in _VAR.finditer(value)} if isinstance(value, str) else set()


def _stage_plans(
    stages_raw: list[Any], defaults: dict[str, Any], variables: dict[str, Any], problems: list[str],
    out: Path | None, check_data: bool,
) -> list[StagePlan]:
    plans: list[StagePlan] = []
    seen: set[str] = set()
    for i, entry in enumerate(stages_raw):
        where = f"stages[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with at least name: and data:")
            continue
        entry = substitute(entry, variables, problems, where)
        name = str(entry.get("name") or f"stage{i + 1}")
        where = f"stages[{i}] ({name})"
        if name in seen:
            problems.append(f"{where}: duplicate stage name '{name}'")
        seen.add(name)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            problems.append(f"{where}: stage names may use letters, digits, '_', '-' and '.' only")
        merged = {**defaults, **{k: v for k, v in entry.items() if k not in STAGE_ONLY_KEYS}}
        merged["out"] = str((out or Path("runs/pipeline")) / "stages" / name)
        init = str(entry.get("init", "previous"))
        baseline = str(entry.get("baseline", "none"))
        if baseline not in ("scratch", "pretrained", "none"):
            problems.append(f"{where}.baseline: unknown value {baseline!r}; choose one of scratch, pretrained, none")
            baseline = "none"
        if init == "scratch":
            merged.pop("weights", None)
        data = str(merged.get("data") or "")
        if check_data and data and "${" not in data and not Path(data).exists():
            problems.append(f"{where}.data: folder not found: {merged['data']}")
        elif "data" not in merged:
            problems.append(f"{where}.data: missing; every stage needs data: (here or in defaults:)")
        try:
            cfg = TrainConfig.model_validate(merged)
        except ValidationError as err:
            text = format_validation_error(err, where, TrainConfig)
            problems.extend(f"{where}.{line[4:]}" for line in text.splitlines()[1:]
                            if not line.startswith("  - data: Field required"))
            cfg = TrainConfig.model_construct(**{**merged, "weights": merged.get("weights")})
        plans.append(StagePlan(name=name, config=cfg, init=init, baseline=baseline))  # type: ignore[arg-type]
    return plans


def _check_references(plans: list[StagePlan], problems: list[str]) -> None:
    order = [p.name for p in plans]
    for i, plan in enumerate(plans):
        if plan.baseline == "pretrained" and not plan.config.weights:
            problems.append(f"stage '{plan.name}': baseline 'pretrained' needs weights:")
        if plan.init in ("previous", "pretrained", "scratch"):
            if plan.init == "pretrained" and not plan.config.weights:
                problems.append(f"stage '{plan.name}': init 'pretrained' needs weights: (a file, 'hub' or hf-hub:ID)")
            continue
        if plan.init not in order:
            problems.append(
                f"stage '{plan.name}': init '{plan.init}' is not a stage; use previous, pretrained, scratch "
                f"or one of: {', '.join(order)}"
            )
        elif order.index(plan.init) >= i:
            kind = "itself (a cycle)" if plan.init == plan.name else f"a later stage '{plan.init}' (a cycle)"
            problems.append(f"stage '{plan.name}': init refers to {kind}; a stage can start only from an earlier one")
