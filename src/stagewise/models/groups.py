"""Layer groups in timm's group-matcher form, for timm models and torchvision's alike.

timm models describe their own groups (`model.group_matcher`). torchvision's have no such
method, so each family gets one here, keyed by its class, in the same form: a `stem` regex and
numbered `blocks` regexes, coarse (stages) for gradual unfreezing and fine (blocks) for layer-wise
LR decay. Parameters no regex matches (a final norm, VGG's fc6/fc7, MaxViT's pre-logits) form
the last group below the head, as in timm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

# class name: (stem, coarse blocks, fine blocks); a blocks entry is a regex or timm's list form.
_FEATURES = (r"^features\.0\.", r"^features\.(\d+)\.",
             [(r"^features\.(\d+)\.(\d+)\.", None), (r"^features\.(\d+)\.", None)])
_TORCHVISION: dict[str, tuple[str, Any, Any]] = {
    "ResNet": (r"^conv1\.|^bn1\.", r"^layer(\d+)\.", r"^layer(\d+)\.(\d+)\."),
    "RegNet": (r"^stem\.", r"^trunk_output\.block(\d+)\.", r"^trunk_output\.block(\d+)\.block\d+-(\d+)\."),
    "ShuffleNetV2": (r"^conv1\.", r"^stage(\d+)\.", r"^stage(\d+)\.(\d+)\."),
    "DenseNet": (r"^features\.(?:conv|norm)0\.", r"^features\.(?:denseblock|transition)(\d+)\.",
                 [(r"^features\.denseblock(\d+)\.denselayer(\d+)\.", None),
                  (r"^features\.transition(\d+)\.", (99999,))]),  # timm's MATCH_PREV_GROUP
    "MNASNet": (r"^layers\.[0-7]\.", r"^layers\.(\d+)\.",
                [(r"^layers\.(\d+)\.(\d+)\.", None), (r"^layers\.(\d+)\.", None)]),
    "MaxVit": (r"^stem\.", r"^blocks\.(\d+)\.", r"^blocks\.(\d+)\.layers\.(\d+)\."),
    "VisionTransformer": (r"^class_token$|^conv_proj\.|^encoder\.pos_embedding$",
                          r"^encoder\.layers\.encoder_layer_(\d+)\.",
                          r"^encoder\.layers\.encoder_layer_(\d+)\."),
    **{cls: _FEATURES for cls in ("AlexNet", "VGG", "SqueezeNet", "MobileNetV2", "MobileNetV3",
                                  "EfficientNet", "ConvNeXt", "SwinTransformer")},
}
# Flat families: every top-level module is a block, the first convolutions the stem.
_FLAT_STEMS = {"GoogLeNet": ("conv1", "conv2", "conv3"),
               "Inception3": ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3")}


def group_matcher(model: nn.Module, coarse: bool) -> dict[str, Any] | Callable[[str], Any] | None:
    """timm's matcher for `model` (its own, or ours for torchvision); None when unknown."""
    own = getattr(model, "group_matcher", None)
    if own is not None:
        try:
            return own(coarse=coarse)
        except NotImplementedError:
            return None
    # The torchvision class, also for subclasses (tv.py's MNASNet that reads unversioned files).
    cls = next((c.__name__ for c in type(model).__mro__ if c.__module__.startswith("torchvision.")), "")
    if cls in _TORCHVISION:
        stem, stages, blocks = _TORCHVISION[cls]
        return {"stem": stem, "blocks": stages if coarse else blocks}
    if cls in _FLAT_STEMS:
        return _flat_matcher(model, _FLAT_STEMS[cls])
    return None


def _flat_matcher(model: nn.Module, stem: tuple[str, ...]) -> Callable[[str], int]:
    order = {name: i for i, (name, _) in enumerate(model.named_children())}

    def match(param: str) -> int:
        top = param.split(".")[0]
        return 0 if top in stem else order.get(top, len(order))

    return match


# A network with neither timm's group matcher nor a torchvision family (a module of your own):
# at most this many groups below the head, so gradual unfreezing and layer decay stay coarse.
MAX_FALLBACK_GROUPS = 6


def fallback_groups(model: nn.Module, head: set[str]) -> list[list[str]]:
    """Layer groups of any module, stem first, head excluded: one per top-level child holding
    parameters, in registration order (a module wrapping a single body, `self.backbone`, is
    looked into), runs of neighbours merged down to `MAX_FALLBACK_GROUPS`. Parameters held by
    the module itself (a class token) join the first group."""
    prefix, root = "", model
    while True:
        children = [(n, c) for n, c in root.named_children()
                    if any(f"{prefix}{n}.{p}" not in head for p, _ in c.named_parameters())]
        if len(children) != 1 or not list(children[0][1].children()):
            break
        prefix, root = f"{prefix}{children[0][0]}.", children[0][1]
    names = [n for n, _ in model.named_parameters() if n not in head]
    groups: list[list[str]] = []
    for child, _ in children:
        start = f"{prefix}{child}."
        found = [n for n in names if n.startswith(start)]
        if found:
            groups.append(found)
    grouped = {n for g in groups for n in g}
    loose = [n for n in names if n not in grouped]
    if loose:
        groups[:1] = [loose + (groups[0] if groups else [])]
    if len(groups) > MAX_FALLBACK_GROUPS:
        size, extra = divmod(len(groups), MAX_FALLBACK_GROUPS)
        merged, at = [], 0
        for i in range(MAX_FALLBACK_GROUPS):
            take = size + (1 if i < extra else 0)
            merged.append([n for g in groups[at:at + take] for n in g])
            at += take
        groups = merged
    return groups
