"""A trained model ready to use: images in, predictions (or embeddings) out.

Inputs may be file paths, PIL images, tensors or a list mixing them. A float tensor is taken as
already preprocessed (normalised, shape (3, H, W) or (N, 3, H, W)), e.g. the output of
`clf.transform`; a uint8 tensor is taken as raw RGB pixels (3, H, W) and preprocessed here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import nn

from ..data.images import BAD_IMAGE_ERRORS, load_rgb, to_rgb
from ..data.transforms import Preprocess, build_transform
from ..errors import DataError
from .views import TTA, ViewTransform, parse_tta, view_shape

if TYPE_CHECKING:
    from .retrieval import Match, Retriever

ImageInput = str | Path | Image.Image | torch.Tensor
Inputs = ImageInput | Sequence[ImageInput]


@dataclass(frozen=True)
class Candidate:
    """One class of a top-k list."""

    label: int  # row of the classifier (index into the model's class list)
    class_id: str
    name: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """The most likely class of one image and the top-k behind it (best first)."""

    label: int
    class_id: str
    name: str
    probability: float
    top_k: tuple[Candidate, ...]
    source: str | None = None  # the file path, when the input was one

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Classifier:
    """A model in eval mode with its class list and preprocessing.

    Example:
        >>> clf = stagewise.load("runs/pets")  # doctest: +SKIP
        >>> clf.predict("cat.jpg").name  # doctest: +SKIP
        'Abyssinian'
    """

    def __init__(self, model: nn.Module, class_ids: list[str], class_names: list[str],
                 preprocess: Preprocess, device: str | torch.device = "cpu",
                 source: Path | None = None, meta: dict[str, Any] | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.class_ids = list(class_ids)
        self.class_names = list(class_names)
        self.preprocess = preprocess
        self.transform = build_transform(preprocess, "none", training=False)
        self.source = source
        self.meta = dict(meta or {})  # model.json as read: architecture, metrics, versions

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def is_embedding(self) -> bool:
        """Whether the model maps images to vectors (a task: embed run) rather than classes."""
        return self.meta.get("task") == "embed"

    def require_classes(self, what: str) -> None:
        """Refuse `what` (predict, score...) for an embed run: it has vectors, not classes. Every
        path to class probabilities passes here (single views, multi-view TTA, ensembles)."""
        if self.is_embedding:
            raise DataError(f"{self.source}: an embed run (task: embed) maps images to vectors and "
                            f"has no classes to {what}; use embed, index/search or evaluate --retrieval")

    def __repr__(self) -> str:
        return (f"Classifier({self.source or 'in memory'}: {self.num_classes} classes, "
                f"{self.preprocess.image_size}px, {self.device})")

    def predict(self, inputs: Inputs, top_k: int = 5, batch_size: int = 32,
                tta: str | TTA | None = None) -> Prediction | list[Prediction]:
        """One Prediction for one image; a list for a list (or a (N, 3, H, W) tensor)."""
        self.require_classes("predict")
        if top_k < 1:
            raise DataError(f"top_k must be at least 1, got {top_k}")
        preds: list[Prediction] = []
        for batch, sources in self._batches(inputs, batch_size, tta):
            preds += self.predictions(self.probabilities(batch, tta), top_k, sources)
        return preds[0] if _is_single(inputs) else preds

    def embed(self, inputs: Inputs, batch_size: int = 32) -> torch.Tensor:
        """Pre-logits features (an embed run: its L2-normalised embeddings): (D,) for one image,
        (N, D) for several; for retrieval or re-id."""
        chunks = []
        features = self.model if self.is_embedding else partial(pre_logits, self.model)
        with torch.inference_mode():
            for batch, _ in self._batches(inputs, batch_size):
                chunks.append(features(batch.to(self.device)).float().cpu())
        out = torch.cat(chunks) if chunks else torch.empty(0)
        return out[0] if _is_single(inputs) else out

    def index(self, gallery: str | Path | Sequence[str | Path], batch_size: int = 32,
              num_workers: int | None = None) -> Retriever:
        """A searchable gallery of files, folders or globs (`stagewise[retrieval]`); images in
        `gallery/<identity>/` are labelled with the identity."""
        from .retrieval import Retriever, embed_items, labelled_inputs

        items, _ = labelled_inputs([gallery] if isinstance(gallery, (str, Path)) else gallery)
        return Retriever(embed_items(self, items, batch_size, num_workers), clf=self)

    def search(self, queries: Inputs, gallery: Retriever, top_k: int = 5) -> list[list[Match]]:
        """The top_k nearest gallery images (cosine distance) of each query image."""
        return gallery.search(queries, top_k)

    def input_transform(self, tta: str | TTA | None = None) -> Callable[[Image.Image], torch.Tensor]:
        """What the loaders apply to each decoded image: (3, S, S), or (V, 3, S, S) when the tta
        mode needs the image itself (crops, scales)."""
        mode = parse_tta(tta)
        return ViewTransform(self.preprocess, mode) if mode.multi_view else self.transform

    def input_shape(self, tta: str | TTA | None = None) -> tuple[int, ...]:
        return view_shape(self.preprocess, parse_tta(tta))

    def logits(self, batch: torch.Tensor, tta: str | TTA | None = None) -> torch.Tensor:
        """Raw scores (on the model's device) of a preprocessed batch (N, 3, H, W); with
        tta='flip', averaged with those of the mirrored batch."""
        self.require_classes("score")
        mode = parse_tta(tta)
        if mode.multi_view:
            raise DataError(f"tta '{mode.mode}' averages probabilities, not logits; use probabilities()")
        with torch.inference_mode():
            x = batch.to(self.device)
            out = self.model(x).float()
            if mode.mode == "flip":
                out = (out + self.model(x.flip(3)).float()) / 2
        return out

    def probabilities(self, batch: torch.Tensor, tta: str | TTA | None = None) -> torch.Tensor:
        """Softmax (on the CPU) of a batch from `input_transform(tta)`; over the views of a
        multi-view tta, the mean of each view's probabilities."""
        self.require_classes("score")
        mode = parse_tta(tta)
        if not mode.multi_view:
            return self.logits(batch, mode).softmax(dim=1).cpu()
        if batch.ndim != 5 or batch.shape[1] != mode.views:
            raise DataError(f"tta '{mode.mode}' needs batches of {mode.views} views per image "
                            f"(N, {mode.views}, 3, H, W) from input_transform(); got {tuple(batch.shape)}")
        n, v = batch.shape[:2]
        with torch.inference_mode():
            out = self.model(batch.flatten(0, 1).to(self.device)).float().softmax(dim=1)
        return out.view(n, v, -1).mean(dim=1).cpu()

    def predictions(self, probs: torch.Tensor, top_k: int,
                    sources: Sequence[str | None]) -> list[Prediction]:
        """Turn a (N, C) probability matrix into Predictions."""
        return to_predictions(probs, top_k, sources, self.class_ids, self.class_names)

    def to_tensor(self, item: ImageInput, tta: str | TTA | None = None) -> torch.Tensor:
        """One input as a preprocessed (3, H, W) float tensor ((V, 3, H, W) for multi-view tta)."""
        if isinstance(item, torch.Tensor) and item.is_floating_point():
            if item.ndim != 3 or item.shape[0] != 3:
                raise DataError(f"expected an image tensor of shape (3, H, W), got {tuple(item.shape)}")
            if parse_tta(tta).multi_view:
                raise DataError(f"tta '{tta}' crops the decoded image; pass files, PIL images or "
                                "uint8 tensors, not preprocessed float tensors")
            return item.float()
        return self.input_transform(tta)(to_pil(item))

    def _batches(self, inputs: Inputs, batch_size: int,
                 tta: str | TTA | None = None) -> Iterator[tuple[torch.Tensor, list]]:
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 4 and inputs.is_floating_point() \
                and not parse_tta(tta).multi_view:
            # Preloaded, preprocessed batches go through without a per-image Python loop.
            for i in range(0, inputs.shape[0], batch_size):
                block = inputs[i:i + batch_size]
                yield block, [None] * block.shape[0]
            return
        items = _as_list(inputs)
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            yield torch.stack([self.to_tensor(x, tta) for x in chunk]), sources_of(chunk)


def to_pil(item: ImageInput) -> Image.Image:
    """A path, PIL image or uint8 (3, H, W) tensor as an RGB PIL image (float tensors are already
    preprocessed and cannot go back)."""
    if isinstance(item, (str, Path)):
        try:
            return load_rgb(item)
        except BAD_IMAGE_ERRORS as exc:
            raise DataError(f"{item}: cannot read image ({type(exc).__name__}: {exc})") from None
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != 3 or item.dtype != torch.uint8:
            raise DataError(f"expected a uint8 image tensor of shape (3, H, W), got "
                            f"{item.dtype} {tuple(item.shape)}")
        from torchvision.transforms.functional import to_pil_image

        return to_pil_image(item)
    raise DataError(f"cannot classify a {type(item).__name__}; pass a path, a PIL image or a tensor")


def sources_of(items: Sequence[ImageInput]) -> list[str | None]:
    return [str(x) if isinstance(x, (str, Path)) else None for x in items]


def to_predictions(probs: torch.Tensor, top_k: int, sources: Sequence[str | None],
                   class_ids: list[str], class_names: list[str]) -> list[Prediction]:
    """Predictions of a (N, C) probability matrix (one .tolist() per batch, not per item)."""
    values, indices = probs.topk(min(top_k, len(class_ids)), dim=1)
    out = []
    for vals, idxs, src in zip(values.tolist(), indices.tolist(), sources, strict=True):
        cands = tuple(Candidate(i, class_ids[i], class_names[i], v) for v, i in zip(vals, idxs, strict=True))
        best = cands[0]
        out.append(Prediction(best.label, best.class_id, best.name, best.probability, cands, src))
    return out


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the classifier reads: timm's `forward_head(pre_logits=True)`; for networks
    without it (torchvision's), the input of the classifier layer, caught by a hook."""
    if hasattr(model, "forward_head") and hasattr(model, "forward_features"):
        timm_model: Any = model  # timm's methods, which nn.Module's typing cannot see
        return timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
    from ..models.head import head_paths

    caught: list[torch.Tensor] = []
    head = model.get_submodule(head_paths(model)[0])
    handle = head.register_forward_pre_hook(lambda _m, args: caught.append(args[0]))
    try:
        model(x)  # the logits are thrown away: one pass is simpler than re-running half a network
    finally:
        handle.remove()
    feats = caught[-1]
    # A conv classifier (SqueezeNet) reads a feature map: average it, as its own pooling would.
    return feats.mean(dim=(2, 3)) if feats.ndim == 4 else feats.flatten(1)


def _is_single(inputs: Inputs) -> bool:
    if isinstance(inputs, torch.Tensor):
        return inputs.ndim == 3
    return isinstance(inputs, (str, Path, Image.Image))


def _as_list(inputs: Inputs) -> list[ImageInput]:
    if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
        return list(inputs.unbind(0))
    if _is_single(inputs):
        return [inputs]  # type: ignore[list-item]
    if isinstance(inputs, Sequence):
        return list(inputs)
    raise DataError(f"cannot classify a {type(inputs).__name__}; pass a path, a PIL image, a tensor "
                    "or a list of them")
