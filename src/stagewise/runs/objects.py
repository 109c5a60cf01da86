"""`stagewise.train` with Python objects: a network (`model=nn.Module`) and datasets or
DataLoaders (`data=(train, val)` or `data=(train, val, test)`) in place of a name and a folder.

They are plugged in at the edge: the objects become a `Given` (training/setup.py) and the config
records what they were (`model: python:<module>.<Class>`, `data: python:<Dataset>(<size>)+...`),
so config.yaml, resume checks and model.json work as for names. Everything after set-up (the
strategies, the loop, checkpoints, history, reports) is the same code as for a named run.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..data.objects import index_from_objects, index_yields_tensors
from ..errors import ConfigError
from ..models.user import user_architecture
from ..training.setup import Given


def split_objects(overrides: dict[str, Any]) -> tuple[dict[str, Any], Given | None]:
    """`overrides` with any objects among `model`/`data` replaced by what config.yaml records,
    and the objects themselves as a Given (None when everything is named)."""
    model, data = overrides.get("model"), overrides.get("data")
    module = model if isinstance(model, nn.Module) else None
    datasets = _datasets(data)
    if module is None and datasets is None:
        return overrides, None
    out = dict(overrides)
    index, notes = None, []
    if datasets is not None:
        index, hints = index_from_objects(*datasets)
        if index_yields_tensors(index):
            notes.append("data: your dataset yields float tensors, fed to the network as they are "
                         "(your transform is the preprocessing): stagewise adds no resizing, "
                         "normalisation or augmentation")
        out["data"] = str(index.root)
        for key, value in (("batch_size", hints.batch_size), ("num_workers", hints.num_workers)):
            if key not in out and value is not None:
                out[key] = value
    head = None
    if module is not None:
        out["model"] = user_architecture(module)
        head = out.pop("head", None)  # with a module, head= names its classifier
        if out.get("weights") not in (None, "auto"):
            raise ConfigError("weights: a module passed in keeps the weights it holds; load the file "
                              "into it first (module.load_state_dict(...)), or pass the model by name")
        out["weights"] = None
        # Its weights are whatever it holds (pretrained, usually): the transfer recipe, unless the
        # caller says scratch (the recipe of a random network).
        if "weights_source" not in out:
            out["weights_source"] = "none" if out.get("strategy") == "scratch" else "transfer"
    return out, Given(index=index, model=module, head=head, notes=tuple(notes))


def _datasets(data: Any) -> tuple[Any, ...] | None:
    """The dataset objects of `data`, or None for a folder path (or nothing)."""
    if data is None or isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        return None
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return tuple(data)
    raise ConfigError(f"data: expected a folder, or a (train, val) or (train, val, test) tuple of "
                      f"datasets or DataLoaders; got {type(data).__name__}")


def resume_hint(given: Given | None, default: str, out: str) -> str:
    """How to continue an interrupted run: objects cannot be named on a command line."""
    if given is None:
        return default
    return f"stagewise.train(model=..., data=..., out={out!r}, resume=True) with the same objects"
