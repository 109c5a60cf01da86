"""The hardened YAML reader of every config file: safe loading, no anchors or aliases, bounded
size and depth, duplicate keys refused, errors that name the file, line and column.

Imports nothing of the schema: run folders read config.yaml through it without pydantic's model,
models/ or data/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, clip
from .errors_format import listing

MAX_CONFIG_BYTES = 2**20
MAX_DEPTH = 20  # nesting levels in a config file; a pipeline needs 4


class _ConfigLoader(yaml.SafeLoader):
    """Safe loading that refuses anchors/aliases and deep nesting while composing, before any
    value is built, so a hostile file costs no more than reading it."""

    _depth = 0  # nodes being composed, one inside the other

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise yaml.composer.ComposerError(
                None, None, f"found {sign}{clip(anchor, 40)}: anchors and aliases are not allowed in "
                "config files (a few bytes can expand to gigabytes); write the value out, or share it "
                "with a pipeline's vars: or defaults:", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels; a config needs a few", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str | bytes, source: str) -> Any:
    """Parse one YAML document safely; raise ConfigError naming `source` on any problem."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; a configuration is a few "
                          "KB, so this is likely not a config file")
    try:
        return _construct(_ConfigLoader(text), source)
    except yaml.reader.ReaderError as exc:  # not UTF-8, or a control character: likely not text
        raise ConfigError(f"{source}: not valid YAML at position {exc.position}: "
                          f"#x{exc.character:02x}: {exc.reason}") from None
    except (yaml.YAMLError, ValueError) as exc:
        # PyYAML's own text points at "<unicode string>"; say the source, line and column instead.
        # ValueError: an explicit tag on a bad scalar, e.g. `!!int ten`.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML{where}: {clip(problem, 400)}") from None


def _construct(loader: _ConfigLoader, source: str) -> Any:
    try:
        node = loader.get_single_node()
        duplicates = _duplicate_keys(loader, node) if node is not None else []
        if duplicates:
            raise ConfigError(f"{source}: duplicate keys (each key may appear once in a mapping; "
                              f"keep one):\n" + listing(duplicates))
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node, path: str = "") -> list[str]:
    """'key.path: given at line 3 and again at line 7' for each key given twice in one mapping
    (PyYAML would keep the last silently)."""
    found: list[str] = []
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(loader, item, f"{path}[{i}]")
    elif isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            # Compare constructed keys, so `1` and `0x1` count as the same key, as in the dict.
            key = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else key_node
            label = f"{path}.{clip(str(key), 80)}" if path else clip(str(key), 80)
            line = key_node.start_mark.line + 1
            if key in first_line:
                found.append(f"{label}: given at line {first_line[key]} and again at line {line}")
            first_line.setdefault(key, line)
            found += _duplicate_keys(loader, value_node, label)
    return found


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        with open(path, "rb") as f:
            # Read one byte past the cap, never the whole of a huge file (or of /dev/zero).
            text = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data
