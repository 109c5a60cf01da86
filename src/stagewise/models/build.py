"""Create a timm backbone for a class list and load its starting weights."""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError
from .head import HeadReport, adapt_head, classifier_keys, init_head
from .weights import LoadedWeights, load_state_dict_file

log = logging.getLogger("stagewise")

# torchvision's names for the classic architectures, mapped to timm's equivalents.
TORCHVISION_ALIASES = {
    "mobilenet_v2": "mobilenetv2_100",
    "mobilenet_v3_large": "mobilenetv3_large_100",
    "mobilenet_v3_small": "mobilenetv3_small_100",
    "vit_b_16": "vit_base_patch16_224",
    "vit_b_32": "vit_base_patch32_224",
    "vit_l_16": "vit_large_patch16_224",
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "regnet_y_400mf": "regnety_004",
    "regnet_y_800mf": "regnety_008",
    "regnet_x_400mf": "regnetx_004",
    "regnet_x_800mf": "regnetx_008",
    "regnet_y_1_6gf": "regnety_016",
    "regnet_y_3_2gf": "regnety_032",
    "regnet_y_16gf": "regnety_160",
    # The paper's EfficientNetV2-S, as torchvision builds it (efficientnetv2_rw_s is timm's own variant).
    "efficientnet_v2_s": "efficientnetv2_s",
    "mnasnet1_0": "mnasnet_100",
    "vit_l_32": "vit_large_patch32_224",
    "vit_h_14": "vit_huge_patch14_224",
    # No ShuffleNet or SqueezeNet in timm: those names fail with close matches rather than
    # silently building a different network.
}

_IMAGENET_FILE = re.compile(r"(in1k|imagenet[-_]?1k|ilsvrc)", re.IGNORECASE)


