"""Starting the CLI stays cheap: `stagewise --help`, every command's --help and `import stagewise`
import none of torch, torchvision, timm or matplotlib (seconds each on a cold start).

Each check runs in a fresh interpreter with PYTHONPATH set to this checkout's src/, so what
another test already imported does not hide an import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "torchvision", "timm", "matplotlib")
# Their flags are described by constants of inference/ modules that import torch (output formats,
# TTA modes, splits, ONNX opset): their --help imports it until those constants live in a torch-free
# module there. Parsed last, so the other commands are checked before torch is loaded.
# Walks the parser for every command (nested ones too, e.g. `data fetch`) and asks each for its
# --help in turn, noting which heavy modules are loaded after each; one interpreter for all.
_SCRIPT = """
import argparse, contextlib, io, json, sys
HEAVY, SKIP, ONLY = {heavy!r}, {skip!r}, {only!r}
seen = {{}}

def note(label):
    new = sorted(m for m in HEAVY if m in sys.modules and not any(m in v for v in seen.values()))
    seen[label] = new

import stagewise
note("import stagewise")
from stagewise.cli import build_parser

def commands(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,)
                yield from commands(sub, path + (name,))

for path in commands(build_parser()):
    if (ONLY and path[0] not in ONLY) or path[0] in SKIP:
        continue
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        build_parser().parse_args([*path, "--help"])
    note(" ".join(path) + " --help")
print(json.dumps(seen))
"""


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


def _heavy_after_each(skip: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> dict[str, list[str]]:
    done = _python("-c", _SCRIPT.format(heavy=HEAVY, skip=skip, only=only))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_top_level_help_imports_no_heavy_module() -> None:
    done = _python("-X", "importtime", "-m", "stagewise", "--help")
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0]
                for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "stagewise" in imported
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_import_and_every_command_help_import_no_heavy_module() -> None:
    seen = _heavy_after_each()
    assert "import stagewise" in seen and "train --help" in seen and "data fetch --help" in seen
    loaded = {label: mods for label, mods in seen.items() if mods}
    assert not loaded, f"heavy modules imported by (first importer shown): {loaded}"

