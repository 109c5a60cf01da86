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
from typing import Any

from pydantic import ValidationError

from ..config.errors_format import listing, validation_problems
from ..config.overrides import apply_overrides
from ..config.pipeline import Baseline, InitSource, PipelineFile, PipelineStage
from ..config.schema import TrainConfig
from ..config.yaml_loader import load_yaml
from ..defaults import PIPELINE_OUT
from ..errors import ConfigError, clip, shown
from ..runfolder import stage_dir

PIPELINE_KEYS = tuple(PipelineStage.model_fields)  # valid in a stage entry besides TrainConfig's

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# A stage name becomes a folder name (stages/<name>, baselines/<name>): no '/', no leading '.'
# ('.', '..', hidden folders), no trailing '.' (Windows drops it), at most 64 characters.
STAGE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_-])?")
STAGE_NAME_RULE = ("1-64 letters, digits, '_', '-' or '.', starting with a letter or digit and not "
                   "ending in '.' (the name is a folder name)")
# Text that ${var} substitution may add to a whole file: without a cap, a 1 MiB file could
# repeat one long variable a million-fold.
MAX_SUBSTITUTED = 2**20


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


class Substitution:
    """Replaces ${name} and ${name:-default} from `variables`, then the environment, within one
    budget of added text for the whole file."""

    def __init__(self, variables: dict[str, Any], problems: list[str]) -> None:
        self.variables = variables
        self.problems = problems
        self.budget = MAX_SUBSTITUTED

    def __call__(self, value: Any, where: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self(v, f"{where}.{clip(str(k), 80)}" if where else clip(str(k), 80))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        whole = _VAR.fullmatch(value)
        if whole and whole.group(1) in self.variables and not isinstance(self.variables[whole.group(1)], str):
            return self.variables[whole.group(1)]  # keep a number a number
        matches = list(_VAR.finditer(value))
        pieces = [self._lookup(m, where) for m in matches]
        growth = sum(len(p) - len(m.group(0)) for p, m in zip(pieces, matches, strict=True))
        if growth > self.budget:
            self.problems.append(f"{where}: substituting variables here would take the file past "
                                 f"{MAX_SUBSTITUTED // 2**20} MiB of added text; shorten the variable or use it less")
            return value
        self.budget -= growth
        rest = iter(pieces)
        return _VAR.sub(lambda _: next(rest), value)

    def _lookup(self, m: re.Match, where: str) -> str:
        name, default = m.group(1), m.group(2)
        if self.variables.get(name) is not None:
            return str(self.variables[name])
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        self.problems.append(f"{where}: variable ${{{clip(name, 80)}}} is not defined; set it with --set "
                             f"{clip(name, 80)}=... or in the file's vars: section or the environment")
        return m.group(0)


def load_pipeline(
    source: str | Path | dict[str, Any], overrides: Sequence[str] = (), out: Path | None = None,
    check_data: bool = True,
) -> PipelinePlan:
    """Read, substitute, override and validate a pipeline; raise ConfigError listing every problem."""
    label = str(source) if not isinstance(source, dict) else "pipeline"
    raw = load_yaml(Path(source)) if not isinstance(source, dict) else dict(source)
    raw, problems = _apply_pipeline_overrides(raw, list(overrides))
    file = _validated_file(raw, problems)
    variables = _variables(file.vars, problems)
    substitute = Substitution(variables, problems)
    defaults = substitute(file.defaults or {}, "defaults")
    plans = _stage_plans(file.stages, defaults, substitute, problems, out, check_data)
    _check_references(plans, problems)
    if problems:
        raise ConfigError(f"{label}: {len(problems)} problem(s):\n" + listing(problems))
    return PipelinePlan(name=str(file.name or Path(label).stem), stages=plans,
                        source=Substitution(variables, [])(raw))


def _validated_file(raw: dict[str, Any], problems: list[str]) -> PipelineFile:
    """The file's top level as a PipelineFile; with problems, the parts that are valid, so the
    stages are still checked and every problem is listed at once."""
    try:
        return PipelineFile.model_validate(raw)
    except ValidationError as err:
        problems.extend(validation_problems(err, PipelineFile))
        # A bad stage entry drops only itself (_stage_plans skips it), not the whole list.
        bad = {e["loc"][0] for e in err.errors() if e["loc"] and (len(e["loc"]) == 1 or e["loc"][0] != "stages")}
        kept = {k: v for k, v in raw.items() if k in PipelineFile.model_fields and k not in bad}
        return PipelineFile.model_construct(**{"stages": [], **kept})


def _stage_keys(entry: dict[str, Any], where: str, problems: list[str]) -> PipelineStage:
    """The entry's pipeline keys (name, init, baseline) checked, the rest kept for TrainConfig."""
    try:
        return PipelineStage.model_validate(entry)
    except ValidationError as err:
        problems.extend(f"{where}.{p}" for p in validation_problems(err, PipelineStage))
        bad = {e["loc"][0] for e in err.errors() if e["loc"]}
        return PipelineStage.model_construct(**{k: v for k, v in entry.items() if k not in bad})


def _variables(declared: dict[str, Any] | None, problems: list[str]) -> dict[str, Any]:
    """The file's vars:, each one value: a list or mapping could be repeated by every ${name}."""
    if declared is None:
        return {}
    variables = dict(declared)
    for name, value in declared.items():
        if isinstance(value, (dict, list)):
            problems.append(f"vars.{clip(str(name), 80)}: a variable holds one value (text, a number, "
                            f"true/false), not a {type(value).__name__}; got {shown(value)}")
            variables[name] = ""  # so that its uses are not also reported as undefined
    return variables


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
            problems.append(f"--set {shown(item)}: expected key=value")
    declared, used = set(raw["vars"] if isinstance(raw.get("vars"), dict) else ()), _referenced(raw)
    for item in plain:
        name = item.split("=", 1)[0].removeprefix("vars.")
        if not item.startswith("defaults.") and name not in declared | used:
            # Most likely a stage key meant for every stage, or a typo: never ignore it silently.
            name = clip(name, 80)
            problems.append(f"--set {name}=...: the pipeline uses no variable ${{{name}}}; to change a "
                            f"stage key use defaults.{name}=... (all stages) or stages.NAME.{name}=...")
    raw = apply_overrides(raw, plain)
    given = raw.get("stages")
    stages = [dict(s) if isinstance(s, dict) else s for s in given] if isinstance(given, list) else []
    # The same names _stage_plans gives; a name may contain dots, so match whole names.
    names = [str(s.get("name") or f"stage{i + 1}") if isinstance(s, dict) else None
             for i, s in enumerate(stages)]
    for item in stage_sets:
        key = item.split("=", 1)[0]
        path = key.removeprefix("stages.")
        stage = max((n for n in names if n and (path == n or path.startswith(f"{n}."))), key=len, default=None)
        if stage is None:
            problems.append(f"--set {clip(key, 100)}: no stage named '{clip(path.split('.')[0], 80)}'; "
                            f"stages: {clip(', '.join(n for n in names if n))}")
            continue
        if path == stage or "=" not in item:
            problems.append(f"--set {clip(key, 100)}: expected stages.{clip(stage, 80)}.KEY=VALUE")
            continue
        rest = item.removeprefix(f"stages.{stage}.")
        i = names.index(stage)
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
    stages_raw: list[Any], defaults: dict[str, Any], substitute: Substitution, problems: list[str],
    out: Path | None, check_data: bool,
) -> list[StagePlan]:
    plans: list[StagePlan] = []
    seen: set[str] = set()
    names = [str(e.get("name") or f"stage{i + 1}") if isinstance(e, dict) else "" for i, e in enumerate(stages_raw)]
    for i, entry in enumerate(stages_raw):
        if not isinstance(entry, dict):
            continue  # PipelineFile listed it
        entry = substitute(entry, f"stages[{i}]")
        name = str(entry.get("name") or f"stage{i + 1}")
        where = f"stages[{i}] ({clip(name, 80)})"
        _check_name(name, seen, where, problems)
        keys = _stage_keys(entry, where, problems)
        init, baseline = keys.init, keys.baseline
        merged = {**defaults, **keys.train_keys()}
        merged["out"] = str(stage_dir(out or Path(PIPELINE_OUT), name))
        if init == "scratch":
            merged.pop("weights", None)
        # Where the weights come from picks the stage's default recipe (kinds.recipe): an earlier
        # stage's weights are a handoff, init: scratch is scratch whatever the defaults say.
        merged.setdefault("weights_source", _source(init, i, names, merged))
        if init == "scratch" and "strategy" not in keys.train_keys():
            merged["strategy"] = "scratch"
        if merged.get("teacher"):
            embed = {p.name for p in plans if getattr(p.config, "task", None) == "embed"}
            merged["teacher"] = _teacher_path(str(merged["teacher"]), names[:i], names[i:], out,
                                              where, problems, check_data, embed)
        data = str(merged.get("data") or "")
        # os.path.exists, not Path.exists: a name too long for the OS is "not found", not a crash.
        if check_data and data and "${" not in data and not os.path.exists(data):
            problems.append(f"{where}.data: folder not found: {shown(data)}")
        elif "data" not in merged:
            problems.append(f"{where}.data: missing; every stage needs data: (here or in defaults:)")
        try:
            cfg = TrainConfig.model_validate(merged)
        except ValidationError as err:
            problems.extend(f"{where}.{p}" for p in validation_problems(err, TrainConfig, PIPELINE_KEYS)
                            if not p.startswith("data: Field required"))
            cfg = TrainConfig.model_construct(**{**merged, "weights": merged.get("weights")})
        plans.append(StagePlan(name=name, config=cfg, init=init, baseline=baseline))
    return plans


