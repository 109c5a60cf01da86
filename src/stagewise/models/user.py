"""A network passed as a Python object (`stagewise.train(model=my_module, ...)`), not by name.

Such a module is taken as it is: its own layers and whatever weights it holds. Only its classifier
may change: when its output count differs from the class count of the data, it is replaced by a
fresh Linear of the right size (the usual `model.fc = nn.Linear(...)` step of a tutorial, done
for you and said). The classifier is the module a caller names (`head="fc"`), else the last
Linear (or 1x1 Conv2d) in registration order, which is the classifier of almost every network.

It cannot be rebuilt from a name: model.json records `python:<module>.<Class>` and the head's
path, and `stagewise.load(run, model=MyNet())` rebuilds it from a fresh instance.
"""

from __future__ import annotations

from torch import nn

from ..errors import WeightsError
from .head import HEAD_ATTR, HeadReport, head_paths, init_head

USER_PREFIX = "python:"  # the `model:` (and model.json `architecture`) of a module passed in


def user_architecture(module: nn.Module) -> str:
    """What config.yaml and model.json call a module passed in: `python:<module>.<Class>`."""
    cls = type(module)
    return f"{USER_PREFIX}{cls.__module__}.{cls.__qualname__}"


def is_user_architecture(name: str) -> bool:
    """Whether `name` stands for a module that was passed as an object (no name can rebuild it)."""
    return name.startswith(USER_PREFIX)


def rebuild_hint(name: str) -> str:
    """How to use a run of a module passed in: the fix in every error that meets its name."""
    cls = name[len(USER_PREFIX):].rpartition(".")[2] or "YourModule"
    return (f"'{name}' is a network that was passed to stagewise.train as a Python object; no name "
            f"rebuilds it. Pass a fresh instance of it: stagewise.load(run, model={cls}(...)) "
            f"(or stagewise.train(model={cls}(...), ..., resume=True) to resume)")


def adopt_module(module: nn.Module, class_ids: list[str], head: str | None = None) -> HeadReport:
    """Make `module` classify `class_ids`: find its classifier (`head`, or the last Linear /
    1x1 Conv2d) and replace it when its output count differs. The path is remembered on the
    module (`HEAD_ATTR`), so layer groups, probes and the head's LR find it as they find timm's."""
    if not isinstance(module, nn.Module):
        raise WeightsError(f"model: expected a model name or a torch.nn.Module, got {type(module).__name__}")
    modules = dict(module.named_modules())
    if head is not None and head not in modules:
        children = ", ".join(n for n, _ in module.named_children()) or "none"
        raise WeightsError(f"head='{head}': {type(module).__name__} has no submodule of that name "
                           f"(its children: {children}); name the classifier, e.g. head='fc'")
    paths = [head] if head is not None else head_paths(module)
    if not paths:
        raise WeightsError(f"{type(module).__name__} has no Linear or Conv2d layer to use as its "
                           "classifier; pass head='<name of the classifier module>'")
    path = paths[0]
    layer = modules[path]
    object.__setattr__(module, HEAD_ATTR, path)  # a plain attribute, not a submodule or buffer
    n = len(class_ids)
    out = _outputs(layer, path)
    if out == n:
        return HeadReport(mode="keep", kept=n, total=n, source=f"{type(module).__name__}.{path}",
                          path=path)
    module.set_submodule(path, _resized(layer, n))
    init_head(module)
    return HeadReport(mode="new", kept=0, total=n, path=path,
                      reason=f"{type(module).__name__}.{path} had {out} outputs for {n} classes")


def _outputs(layer: nn.Module, path: str) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1):
        return layer.out_channels
    raise WeightsError(f"the classifier '{path}' is a {type(layer).__name__}; stagewise adapts a "
                       "Linear or 1x1 Conv2d classifier: pass head='<its name>'")


def _resized(layer: nn.Module, n: int) -> nn.Module:
    """A fresh classifier like `layer` (same input width, device and dtype) with `n` outputs."""
    weight = layer.weight
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, n, bias=layer.bias is not None,
                         device=weight.device, dtype=weight.dtype)
    assert isinstance(layer, nn.Conv2d)
    return nn.Conv2d(layer.in_channels, n, kernel_size=1, bias=layer.bias is not None,
                     device=weight.device, dtype=weight.dtype)

