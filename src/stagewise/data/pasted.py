"""An `augment:` list pasted from torchvision code, read as data (never executed).

Tutorials write `transforms.Compose([transforms.RandomResizedCrop(224), transforms.ToTensor(),
transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])`. Each call may be
an item of `augment:` as it is (`- RandomResizedCrop(224, scale=(0.5, 1.0))`), or the whole
expression one string (`augment: "T.Compose([...])"`). They become the canonical
`{Name: {arg: value}}` steps, positional arguments named from the class's signature, so
config.yaml records one spelling whatever was pasted.

Only literals are read (`ast.literal_eval` per argument): numbers, strings, lists, tuples, plus
`InterpolationMode.X` (read as its name). The conversions (`ToTensor(), ToDtype(torch.float32)`)
keep no arguments at all: stagewise does them itself (data.augment.CONVERSIONS).
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

from .augment import CONVERSIONS

_MAX_TEXT = 20_000  # a pasted list is a few hundred characters; far more is not a transform list


def canonical_steps(value: Any) -> Any:
    """`value` (a list of steps, or one pasted string) with every call string made a
    `{Name: {arg: value}}` step; other items are kept as they are. Raise ValueError naming the
    step that is not a call of literals."""
    if isinstance(value, str):
        value = _pasted_list(value)
    if not isinstance(value, list | tuple):
        return value
    return [_step(item, i) if isinstance(item, str) else item for i, item in enumerate(value)]


def _pasted_list(text: str) -> list[Any]:
    """`[A(), B(1)]` or `Compose([A(), B(1)])` (any module prefix) -> the calls' source texts."""
    tree = _parse(text, "the pasted list")
    node = tree.body
    if isinstance(node, ast.Call) and _name(node.func) == "Compose" and len(node.args) == 1:
        node = node.args[0]
    if not isinstance(node, ast.List | ast.Tuple):
        raise ValueError("augment: a string must be a pasted list of transforms, [A(), B(...)] or "
                         "Compose([A(), B(...)]); or write augment: as a YAML list")
    return [ast.get_source_segment(text, item) or "" for item in node.elts]


def _step(text: str, i: int) -> str | dict[str, Any]:
    """One step: `Name` stays as it is; `Name(args)` (or `T.Name(args)`) -> {Name: {args}}."""
    stripped = text.strip()
    if "(" not in stripped:
        return stripped.rsplit(".", 1)[-1] if stripped else text
    node = _parse(stripped, f"step {i + 1}").body
    if not isinstance(node, ast.Call) or _name(node.func) is None:
        raise ValueError(f"step {i + 1}: {stripped[:120]!r} is not a transform call such as "
                         "RandomResizedCrop(224, scale=(0.5, 1.0))")
    name = _name(node.func) or ""
    if name in CONVERSIONS:  # stagewise converts itself: their arguments (torch.float32...) are moot
        return name
    kwargs = {kw.arg: _literal(kw.value, name, kw.arg, i) for kw in node.keywords if kw.arg}
    if any(kw.arg is None for kw in node.keywords) or any(isinstance(a, ast.Starred) for a in node.args):
        raise ValueError(f"step {i + 1}: {name}: write the arguments out (no * or **)")
    if node.args:
        kwargs = {**_positional(name, node.args, i), **kwargs}
    return {name: kwargs} if kwargs else name


def _positional(name: str, args: list[ast.expr], i: int) -> dict[str, Any]:
    """Positional arguments named by the transform's signature, as Python would bind them."""
    from torchvision.transforms import v2

    cls = getattr(v2, name, None)
    if not isinstance(cls, type):
        raise ValueError(f"step {i + 1}: unknown transform {name[:80]!r}")
    params = [p for p, v in inspect.signature(cls).parameters.items()
              if v.kind in (v.POSITIONAL_ONLY, v.POSITIONAL_OR_KEYWORD)]
    if len(args) > len(params):
        raise ValueError(f"step {i + 1}: {name} takes at most {len(params)} positional "
                         f"argument(s) ({', '.join(params)}), got {len(args)}")
    return {p: _literal(a, name, p, i) for p, a in zip(params, args, strict=False)}


def _literal(node: ast.expr, name: str, arg: str, i: int) -> Any:
    if isinstance(node, ast.Attribute) and _name(node.value) == "InterpolationMode":
        return node.attr.lower()  # v2 takes the mode's name: InterpolationMode.BICUBIC -> "bicubic"
    try:
        return _plain(ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"step {i + 1}: {name}({arg}=...): only literal values can be read "
                         f"(numbers, strings, lists); got {ast.unparse(node)[:80]!r}") from None


def _plain(value: Any) -> Any:
    """Tuples as lists: config.yaml is plain data, and the transforms take either."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _name(node: ast.expr) -> str | None:
    """`Name` of `Name`, `T.Name`, `torchvision.transforms.v2.Name`."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _parse(text: str, where: str) -> ast.Expression:
    if len(text) > _MAX_TEXT:
        raise ValueError(f"{where}: {len(text)} characters is too long for a transform list")
    try:
        return ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        msg = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
        # A YAML flow list [A(1, 2), B()] splits at every comma: the usual cause of a torn call.
        torn = ("; in a YAML [a, b] list quote each call that has commas, or write one call per "
                "line (- RandomResizedCrop(224, scale=(0.5, 1.0)))") if text.count("(") != text.count(")") else ""
        raise ValueError(f"{where}: {text.strip()[:120]!r} is not a transform call ({msg}){torn}") from None
