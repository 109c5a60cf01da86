"""Every stage key as a row (name, type, default, one-line help), read from `TrainConfig`: what
`stagewise keys` prints and docs generate from, so the listing cannot go stale."""

from __future__ import annotations

import re
import typing
from typing import Any, Literal

from pydantic.fields import FieldInfo

from .schema import TrainConfig

# A default that the schema fills from other keys (kinds.recipe, the task's monitor), not the field's.
_BY_CHOICE = {"strategy", "weights_source", "lr", "weight_decay", "layer_decay", "freeze_epochs",
              "augmentation", "monitor"}


def key_rows(pattern: str | None = None) -> list[dict[str, Any]]:
    """One row per stage key whose name contains `pattern` (all without one), in schema order."""
    rows = []
    for name, field in TrainConfig.model_fields.items():
        if pattern and pattern.lower() not in name:
            continue
        rows.append({"key": name, "type": type_name(field.annotation), "default": _default(name, field),
                     "help": field.description or "",
                     "by_choice": name in _BY_CHOICE})
    return rows


def type_name(annotation: Any) -> str:
    """'float | None', 'one of auto, fp32, bf16, fp16', 'list[int]': short enough for a table."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return {"Path": "path"}.get(annotation.__name__, annotation.__name__)
    return re.sub(r"\b(typing|pathlib)\.", "", str(annotation))


def _default(name: str, field: FieldInfo) -> Any:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    return str(value) if hasattr(value, "__fspath__") else value