def _source(init: str, i: int, names: list[str], merged: dict[str, Any]) -> str:
    """none, transfer or handoff: where stage `i`'s starting weights come from."""
    if init == "scratch":
        return "none"
    if (init == "previous" and i > 0) or init in names[:i]:
        return "handoff"
    return "transfer" if merged.get("weights") else "none"


def _teacher_path(teacher: str, earlier: list[str], rest: list[str], out: Path | None, where: str,
                  problems: list[str], check_data: bool, embed_stages: set[str]) -> str:
    """`teacher:` naming an earlier stage (as `init:` does) is that stage's folder; otherwise a
    path. A stage name wins over a folder of the same name in the working directory. An embed
    stage or run cannot teach (no class probabilities): refused here, before any stage runs."""
    from .teacher import NOT_A_TEACHER, is_embed_run

    if teacher in earlier:
        if teacher in embed_stages:
            problems.append(f"{where}.teacher: stage '{clip(teacher, 80)}' {NOT_A_TEACHER}")
        return str(stage_dir(out or Path(PIPELINE_OUT), teacher))
    if teacher in rest:
        which = "itself" if teacher == rest[0] else f"a later stage '{clip(teacher, 80)}'"
        problems.append(f"{where}.teacher: refers to {which}; a stage can learn only from an earlier one")
    elif check_data and "${" not in teacher and not os.path.exists(teacher):
        problems.append(f"{where}.teacher: {shown(teacher)} is neither an earlier stage "
                        f"({clip(', '.join(earlier)) or 'there is none'}) nor an existing run folder or file")
    elif check_data and "${" not in teacher and is_embed_run(Path(teacher)):
        problems.append(f"{where}.teacher: {shown(teacher)} {NOT_A_TEACHER}")
    return teacher


