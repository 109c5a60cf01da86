"""torchvision's classification models, built by torchvision itself so its weights load as saved.

Names carry the prefix `tv:` once resolved (see `build.resolve_model_name`), so a config.yaml or
model.json always says which library builds the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from ..errors import WeightsError

PREFIX = "tv:"

# How torchvision builds these two for its published weights: the Google-trained checkpoints
# expect inputs rescaled to [-1, 1] (transform_input) and carry auxiliary classifiers that only
# serve training. torchvision drops those after loading; we never build them, so training sees
# plain logits rather than a tuple.
_FIXED_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"transform_input": True, "aux_logits": False, "init_weights": True},
    "inception_v3": {"transform_input": True, "aux_logits": False, "init_weights": True},
}
AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")

# Families whose builders take a classifier dropout (`dropout`) or a stochastic depth rate
# (`stochastic_depth_prob`); ViT's and Swin's `dropout` act inside the encoder, so not listed.
_DROPOUT = ("alexnet", "vgg", "squeezenet", "googlenet", "inception_v3", "mobilenet_v",
            "efficientnet", "mnasnet")
_DEPTH = ("efficientnet", "convnext")


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    """Every classification model torchvision ships (its detection, video... models excluded)."""
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def is_torchvision(name: str) -> bool:
    return name.startswith(PREFIX)


def base_name(name: str) -> str:
    return name.removeprefix(PREFIX)


def build_kwargs(name: str, num_classes: int, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 image_size: int | None = None) -> dict[str, Any]:
    """Keyword arguments for `torchvision.models.get_model(name, ...)`.

    Regularisers are always passed where the family has them, so 0 means off as it does for timm
    (torchvision's own defaults, e.g. EfficientNet's 0.2 dropout, would otherwise apply silently).
    """
    kwargs: dict[str, Any] = {"num_classes": num_classes, **_FIXED_KWARGS.get(name, {})}
    if name.startswith(_DROPOUT):
        kwargs["dropout"] = drop_rate
    elif drop_rate:
        raise WeightsError(f"model 'tv:{name}' has no classifier dropout to set (drop_rate); use "
                           "head_layers with head_dropout instead")
    if name.startswith(_DEPTH):
        kwargs["stochastic_depth_prob"] = drop_path_rate
    elif drop_path_rate:
        raise WeightsError(f"model 'tv:{name}' has no stochastic depth to set (drop_path_rate)")
    if name.startswith(("vit_", "maxvit")):
        # Built at the size of torchvision's default weights unless told otherwise, matching
        # `data_config` (vit_h_14's default weights are 518 px).
        kwargs.update(_size_kwargs(name, image_size or default_image_size(name)))
    return kwargs


def _size_kwargs(name: str, image_size: int) -> dict[str, Any]:
    # ViT fixes its position embeddings and MaxViT its attention grids at construction; the CNNs
    # and Swin (which pads to its windows) take any size.
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        if image_size % patch:
            raise WeightsError(f"tv:{name}: image_size {image_size} is not a multiple of its patch "
                               f"size {patch}")
        return {"image_size": image_size}
    return {"input_size": (image_size, image_size)}


def create_for_weights(
    name: str, kwargs: dict[str, Any], state: Mapping[str, torch.Tensor] | None
) -> nn.Module:
    """`create`, minus the random init when `state` fills every tensor but the classifier.

    Built on the meta device and materialised empty: the seconds torchvision's init spends on a
    large model (vit_h_14, regnet_y_128gf) would be overwritten by the weights anyway. The
    classifier is initialised by the caller (`init_head`), like every new head.
    """
    if state is not None:
        try:
            with torch.device("meta"):
                model = create(name, kwargs)
        except (NotImplementedError, RuntimeError):  # RegNet computes its widths with tensors
            model = None
        if model is not None and _fills(model, state):
            return model.to_empty(device="cpu")
    return create(name, kwargs)


def _fills(model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    from .head import head_param_names

    own = model.state_dict()
    if set(dict(model.named_buffers())) - set(own):
        return False  # non-persistent buffers: computed at init, never in a file
    head = set(head_param_names(model))
    return all(k in head or (k in state and tuple(state[k].shape) == tuple(v.shape))
               for k, v in own.items())


def create(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """torchvision's `name`, randomly initialised as torchvision does."""
    from torchvision.models import MNASNet, get_model

    try:
        model = get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError) as exc:  # an option the family lacks; MaxViT's size check
        raise WeightsError(f"model 'tv:{name}' does not accept these options: {exc}") from None
    if isinstance(model, MNASNet):
        model.__class__ = _unversioned_mnasnet()
    return model


