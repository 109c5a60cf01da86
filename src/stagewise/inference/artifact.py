"""Find and read a trained model artifact: weights (.safetensors) plus the `model.json` beside them.

Three kinds of path lead to one: a stage run folder, a pipeline run folder (its final weights) and
the weights file itself. Nothing here needs the training config: model.json is self-describing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..data.transforms import Preprocess
from ..errors import ConfigError, WeightsError
from ..runfolder import MANIFEST, MODEL_CARD, ModelCard, read_model_card

if TYPE_CHECKING:
    from .classifier import Classifier

MODEL_JSON = MODEL_CARD


@dataclass(frozen=True)
class Artifact:
    """A model.json read and checked, and the weights file it belongs to."""

    meta_path: Path
    weights_path: Path
    card: ModelCard

    @property
    def meta(self) -> dict[str, Any]:
        """model.json as plain data."""
        return self.card.as_dict()

    @property
    def folder(self) -> Path:
        return self.meta_path.parent

    @property
    def architecture(self) -> str:
        return self.card.architecture

    @property
    def class_ids(self) -> list[str]:
        return self.card.class_ids

    @property
    def class_names(self) -> list[str]:
        return self.card.names

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.card.preprocess)


def find_artifact(path: str | Path) -> Artifact:
    """Resolve a run folder, a pipeline run folder, a weights file, a model.json, an exported
    folder (`export --format hf`, or any timm config.json + model.safetensors) or
    `hf-hub:user/repo[@revision]` (downloaded to huggingface_hub's cache) to an Artifact.

    Example:
        >>> find_artifact("runs/pets").weights_path  # doctest: +SKIP
        PosixPath('runs/pets/best.safetensors')
    """
    from . import hub

    if hub.is_hub_ref(path):
        path = hub.download(str(path))
    path = Path(path).expanduser()
    if path.is_dir():
        meta_path = path / MODEL_JSON
        timm_card = None if meta_path.is_file() else hub.timm_card(path)
        if timm_card is not None:  # a timm folder without model.json: its config.json says it all
            return Artifact(meta_path=path / hub.CONFIG_JSON, weights_path=path / timm_card.weights,
                            card=timm_card)
        if not meta_path.is_file():
            raise WeightsError(_no_model_json(path))
        weights = None
    elif path.is_file() and path.name.endswith(".json"):
        meta_path, weights = path, None
    elif path.is_file():
        meta_path, weights = path.parent / MODEL_JSON, path
        if not meta_path.is_file():
            raise WeightsError(
                f"{path}: no {MODEL_JSON} beside the weights, so the architecture, classes and "
                "preprocessing are unknown; pass the run folder that wrote them instead"
            )
    else:
        raise WeightsError(f"model not found: {path}; pass a run folder, a pipeline run folder or a "
                           f".safetensors file with {MODEL_JSON} beside it")
    card = read_model_card(meta_path)
    if weights is None:
        weights = meta_path.parent / card.weights
    if not weights.is_file():
        raise WeightsError(f"{meta_path}: its weights file {weights} is missing; the run may not have "
                           "finished its first epoch")
    return Artifact(meta_path=meta_path, weights_path=weights, card=card)


def _no_model_json(folder: Path) -> str:
    """Name the stage folders to use when a pipeline has not written its final model yet."""
    stages = sorted(p.parent for p in folder.glob(f"stages/*/{MODEL_JSON}"))
    if (folder / MANIFEST).is_file() or stages:
        shown = ", ".join(str(s) for s in stages[:5]) or "none yet"
        return (f"{folder}: the pipeline has not written its final {MODEL_JSON} (not finished?); "
                f"load one of its finished stages instead: {shown}")
    return (f"{folder}: no {MODEL_JSON} found; is it a stagewise run folder? It is written after "
            "the first epoch of `stagewise train`")


def build_network(artifact: Artifact, module: nn.Module | None = None) -> nn.Module:
    """The timm model of `artifact` with its weights loaded (strictly), in eval mode, no grads.
    `module`: a fresh instance of the network a run was given as an object (models/user.py)."""
    from ..models import EmbeddingSpec, HeadSpec, build_model, load_state_dict_file
    from ..models.user import adopt_module, is_user_architecture, rebuild_hint

    if module is not None or is_user_architecture(artifact.architecture):
        if module is None:
            raise WeightsError(f"{artifact.meta_path}: {rebuild_hint(artifact.architecture)}")
        adopt_module(module, artifact.class_ids, artifact.card.head.get("path"))
        return _load_strict(module, load_state_dict_file(artifact.weights_path).state_dict, artifact)
    embed = artifact.meta.get("task") == "embed"
    # build_model constructs the network exactly as training did (e.g. a ViT's img_size); an
    # embedding head without its training loss (whose class centres inference has no use for).
    bundle = build_model(artifact.architecture, artifact.class_ids,
                         image_size=artifact.preprocess.image_size, class_names=artifact.class_names,
                         head=HeadSpec.from_mapping(artifact.meta),
                         embedding=EmbeddingSpec.from_mapping(artifact.meta.get("embedding") or {})
                         if embed else None, train_embedding=False)
    state = load_state_dict_file(artifact.weights_path).state_dict
    if embed:
        state = {k: v for k, v in state.items() if ".objective." not in k}
    return _load_strict(bundle.model, state, artifact)


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], artifact: Artifact) -> nn.Module:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing/unexpected keys and shape mismatches alike
        detail = " ".join(str(exc).split())[:300]
        raise WeightsError(
            f"{artifact.weights_path}: does not fit {artifact.architecture} with "
            f"{len(artifact.class_ids)} classes as described by {artifact.meta_path} ({detail})"
        ) from None
    model.eval()
    model.requires_grad_(False)
    return model


def load(path: str | Path, device: str | None = None, model: nn.Module | None = None) -> Classifier:
    """A ready Classifier from a run folder, a pipeline run folder, a weights file, an exported
    folder or an `hf-hub:` id (see find_artifact).

    A run whose network was passed to `stagewise.train` as an object needs `model`: a fresh
    instance of that class (its classifier is resized as training did, then the weights load).

    Example:
        >>> import stagewise
        >>> clf = stagewise.load("runs/pets")  # doctest: +SKIP
        >>> clf.predict(["a.jpg", "b.jpg"], top_k=3)  # doctest: +SKIP
        >>> stagewise.load("hf-hub:your-name/pets-resnet18")  # doctest: +SKIP
    """
    from .classifier import Classifier

    chosen = pick_device(device)
    artifact = find_artifact(path)
    return Classifier(build_network(artifact, model), artifact.class_ids, artifact.class_names,
                      artifact.preprocess, device=chosen, source=artifact.weights_path,
                      meta=artifact.meta)


def pick_device(device: str | None) -> torch.device:
    """`device` checked against this machine (None: CUDA when there is one, else the CPU)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {device!r}: not a device name; use cpu, cuda, cuda:N or mps") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: this machine has no usable CUDA GPU; use cpu")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available here; use cpu")
    return chosen
