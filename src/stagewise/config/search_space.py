"""The search space of `stagewise tune`: a config file's `tune:` section, typed and checked.

Each entry maps a config key (as `--set` writes it: `lr`, `distill.alpha`, for a pipeline
`stages.NAME.epochs`, `defaults.lr` or a variable) to the values a trial may give it. Only the
shape is checked here; whether the key exists and the values are in its range is the config's own
check, run by runs/tune.py on the corners of the space before anything trains. Pure data: no
optuna, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError, clip, shown
from .errors_format import listing

# The valid forms, said after any problem with one: the fix is to write one of them.
FORMS = (
    "[a, b, c]                     one of these values (categorical)",
    "{categorical: [a, b, c]}      the same, spelled out",
    "{uniform: [low, high]}        a float; add step: S for a grid of them",
    "{log_uniform: [low, high]}    a float on a log scale (0 < low)",
    "{int: [low, high]}            an integer; add step: S, or log: true (1 <= low)",
)
MAX_CHOICES = 1000  # a list longer than this is more likely a mistake than a search
Kind = Literal["categorical", "float", "int"]
Scalar = str | int | float | bool | None
# The form key -> the extra keys it may carry.
_EXTRAS = {"categorical": set(), "uniform": {"step"}, "log_uniform": set(), "int": {"step", "log"}}


@dataclass(frozen=True)
class Param:
    """One searched key: a categorical choice, or a float or integer range."""

    key: str
    kind: Kind
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    log: bool = False
    choices: tuple[Scalar, ...] = ()

    @property
    def size(self) -> int | None:
        """How many values it may take, or None for a continuous range."""
        if self.kind == "categorical":
            return len(self.choices)
        if self.kind == "int" or self.step is not None:  # an integer log scale is still a grid
            return int((self.high - self.low) / (self.step or 1) + 1e-9) + 1
        return None

    @property
    def corners(self) -> tuple[Scalar, ...]:
        """The values to check against the config: every choice, or both ends of a range."""
        if self.kind == "categorical":
            return self.choices
        ends = (self.low, self.high)
        return tuple(int(v) for v in ends) if self.kind == "int" else ends

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(str(c) for c in self.choices)
        scale = " (log)" if self.log else ""
        step = f" step {self.step:g}" if self.step is not None else ""
        return f"{self.kind} in [{self.low:g}, {self.high:g}]{step}{scale}"

    def as_data(self) -> dict[str, Any]:
        """Plain data, stored with the study: workers must agree on it."""
        if self.kind == "categorical":
            return {"categorical": list(self.choices)}
        name = "int" if self.kind == "int" else "log_uniform" if self.log else "uniform"
        data: dict[str, Any] = {name: [self.corners[0], self.corners[1]]}
        if self.step is not None:
            data["step"] = self.step
        if self.kind == "int" and self.log:
            data["log"] = True
        return data


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    @property
    def size(self) -> int | None:
        """How many distinct parameter sets there are, or None if any range is continuous."""
        sizes = [p.size for p in self.params]
        return None if any(s is None for s in sizes) else math.prod(s for s in sizes if s is not None)

    def as_data(self) -> dict[str, Any]:
        return {p.key: p.as_data() for p in self.params}

    def corners(self) -> Iterator[dict[str, Scalar]]:
        """Parameter sets that between them use every choice and both ends of every range: what
        the config's validation sees before the first trial (not the full grid: that may be big)."""
        lows = {p.key: p.corners[0] for p in self.params}
        yield lows
        yield {p.key: p.corners[-1] for p in self.params}
        for p in self.params:
            for value in p.corners[1:-1]:
                yield {**lows, p.key: value}