@lru_cache(maxsize=1)
def _unversioned_mnasnet() -> type[nn.Module]:
    from torchvision.models import MNASNet

    class UnversionedMNASNet(MNASNet):
        """MNASNet that reads a state dict without module versions as the current version.

        torchvision's MNASNet refuses state dicts that do not say their version, and none read
        from a file here do: safetensors files carry no versions, and `load_state_dict_file`
        unwraps .pth files into plain dicts. The current version is the layout the model was built
        with, and any other layout fails the shape checks anyway.
        """

        def _load_from_state_dict(self, state_dict: Any, prefix: str, local_metadata: dict,
                                  *args: Any, **kwargs: Any) -> None:
            local_metadata = {"version": self._version, **local_metadata}
            super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    return UnversionedMNASNet


def data_config(name: str, image_size: int | None) -> dict[str, Any]:
    """Preprocessing of torchvision's default weights, in timm's data-config form."""
    from torchvision.models import get_model_weights

    t = get_model_weights(name).DEFAULT.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    size = image_size or crop
    return {"input_size": (3, size, size), "mean": tuple(t.mean), "std": tuple(t.std),
            "interpolation": t.interpolation.value, "crop_pct": crop / resize}


def default_image_size(name: str) -> int:
    return int(data_config(name, None)["input_size"][-1])


def hub_state_dict(name: str) -> tuple[dict[str, torch.Tensor], bool]:
    """torchvision's default weights for `name` (downloaded to torch's hub cache) and whether
    they predict the ImageNet-1k classes."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as exc:  # urllib, ssl and hash errors alike
        raise WeightsError(
            f"could not fetch torchvision's weights {weights} ({type(exc).__name__}). Offline? "
            "Download them where you have internet and pass the file instead: "
            "--weights path/to/file.pth"
        ) from None
    return dict(state), "IMAGENET1K" in weights.name and len(weights.meta["categories"]) == 1000


def resample_pos_embed(model: nn.Module, src: torch.Tensor) -> torch.Tensor | None:
    """A torchvision ViT's position embedding resampled to the model's image size (None: no ViT)."""
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    if not isinstance(model, VisionTransformer):
        return None
    state = interpolate_embeddings(model.image_size, model.patch_size, {"encoder.pos_embedding": src})
    return state["encoder.pos_embedding"]


def body_fits(model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    """Whether every backbone (non-head) tensor of `model` is in `state` with its shape."""
    from .head import head_param_names

    head = set(head_param_names(model))
    body = {k: v for k, v in model.state_dict().items() if k not in head}
    return bool(body) and all(k in state and tuple(state[k].shape) == tuple(v.shape)
                              for k, v in body.items())


def fits_layout(name: str, state: Mapping[str, torch.Tensor]) -> bool:
    """Whether `state` holds every backbone tensor of torchvision's `name` (a name it defines)."""
    if name not in torchvision_names():
        return False
    with torch.device("meta"):
        model = create(name, build_kwargs(name, 1000))
    return body_fits(model, state)


def layout_hint(name: str, state: Mapping[str, torch.Tensor]) -> str | None:
    """For a timm name torchvision also uses: a hint when `state` is torchvision's layout of it."""
    if not fits_layout(name, state):
        return None
    return (f"these are torchvision's {name} weights (all backbone tensors fit), while '{name}' "
            f"names timm's own {name}, a different layout; use model: {PREFIX}{name}")


def close_matches(name: str) -> list[str]:
    import difflib

    return difflib.get_close_matches(base_name(name), torchvision_names(), n=5, cutoff=0.6)
