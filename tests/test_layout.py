"""The package layout stays as docs/architecture.md states it: imports point one way
(cli -> runs -> training -> {data, models, config, runfolder} -> {io, errors}; reporting reads run
folders and never trains), no module imports itself back through others, and functions stay short.

Every import is walked, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "stagewise"
CORE = {"errors", "_version", "defaults", "_lazy"}
# The metric registry and the registry of tasks and strategies: pure data that every layer reads.
BASE = CORE | {"metrics", "kinds"}

# What each part may import besides itself. A part is a top-level module or sub-package.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_lazy": set(),
    "metrics": CORE,
    "kinds": CORE | {"metrics"},
    "_version": set(),
    "defaults": set(),
    "io": BASE,
    "lock": BASE,
    "ranking": BASE,  # exact search and retrieval metrics: for training's epochs and inference
    "scoring": BASE,  # top-1/top-5/confusion (torchmetrics): for training, inference and reports
    "data": BASE | {"io"},
    "models": BASE | {"io", "data"},
    # data: the `augment:` list is checked against torchvision's transforms at config load.
    "config": BASE | {"io", "models", "data"},
    # config's guarded YAML loader reads config.yaml; model.json is checked against the registries
    # config checks a TrainConfig against (model names, activations, interpolations).
    "runfolder": BASE | {"io", "config", "models", "data"},
    "training": BASE | {"ranking", "scoring", "io", "data", "models", "config", "runfolder"},
    "inference": BASE | {"ranking", "scoring", "io", "data", "models", "config", "runfolder"},
    "reporting": BASE | {"ranking", "scoring", "io", "data", "config", "runfolder", "inference"},
    "runs": BASE | {"ranking", "scoring", "io", "lock", "data", "models", "config", "runfolder", "training", "reporting",
                    "inference"},
    "cli": BASE | {"ranking", "scoring", "io", "lock", "data", "models", "config", "runfolder", "training", "reporting", "inference",
                   "runs"},
    "__init__": BASE | {"config", "inference", "runs", "training", "reporting"},
    "__main__": {"cli"},
}
MAX_LINES = 60
ARCHITECTURE = SRC.parents[1] / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the stagewise modules `path` imports (anywhere in the file)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stagewise")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("stagewise"):
                continue
            # `from . import x` may name a submodule: count it as one when it is a file.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def test_every_part_is_known() -> None:
    parts = {_part(m) for m in _graph()}
    assert parts <= set(ALLOWED), f"add {sorted(parts - set(ALLOWED))} to the layout rule"


def test_imports_point_down_the_stated_direction() -> None:
    wrong = []
    for module, targets in _graph().items():
        part = _part(module)
        for target in targets:
            other = _part(target)
            if other != part and other not in ALLOWED[part]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layout rule:\n" + "\n".join(sorted(wrong))


def test_architecture_doc_states_this_rule() -> None:
    """docs/architecture.md's table of parts says what ALLOWED says, part by part."""
    stated: dict[str, set[str]] = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = line.split("|")
        if len(cells) == 4 and cells[1].strip().startswith("`") and "may import" not in line:
            parts = re.findall(r"`([\w_]+)`", cells[1])
            targets = set(re.findall(r"`([\w_]+)`", cells[2]))
            if parts and all(p in ALLOWED for p in parts) and (targets or "nothing" in cells[2]):
                for p in parts:
                    stated[p] = targets | (set() if p in BASE or "only" in cells[2] else BASE)
    assert stated == ALLOWED


def test_no_import_cycles() -> None:
    graph = _graph()
    # A package's __init__ re-exporting its modules is not a cycle of logic: drop the edges from
    # a package to its own children.
    edges = {m: {t for t in ts if t in graph and t != m and not t.startswith(m + ".")}
             for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_functions_are_short(path: Path) -> None:
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert not long, f"{path.name}: functions over {MAX_LINES} lines: {', '.join(long)}"


def test_no_submodule_shadows_a_lazily_exported_name() -> None:
    """A package attribute set by importing a submodule wins over the lazy export of the same
    name: `import stagewise.inference.evaluate` once made `stagewise.evaluate` a module (the CLI's
    evaluate imported that module first). No exported
    name may also be a submodule of the package that exports it."""
    import importlib
    import pkgutil

    for package in ("stagewise", "stagewise.inference", "stagewise.config", "stagewise.data",
                    "stagewise.runs", "stagewise.training", "stagewise.models", "stagewise.reporting"):
        mod = importlib.import_module(package)
        submodules = {m.name for m in pkgutil.iter_modules(mod.__path__)}
        assert not submodules & set(mod.__all__), (package, submodules & set(mod.__all__))