@lru_cache(maxsize=1)
def _all_models() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def resolve_model_name(name: str) -> str:
    """Map a timm or torchvision name to a timm model name, or raise with close matches."""
    import timm

    name = name.strip()
    name = TORCHVISION_ALIASES.get(name, name)
    if timm.is_model(name.split(".")[0]) or name.startswith("hf-hub:"):
        return name
    close = difflib.get_close_matches(name, _all_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model '{name}'{hint} (any name from timm.list_models() works)")


@dataclass
class ModelBundle:
    """The model plus what was learned while building it."""

    model: nn.Module
    data_config: dict[str, Any]
    head: HeadReport
    load_notes: list[str] = field(default_factory=list)


def build_model(
    name: str,
    class_ids: list[str],
    weights: str | None = None,
    head_mode: str | None = None,
    incoming: LoadedWeights | None = None,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    image_size: int | None = None,
    class_names: list[str] | None = None,
) -> ModelBundle:
    """Create `name` with a classifier for `class_ids` and load its starting weights.

    `incoming` (weights handed over from an earlier stage) wins over `weights`.
    """
    import timm

    kwargs: dict[str, Any] = {"drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if image_size is not None and _takes_img_size(name):
        kwargs["img_size"] = image_size
    try:
        model = timm.create_model(name, pretrained=False, num_classes=len(class_ids), **kwargs)
    except TypeError as exc:
        raise WeightsError(f"model '{name}' does not accept these options: {exc}") from None
    if incoming is None and weights:
        incoming = _fetch_weights(name, weights)
    notes: list[str] = []
    init_head(model)
    if incoming is None:
        head = HeadReport(mode="new", kept=0, total=len(class_ids))
    else:
        notes = _load_backbone(model, incoming, name)
        head = adapt_head(model, incoming, class_ids, head_mode, class_names)
    data_config = timm.data.resolve_data_config({}, model=model)
    return ModelBundle(model=model, data_config=data_config, head=head, load_notes=notes)


def _takes_img_size(name: str) -> bool:
    # Vision transformers fix their position embeddings at construction; CNNs don't care.
    base = name.split(".")[0]
    return any(base.startswith(p) for p in ("vit_", "deit", "eva", "beit", "swin", "test_vit"))


def _fetch_weights(name: str, weights: str) -> LoadedWeights:
    if weights in ("hub", "pretrained") or weights.startswith("hf-hub:"):
        return _hub_weights(name if weights in ("hub", "pretrained") else weights)
    loaded = load_state_dict_file(Path(weights).expanduser())
    if loaded.class_ids is None and _IMAGENET_FILE.search(Path(weights).name):
        _attach_imagenet(loaded, reason=f"file name '{Path(weights).name}'")
    return loaded


def _hub_weights(tag: str) -> LoadedWeights:
    import timm
    from timm.data import infer_imagenet_subset

    try:
        src = timm.create_model(tag, pretrained=True)
    except Exception as exc:  # network errors come in many types from hub clients
        raise WeightsError(
            f"could not fetch pretrained weights for '{tag}' from the hub ({type(exc).__name__}). "
            "Offline? Download the weights where you have internet and pass the file instead: "
            "--weights path/to/model.safetensors"
        ) from None
    loaded = LoadedWeights(state_dict=src.state_dict(), source=f"hub:{tag}")
    if infer_imagenet_subset(src) == "imagenet-1k":
        _attach_imagenet(loaded, reason="the model's pretrained config")
    return loaded


def _attach_imagenet(loaded: LoadedWeights, reason: str) -> None:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    loaded.class_ids = list(info.label_names())
    loaded.class_names = [d.split(",")[0] for d in info.label_descriptions()]
    loaded.class_list_name = f"ImageNet-1k ({reason})"


def _load_backbone(model: nn.Module, incoming: LoadedWeights, name: str) -> list[str]:
    """Copy every tensor whose name and shape match; report the rest. The head is left to head.py."""
    own = model.state_dict()
    head_keys = set(classifier_keys(model))
    body = [k for k in own if k not in head_keys]
    matched, mismatched = {}, []
    for k in body:
        t = incoming.state_dict.get(k)
        if t is None:
            continue
        if tuple(t.shape) == tuple(own[k].shape):
            matched[k] = t
        else:
            mismatched.append(f"{k} {tuple(t.shape)} -> {tuple(own[k].shape)}")
    missing = [k for k in body if k not in incoming.state_dict]
    unexpected = [k for k in incoming.state_dict if k not in own and k not in head_keys]
    if body and len(matched) < 0.5 * len(body):
        raise WeightsError(
            f"{incoming.source}: weights do not fit this architecture ({name}): only {len(matched)} of "
            f"{len(body)} backbone tensors match by name and shape. Check --model; first missing: "
            f"{', '.join(missing[:3]) or '-'}; first unexpected: {', '.join(unexpected[:3]) or '-'}"
        )
    _resample_pos_embed(model, incoming, matched, mismatched)
    with torch.no_grad():
        model.load_state_dict(matched, strict=False)
    notes = [f"weights: loaded {len(matched)}/{len(body)} backbone tensors from {incoming.source}"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            notes.append(f"weights: {len(items)} {label}: {shown}")
    for n in notes:
        log.info(n)
    return notes


def _resample_pos_embed(
    model: nn.Module, incoming: LoadedWeights, matched: dict[str, torch.Tensor], mismatched: list[str]
) -> None:
    """ViT position embeddings follow the image size; resample them with timm's helper."""
    key = "pos_embed"
    own = model.state_dict().get(key)
    src = incoming.state_dict.get(key)
    if own is None or src is None or own.shape == src.shape:
        return
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    grid = model.patch_embed.grid_size
    matched[key] = resample_abs_pos_embed(src, new_size=list(grid), num_prefix_tokens=prefix)
    mismatched[:] = [m for m in mismatched if not m.startswith(key + " ")]
    log.info("weights: resampled pos_embed %s -> %s", tuple(src.shape), tuple(own.shape))
