"""Built-in pipelines shipped with the package (src/stagewise/presets/*.yaml)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from ..config.yaml_loader import load_yaml
from ..errors import ConfigError


def _folder() -> Path:
    return Path(str(resources.files("stagewise") / "presets"))


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description."""
    out = {}
    for f in sorted(_folder().glob("*.yaml")):
        data = load_yaml(f) or {}
        out[f.stem] = " ".join(str(data.get("description", "")).split())
    return out


def is_preset(name: str) -> bool:
    return "/" not in name and (_folder() / f"{name}.yaml").is_file()


def preset_path(name: str) -> Path:
    path = _folder() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(list_presets())}")
    return path


def load_preset(name: str) -> dict[str, Any]:
    return load_yaml(preset_path(name))
