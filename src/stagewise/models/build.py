"""Create a timm or torchvision backbone for a class list and load its starting weights."""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from ..errors import WeightsError
from . import tv
from .auto import cached_hub_file, hub_repo
from .embedding import EmbeddingSpec, adapt_embedding_head, install_embedding_head
from .head import (
    HeadReport,
    HeadSpec,
    adapt_head,
    head_param_names,
    head_paths,
    init_head,
    install_mlp_head,
)
from .user import adopt_module, is_user_architecture, rebuild_hint, user_architecture
from .weights import LoadedWeights, load_state_dict_file

log = logging.getLogger("stagewise")

_IMAGENET_FILE = re.compile(r"(in1k|imagenet[-_]?1k|ilsvrc)", re.IGNORECASE)


@lru_cache(maxsize=1)
def _all_models() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def resolve_model_name(name: str) -> str:
    """A timm name as it is, a torchvision name as `tv:<name>`, or raise with close matches.

    A name both libraries use (resnet18, vgg11, efficientnet_b0...) is timm's: that is what it
    always meant here, and saved runs name their architecture that way. `tv:<name>` picks
    torchvision's build explicitly; names only torchvision has (mobilenet_v2...) resolve to it.
    """
    import timm

    name = name.strip()
    if is_user_architecture(name):  # a module passed in: recorded, never built from the name
        return name
    if tv.is_torchvision(name):
        if tv.base_name(name) in tv.torchvision_names():
            return name
        close = [tv.PREFIX + n for n in tv.close_matches(name)]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown torchvision model '{name}'{hint} (any name from "
                         "torchvision.models.list_models(module=torchvision.models) works after tv:)")
    if timm.is_model(name.split(".")[0]) or name.startswith("hf-hub:"):
        return name
    if name in tv.torchvision_names():
        return tv.PREFIX + name
    close = difflib.get_close_matches(name, _all_models() + tv.torchvision_names(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model '{name}'{hint} (any name from timm.list_models() or "
                     "torchvision.models.list_models() works)")


@dataclass
class ModelBundle:
    """The model plus what was learned while building it."""

    model: nn.Module
    data_config: dict[str, Any]
    head: HeadReport
    load_notes: list[str] = field(default_factory=list)
    architecture: str = ""  # the name the network was built as (model.json records it)


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
    head: HeadSpec | None = None,
    embedding: EmbeddingSpec | None = None,
    train_embedding: bool = True,
) -> ModelBundle:
    """Create `name` with a classifier for `class_ids` and load its starting weights.

    `incoming` (weights handed over from an earlier stage) wins over `weights`. `head` adds hidden
    layers before the classifier; a saved model is rebuilt with the same `head` (model.json's
    head_layers/head_activation/head_dropout, read with `HeadSpec.from_mapping`).
    """
    if is_user_architecture(name):
        raise WeightsError(rebuild_hint(name))
    if incoming is None and weights:
        incoming = _fetch_weights(name, weights)
    built = _architecture_for(name, incoming)
    bundle = _build(built, class_ids, incoming, head_mode, drop_rate, drop_path_rate, image_size,
                    class_names, head or HeadSpec(), embedding, train_embedding)
    bundle.architecture = built
    if built != name:
        note = (f"warning: {incoming.source if incoming else 'the weights'} are torchvision's layout "
                f"of {name} (every backbone tensor fits), while '{name}' names timm's network; built "
                f"{built} instead, as model.json records (say model: {built} to silence this)")
        log.warning(note)
        bundle.load_notes.insert(0, note)
    return bundle


def module_bundle(module: nn.Module, class_ids: list[str], head: str | None = None,
                  image_size: int | None = None) -> ModelBundle:
    """A stage's ModelBundle for a module passed in: its classifier adopted (`adopt_module`),
    timm's default preprocessing for it (ImageNet mean/std; `image_size` or 224 pixels)."""
    from timm.data import resolve_data_config

    report = adopt_module(module, class_ids, head)
    data_config = resolve_data_config({}, model=module)
    if image_size is None and not hasattr(module, "pretrained_cfg"):
        data_config["input_size"] = (3, 224, 224)
    name = user_architecture(module)
    note = (f"model: your {type(module).__name__} as given (its own weights), classifier "
            f"'{report.path}'" + (f" replaced: {report.reason}" if report.mode == "new" else ""))
    return ModelBundle(model=module, data_config=data_config, head=report, load_notes=[note],
                       architecture=name)


def _architecture_for(name: str, incoming: LoadedWeights | None) -> str:
    """`name`, or `tv:<name>` when `name` is one both timm and torchvision define, the weights do
    not fit timm's network and every backbone tensor of torchvision's is in them (the name was
    meant as torchvision's: its weights file says so)."""
    if incoming is None or tv.is_torchvision(name) or name not in tv.torchvision_names():
        return name
    import timm

    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        timm_model = timm.create_model(name, num_classes=1)
    if tv.body_fits(timm_model, incoming.state_dict) or not tv.fits_layout(name, incoming.state_dict):
        return name
    return tv.PREFIX + name


def _build(name: str, class_ids: list[str], incoming: LoadedWeights | None, head_mode: str | None,
           drop_rate: float, drop_path_rate: float, image_size: int | None,
           class_names: list[str] | None, head: HeadSpec, embedding: EmbeddingSpec | None,
           train_embedding: bool) -> ModelBundle:
    if tv.is_torchvision(name):
        base = tv.base_name(name)
        kwargs = tv.build_kwargs(base, len(class_ids), drop_rate, drop_path_rate, image_size)
        model = tv.create_for_weights(base, kwargs, incoming.state_dict if incoming else None)
        data_config: dict[str, Any] | None = tv.data_config(base, image_size)
    else:
        model = _create_timm(name, len(class_ids), drop_rate, drop_path_rate, image_size)
        data_config = None
    if embedding is not None:
        return _embedding_bundle(model, class_ids, embedding, head, incoming, name, head_mode,
                                 data_config, train_embedding)
    if head.layers:
        install_mlp_head(model, head)
    notes: list[str] = []
    init_head(model)
    if incoming is None:
        hidden = "new" if head.layers else None
        report = HeadReport(mode="new", kept=0, total=len(class_ids), hidden=hidden)
    else:
        notes = _load_backbone(model, incoming, name)
        report = adapt_head(model, incoming, class_ids, head_mode, class_names)
    if data_config is None:
        import timm

        data_config = timm.data.resolve_data_config({}, model=model)
    return ModelBundle(model=model, data_config=data_config, head=report, load_notes=notes)


def _embedding_bundle(model: nn.Module, class_ids: list[str], spec: EmbeddingSpec, head: HeadSpec,
                      incoming: LoadedWeights | None, name: str, head_mode: str | None,
                      data_config: dict[str, Any] | None, train: bool) -> ModelBundle:
    install_embedding_head(model, spec, head, len(class_ids) if train else None)
    notes: list[str] = []
    if incoming is None:
        report = HeadReport(mode="new", kept=0, total=len(class_ids), embedding=f"new ({spec.describe()})")
    else:
        notes = _load_backbone(model, incoming, name)
        report = adapt_embedding_head(model, incoming, class_ids, head_mode)
    if data_config is None:
        import timm

        data_config = timm.data.resolve_data_config({}, model=model)
    return ModelBundle(model=model, data_config=data_config, head=report, load_notes=notes)


def _create_timm(name: str, num_classes: int, drop_rate: float, drop_path_rate: float,
                 image_size: int | None) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {"drop_rate": drop_rate}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if image_size is not None and _takes_img_size(name):
        kwargs["img_size"] = image_size
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise WeightsError(f"model '{name}' does not accept these options: {exc}") from None


def _takes_img_size(name: str) -> bool:
    # Vision transformers fix their position embeddings at construction; CNNs don't care.
    base = name.split(".")[0]
    return any(base.startswith(p) for p in ("vit_", "deit", "eva", "beit", "swin", "test_vit"))


def _fetch_weights(name: str, weights: str) -> LoadedWeights:
    if tv.is_torchvision(name) and weights in ("hub", "pretrained"):
        state, imagenet = tv.hub_state_dict(tv.base_name(name))
        loaded = LoadedWeights(state_dict=state, source=f"torchvision:{tv.base_name(name)}")
        if imagenet:
            _attach_imagenet(loaded, reason="torchvision's IMAGENET1K weights")
        return loaded
    if weights in ("hub", "pretrained") or weights.startswith("hf-hub:"):
        return _hub_weights(name if weights in ("hub", "pretrained") else weights)
    loaded = load_state_dict_file(Path(weights).expanduser())
    if loaded.class_ids is None and _IMAGENET_FILE.search(Path(weights).name):
        _attach_imagenet(loaded, reason=f"file name '{Path(weights).name}'")
    return loaded


def _hub_weights(tag: str) -> LoadedWeights:
    import timm
    from timm.data import infer_imagenet_subset

    # Weights already in the Hugging Face cache load from there without asking the hub (whose
    # client, not told it is offline, retries and times out before using its own cache).
    cached = cached_hub_file(repo) if not tag.startswith("hf-hub:") and (repo := hub_repo(tag)) else None
    overlay: dict[str, Any] | None = {"file": str(cached)} if cached is not None else None
    try:
        src = timm.create_model(tag, pretrained=True, pretrained_cfg_overlay=overlay)
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
    loaded.pretraining_classes = True


def _load_backbone(model: nn.Module, incoming: LoadedWeights, name: str) -> list[str]:
    """Copy every tensor whose name and shape match; report the rest. The head is left to head.py."""
    own = model.state_dict()
    head = set(head_param_names(model))
    body = [k for k in own if k not in head]
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
    # Another head layout's tensors (linear vs MLP) are adapt_head's to report, not unexpected.
    head_prefixes = tuple(f"{p}." for p in head_paths(model))
    extra = [k for k in incoming.state_dict if k not in own and not k.startswith(head_prefixes)]
    aux = [k for k in extra if k.startswith(tv.AUX_PREFIXES)]
    unexpected = [k for k in extra if k not in aux]
    # A torchvision file under a name timm also uses (vgg11, efficientnet_b0) loads partly or
    # not at all; say which name builds the network it was saved from.
    if (missing or mismatched) and not tv.is_torchvision(name):
        hint = tv.layout_hint(name, incoming.state_dict)
        if hint:
            raise WeightsError(f"{incoming.source}: {hint}")
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
    if aux:
        notes.append(f"weights: {len(aux)} tensors of training-time auxiliary classifiers not used "
                     f"({', '.join(sorted({k.split('.')[0] for k in aux}))})")
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
    """ViT position embeddings follow the image size: resampled with timm's or torchvision's helper."""
    own_state = model.state_dict()
    for key in ("pos_embed", "encoder.pos_embedding"):
        own, src = own_state.get(key), incoming.state_dict.get(key)
        if own is None or src is None or own.shape == src.shape:
            continue
        new = _timm_pos_embed(model, src) if key == "pos_embed" else tv.resample_pos_embed(model, src)
        if new is None:
            continue
        matched[key] = new
        mismatched[:] = [m for m in mismatched if not m.startswith(key + " ")]
        log.info("weights: resampled %s %s -> %s", key, tuple(src.shape), tuple(own.shape))


class _PatchEmbed(Protocol):
    """timm's patch embedding (PatchEmbed and its kin): the token grid it cuts an image into."""

    grid_size: tuple[int, int]


def _timm_pos_embed(model: nn.Module, src: torch.Tensor) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    # A timm model with a `pos_embed` parameter: its `patch_embed` is a module with a grid_size.
    grid = list(cast(_PatchEmbed, model.patch_embed).grid_size)
    return resample_abs_pos_embed(src, new_size=grid, num_prefix_tokens=prefix)
