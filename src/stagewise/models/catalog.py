"""Which model names `model:` accepts, with their size and input size, for `stagewise models`.

Parameters are counted on a network built on the meta device: shapes only, no memory and no
initialisation, so even a ViT-g costs milliseconds. Only the rows shown are built.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from fnmatch import fnmatch

import torch

from . import tv

log = logging.getLogger("stagewise")


@dataclass(frozen=True)
class ModelInfo:
    """One row of the listing; None where the network could not be built on the meta device."""

    name: str
    library: str  # "timm" or "torchvision"
    params: int | None
    input_size: int | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def model_names(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """timm's names (tagged `arch.tag` with `pretrained`, as `--weights hub` loads them), then
    torchvision's as `tv:<name>`, filtered by a shell-style pattern (substring without wildcards)."""
    import timm

    pat = pattern or "*"
    substring = not any(c in pat for c in "*?[")
    if substring:
        pat = f"*{pat}*"
    names = list(timm.list_models(pat, pretrained=pretrained))
    # Every torchvision classification model ships ImageNet weights: the same list either way.
    names += [tv.PREFIX + n for n in tv.torchvision_names() if fnmatch(n, pat) or fnmatch(tv.PREFIX + n, pat)]
    if substring and pattern:  # `models resnet` lists resnet18 before ecaresnet101d
        names.sort(key=lambda n: not tv.base_name(n).startswith(pattern))
    return names


def describe(name: str) -> ModelInfo:
    """Parameter count (built on the meta device) and default input size of one model name."""
    library = "torchvision" if tv.is_torchvision(name) else "timm"
    return ModelInfo(name=name, library=library, params=_param_count(name), input_size=_input_size(name))


def _param_count(name: str) -> int | None:
    import timm

    try:
        with torch.device("meta"):
            if tv.is_torchvision(name):
                model = tv.create(tv.base_name(name), {})
            else:
                model = timm.create_model(name.split(".")[0], pretrained=False)
    except Exception as exc:  # a model whose constructor computes with real tensors
        log.debug("models: %s cannot be built on the meta device: %s", name, exc)
        return None
    return sum(p.numel() for p in model.parameters())


def _input_size(name: str) -> int | None:
    """timm: the pretrained config's input size; torchvision: its default weights' crop size."""
    if tv.is_torchvision(name):
        try:
            return tv.default_image_size(tv.base_name(name))
        except (ValueError, AttributeError, KeyError):
            return None
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else None
