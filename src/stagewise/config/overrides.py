"""`--set key=value` overrides: dotted key paths into plain config data, values parsed as YAML."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, clip, shown
from .yaml_loader import parse_yaml


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` / `a.b.c=value` strings; values are parsed as YAML scalars.

    The input is not changed: each mapping on an overridden path is copied.

    Example:
        >>> apply_overrides({"distill": {"alpha": 0.5}}, ["distill.temperature=2", "lr=0.01"])
        {'distill': {'alpha': 0.5, 'temperature': 2}, 'lr': 0.01}
    """
    result = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {shown(item)}: expected key=value, e.g. --set lr=0.01")
        key, raw = item.split("=", 1)
        value = parse_yaml(raw, f"--set {clip(key, 80)}") if raw.strip() else None
        target = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = target.get(part)
            if node is None:  # a missing or empty section: `--set distill.alpha=0.7` creates it
                node = {}
            if not isinstance(node, dict):
                raise ConfigError(f"--set {clip(key, 80)}: '{clip(part, 80)}' is not a mapping")
            node = dict(node)  # a copy: the caller's data stays as it was
            target[part] = node
            target = node
        target[parts[-1]] = value
    return result