def _check_name(name: str, seen: set[str], where: str, problems: list[str]) -> None:
    """A stage name is a folder name: safe as one path component, and unique even where the file
    system ignores case (macOS, Windows), where 'S1' and 's1' would share a folder."""
    if not STAGE_NAME.fullmatch(name):
        problems.append(f"{where}: stage name {shown(name)} is not allowed; use {STAGE_NAME_RULE}")
    twin = next((s for s in seen if s.casefold() == name.casefold()), None)
    if name in seen:
        problems.append(f"{where}: duplicate stage name '{clip(name, 80)}'")
    elif twin is not None:
        problems.append(f"{where}: stage names '{clip(twin, 80)}' and '{clip(name, 80)}' differ only in "
                        "case; their folders would collide where the file system ignores case")
    seen.add(name)


def _check_references(plans: list[StagePlan], problems: list[str]) -> None:
    order = [p.name for p in plans]
    for i, plan in enumerate(plans):
        stage, init = f"stage '{clip(plan.name, 80)}'", clip(plan.init, 80)
        if plan.baseline == "pretrained" and not plan.config.weights:
            problems.append(f"{stage}: baseline 'pretrained' needs weights:")
        if plan.init in ("previous", "pretrained", "scratch"):
            if plan.init == "pretrained" and not plan.config.weights:
                problems.append(f"{stage}: init 'pretrained' needs weights: (a file, 'hub' or hf-hub:ID)")
            continue
        if plan.init not in order:
            problems.append(f"{stage}: init '{init}' is not a stage; use previous, pretrained, scratch "
                            f"or one of: {clip(', '.join(order))}")
        elif order.index(plan.init) >= i:
            kind = "itself (a cycle)" if plan.init == plan.name else f"a later stage '{init}' (a cycle)"
            problems.append(f"{stage}: init refers to {kind}; a stage can start only from an earlier one")
