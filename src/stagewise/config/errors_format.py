"""Pydantic validation errors as one readable message: each bad key path, what was wrong, and the
valid choices or range (`format_validation_error`, `validation_problems`, `listing`).

Generic over the model, so a stage's keys and a pipeline file's keys read alike.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections import Counter
from collections.abc import Collection
from typing import Annotated, Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ..errors import clip, shown

MAX_LISTED = 50  # problems listed in one error message
MAX_PER_KEY = 3  # of those, about one key (e.g. the items of one list)
# Errors whose message lists every valid choice (transform names, optimizer names): not clipped
# like other messages, which may echo a long input. Their user-given part is clipped where raised.
CHOICE_ERROR = "unknown_choice"
# An unknown key's "did you mean": difflib's ratio at least this (its default 0.6 offered
# class_weights for `classes`); and the valid keys are listed only when this few.
HINT_CUTOFF = 0.75
MAX_KEYS_LISTED = 20
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One readable message naming each bad key path, what was wrong and the valid choices."""
    return f"{source}: invalid configuration\n" + listing(validation_problems(err, model))


def validation_problems(err: ValidationError, model: type[BaseModel],
                        also_valid: Collection[str] = ()) -> list[str]:
    """One line per error, at most MAX_PER_KEY per top-level key: a long list of bad items must
    not push the other keys' problems out of the message. `also_valid`: top-level keys that the
    place the data came from accepts besides the model's (a pipeline stage's name, init...)."""
    lines: list[str] = []
    per_key: Counter[Any] = Counter()
    for item in err.errors():
        key = item["loc"][0] if item["loc"] else None
        per_key[key] += 1
        if per_key[key] <= MAX_PER_KEY:
            lines.append(_problem_line(item, model, also_valid))
    for key, n in per_key.items():
        if n > MAX_PER_KEY:
            lines.append(f"{_key_path((key,) if key is not None else ())}: {n - MAX_PER_KEY} more problem(s) "
                         "like those above")
    return lines


def _problem_line(item: ErrorDetails, model: type[BaseModel], also_valid: Collection[str] = ()) -> str:
    """The key path, what was wrong, and the valid choices or range."""
    path = _key_path(item["loc"])
    kind = item["type"]
    given = item.get("input")
    valid_range = _valid_range(model, item["loc"], path) if kind in _BOUND_ERRORS else ""
    if kind == "extra_forbidden":
        return _unknown_key(item["loc"], path, model, also_valid)
    if kind == "literal_error":
        return f"{path}: unknown value {shown(given)}; {item['msg'].lower()}"
    if valid_range:
        problem = "not a finite number" if kind == "finite_number" else "out of range"
        return f"{path}: {shown(given)} is {problem}; valid: {valid_range}"
    msg = item["msg"].removeprefix("Value error, ")
    if not item["loc"] and re.split(r"[:. \[]", msg, maxsplit=1)[0] in model.model_fields:
        return clip(msg, 3000)  # a whole-config check that names its key itself
    if kind == CHOICE_ERROR:
        return f"{path}: {clip(item['msg'], 3000)}"
    shown_value = f" (got {shown(given)})" if not isinstance(given, dict) and given is not None else ""
    return f"{path}: {clip(item['msg'].removeprefix('Value error, '), 300)}{shown_value}"


def _unknown_key(loc: tuple[Any, ...], path: str, model: type[BaseModel], also_valid: Collection[str]) -> str:
    """The closest key or alias (strict enough that `classes` is not taken for `class_weights`),
    and the valid keys where they are few enough to read; else where to find them."""
    top = len(loc) == 1
    valid = sorted(_fields_at(model, loc[:-1]) | (set(also_valid) if top else set()))
    aliases: dict[str, str] = getattr(model, "aliases", {}) if top else {}
    hint = difflib.get_close_matches(str(loc[-1])[:100], [*valid, *aliases], n=1, cutoff=HINT_CUTOFF)
    near = ""
    if hint:
        alias = f" ({aliases[hint[0]]})" if hint[0] in aliases else ""
        near = f" (did you mean '{hint[0]}'{alias}?)"
    # A model may say why a top-level key is likely unknown (a pipeline file: a variable).
    why = getattr(model, "unknown_key_hint", "") if top else ""
    where = getattr(model, "key_list_hint", "") if top else ""
    keys = f"valid keys: {', '.join(valid)}" if len(valid) <= MAX_KEYS_LISTED or not where else where
    return f"{path}: unknown key{near}; {keys}" + (f" ({why})" if why else "")


def listing(problems: list[str]) -> str:
    """Indented lines, one per problem, at most MAX_LISTED of them: the first few say what to fix."""
    lines = [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def _valid_range(model: type[BaseModel], loc: tuple[Any, ...], path: str) -> str:
    """'16 <= image_size <= 2048' (and why) for a field with numeric bounds, else ''."""
    field = model.model_fields.get(loc[0]) if loc and isinstance(loc[0], str) else None
    if field is None:
        return ""
    bounds = field.metadata or _inner_bounds(field.annotation)
    low = next((f"{b.gt} < " for b in bounds if isinstance(b, annotated_types.Gt)), "") or next(
        (f"{b.ge} <= " for b in bounds if isinstance(b, annotated_types.Ge)), "")
    high = next((f" < {b.lt}" for b in bounds if isinstance(b, annotated_types.Lt)), "") or next(
        (f" <= {b.le}" for b in bounds if isinstance(b, annotated_types.Le)), "")
    if not (low or high):
        return ""
    # Said after the valid range, where the bound is not self-explanatory (the model states why).
    reasons: dict[str, str] = getattr(model, "bound_reasons", {})
    why = f" ({reasons[loc[0]]})" if loc[0] in reasons else ""
    return f"{low}{path}{high}{why}"


def _inner_bounds(annotation: Any) -> list[Any]:
    """The bounds of the first constrained type inside e.g. `list[EpochPoint] | None`."""
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Annotated:
            return [b for m in arg.__metadata__ for b in getattr(m, "metadata", [m])]
        if found := _inner_bounds(arg):
            return found
    return []


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("literal['balanced']", "list[constrained-float]"):
            continue  # pydantic's name of a union member, not a key
        else:
            part = clip(str(part), 80)
            out += f".{part}" if out else part
    return out or "(top level)"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> set[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return set(current.model_fields)
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            # list[Stage] and similar: look one level inside
            for a in args:
                inner = getattr(a, "__args__", ())
                current = next((i for i in inner if isinstance(i, type) and issubclass(i, BaseModel)), None)
                if current:
                    break
    return set(current.model_fields) if current else set()