def parse_space(raw: Any, source: str) -> SearchSpace:
    """The `tune:` section as a SearchSpace; ConfigError listing every bad entry and the forms."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: tune: expected a mapping of config keys to search ranges, got "
                          f"{shown(raw)}; for example\n  tune:\n    lr: {{log_uniform: [1.0e-4, 1.0e-2]}}\n"
                          f"    strategy: [probe, finetune]\nEach range is one of:\n" + _forms())
    problems: list[str] = []
    params = [p for p in (_param(str(k), v, problems) for k, v in raw.items()) if p is not None]
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s) in tune:\n{listing(problems)}\n"
                          f"A search range is one of:\n{_forms()}")
    return SearchSpace(tuple(params))


def _forms() -> str:
    return "\n".join(f"    {f}" for f in FORMS)


def _param(key: str, spec: Any, problems: list[str]) -> Param | None:
    where = f"tune.{clip(key, 80)}"
    if not key.strip() or key != key.strip() or ".." in key or key.startswith(".") or key.endswith("."):
        problems.append(f"{where}: not a config key (write it as --set does: lr, distill.alpha, "
                        "stages.NAME.epochs)")
        return None
    if isinstance(spec, list):
        return _categorical(key, spec, where, problems)
    if not isinstance(spec, dict) or len(set(spec) & set(_EXTRAS)) != 1:
        problems.append(f"{where}: {shown(spec)} is not a search range")
        return None
    (form,) = set(spec) & set(_EXTRAS)
    extra = set(spec) - {form} - _EXTRAS[form]
    if extra:
        problems.append(f"{where}: {form} takes no {', '.join(sorted(map(str, extra)))} "
                        f"(it takes {', '.join(sorted(_EXTRAS[form])) or 'only its values'})")
        return None
    if form == "categorical":
        return _categorical(key, spec[form], where, problems)
    return _range(key, form, spec, where, problems)


def _categorical(key: str, values: Any, where: str, problems: list[str]) -> Param | None:
    if not isinstance(values, list) or not values:
        problems.append(f"{where}: a categorical needs a non-empty list of values, got {shown(values)}")
        return None
    if len(values) > MAX_CHOICES:
        problems.append(f"{where}: {len(values)} values; at most {MAX_CHOICES}")
        return None
    bad = [v for v in values if not isinstance(v, (str, int, float, bool, type(None)))]
    if bad:
        problems.append(f"{where}: values must be single values (text, numbers, true/false), "
                        f"not {shown(bad[0])}")
        return None
    keyed = [(type(v).__name__, v) for v in values]
    if len(set(keyed)) != len(keyed):
        problems.append(f"{where}: {shown(values)} lists a value twice (a trial with it would run twice)")
        return None
    return Param(key, "categorical", choices=tuple(values))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _range(key: str, form: str, spec: dict[str, Any], where: str, problems: list[str]) -> Param | None:
    ends, step, log = spec[form], spec.get("step"), spec.get("log", False)
    if not (isinstance(ends, list) and len(ends) == 2 and all(_number(v) for v in ends)):
        problems.append(f"{where}: {form} needs [low, high] (two numbers), got {shown(ends)}")
        return None
    low, high = ends
    whole = form == "int"
    problem = (
        "low and high must be whole numbers" if whole and not all(float(v).is_integer() for v in ends)
        else f"low {low} must be below high {high} (a fixed value belongs in the config itself)"
        if not low < high
        else "log: expects true or false" if not isinstance(log, bool)
        else f"a log scale needs 0 < low, got {low}" if form == "log_uniform" and low <= 0
        else f"an integer log scale needs 1 <= low, got {low}" if whole and log and low < 1
        else "step and log: true cannot be combined" if log and step is not None
        else f"step must be a positive {'whole ' if whole else ''}number, got {shown(step)}"
        if step is not None and not (_number(step) and step > 0 and (not whole or float(step).is_integer()))
        else None
    )
    if problem:
        problems.append(f"{where}: {problem}")
        return None
    kind: Kind = "int" if whole else "float"
    return Param(key, kind, low=float(low), high=float(high),
                 step=float(step) if step is not None else None,
                 log=bool(log) or form == "log_uniform")

