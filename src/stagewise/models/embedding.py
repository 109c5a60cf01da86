"""Embedding heads and metric losses: what an `embed` stage trains instead of a classifier.

The embedding head takes the classifier's place in the network, so strategies (a probe trains
the head), layer groups and cached features treat it as the head with no special case. It maps the
pooled features (through optional hidden layers) to an L2-normalised `dim`-vector. The metric loss,
from pytorch-metric-learning, lives inside the head as its `objective`: a loss with parameters
(ArcFace's class centres) is then trained with the head, saved in every checkpoint and restored on
resume exactly like any weight. Inference builds the head without it.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, WeightsError
from .head import ACTIVATIONS, HeadReport, HeadSpec, head_paths
from .weights import LoadedWeights

RETRIEVAL_HINT = "pip install 'stagewise[retrieval]'"


@dataclass(frozen=True)
class LossKind:
    """One `metric_loss` choice: its pytorch-metric-learning class and how it is used."""

    pml: str  # class name in pytorch_metric_learning.losses
    classes: bool  # a classification-style loss with class centres (num_classes x dim parameters)
    miner: str | None = None  # what `miner: auto` picks for it
    miner_args: tuple[tuple[str, Any], ...] = ()


METRIC_LOSSES: dict[str, LossKind] = {
    "arcface": LossKind("ArcFaceLoss", classes=True),
    "subcenter_arcface": LossKind("SubCenterArcFaceLoss", classes=True),
    "cosface": LossKind("CosFaceLoss", classes=True),
    # PML's documented pairing: semi-hard triplets at the loss's margin scale.
    "triplet": LossKind("TripletMarginLoss", classes=False, miner="triplet_margin",
                        miner_args=(("margin", 0.2), ("type_of_triplets", "semihard"))),
    "supcon": LossKind("SupConLoss", classes=False),
    "contrastive": LossKind("ContrastiveLoss", classes=False),
    "multi_similarity": LossKind("MultiSimilarityLoss", classes=False, miner="multi_similarity"),
}
MINERS: dict[str, str] = {
    "multi_similarity": "MultiSimilarityMiner", "triplet_margin": "TripletMarginMiner",
    "batch_hard": "BatchHardMiner", "pair_margin": "PairMarginMiner",
    "batch_easy_hard": "BatchEasyHardMiner",
}
# Set by stagewise itself, never by loss_args.
_OWN_ARGS = {"self", "num_classes", "embedding_size"}


def require_pml() -> Any:
    """pytorch_metric_learning, or a ConfigError naming the extra."""
    try:
        import pytorch_metric_learning
    except ImportError:
        raise ConfigError("task: embed trains with pytorch-metric-learning's losses, which is not "
                          f"installed: {RETRIEVAL_HINT}") from None
    return pytorch_metric_learning


def _pml_class(module: str, name: str) -> type[Any]:
    import importlib

    require_pml()
    return getattr(importlib.import_module(f"pytorch_metric_learning.{module}"), name)


def check_args(module: str, name: str, args: Mapping[str, Any], key: str) -> None:
    """Refuse an argument the PML class does not take, listing the ones it does."""
    params = inspect.signature(_pml_class(module, name).__init__).parameters
    valid = [p for p, v in params.items() if p not in _OWN_ARGS
             and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    unknown = [a for a in args if a not in valid]
    if unknown:
        raise ValueError(f"{key}: {name} takes no argument {', '.join(map(repr, unknown))}; valid: "
                         f"{', '.join(valid) or 'none'}")
    for arg, value in args.items():  # `margin: abc` would fail deep in numpy, mid-training
        default = params[arg].default
        number = isinstance(default, int | float) and not isinstance(default, bool)
        if number and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{key}.{arg}: {value!r} is not a number; {name}'s {arg} is one "
                             f"(default {default})")


def check_loss(loss: str, loss_args: Mapping[str, Any], dim: int) -> None:
    """Build the loss and run it once on a small batch of nearly collapsed embeddings of 4
    identities, where any working metric loss is positive and pushes them apart. A setting that
    raises, gives a non-finite loss, or no gradient (`temperature: 0`, a zero margin scale)
    would train nothing, silently: ValueError naming `loss_args` and the loss's defaults."""
    kind = METRIC_LOSSES[loss]
    cls = _pml_class("losses", kind.pml)
    extra = {"num_classes": 4, "embedding_size": dim} if kind.classes else {}
    params = inspect.signature(cls.__init__).parameters
    shown = ", ".join(f"{k}={v!r}" for k, v in loss_args.items())
    defaults = ", ".join(f"{k}={params[k].default!r}" for k in loss_args if k in params)
    fix = f"use values the loss documents (its defaults: {defaults})" if defaults else "check them"
    with torch.random.fork_rng(devices=[]):  # the caller's random streams stay as they were
        torch.manual_seed(0)
        raw = (torch.randn(1, dim) + 0.05 * torch.randn(8, dim)).requires_grad_()
        labels = torch.arange(4).repeat_interleave(2)
        try:
            value = cls(**extra, **loss_args)(nn.functional.normalize(raw, dim=1), labels)
            value.backward()
        except Exception as exc:  # noqa: BLE001 - whatever the loss raises, its arguments caused it
            raise ValueError(f"loss_args: {kind.pml}({shown}) fails on a sample batch: "
                             f"{type(exc).__name__}: {str(exc)[:200]}; {fix}") from None
    grad = raw.grad
    if not torch.isfinite(value) or grad is None or not torch.isfinite(grad).all():
        raise ValueError(f"loss_args: {kind.pml}({shown}) gives a non-finite loss or gradient on a "
                         f"sample batch, so the stage would stop at its first step; {fix}")
    if not grad.abs().sum() > 0:
        raise ValueError(f"loss_args: {kind.pml}({shown}) trains nothing: on a sample batch of 4 "
                         f"identities whose embeddings nearly coincide its loss is {float(value.detach()):.4f} "
                         f"with no gradient; {fix}")


@dataclass(frozen=True)
class EmbeddingSpec:
    """What an embed stage trains: the vector size, the metric loss and its miner."""

    dim: int = 128
    loss: str = "arcface"
    loss_args: dict[str, Any] = field(default_factory=dict)
    miner: str = "auto"
    miner_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EmbeddingSpec:
        """From a TrainConfig dump or a model.json (keys embedding_dim, metric_loss, ...)."""
        return cls(dim=int(data.get("embedding_dim") or 128), loss=str(data.get("metric_loss") or "arcface"),
                   loss_args=dict(data.get("loss_args") or {}), miner=str(data.get("miner") or "auto"),
                   miner_args=dict(data.get("miner_args") or {}))

    def as_dict(self) -> dict[str, Any]:
        return {"embedding_dim": self.dim, "metric_loss": self.loss, "loss_args": dict(self.loss_args),
                "miner": self.miner, "miner_args": dict(self.miner_args)}

    @property
    def kind(self) -> LossKind:
        return METRIC_LOSSES[self.loss]

    def resolved_miner(self) -> tuple[str | None, dict[str, Any]]:
        """(miner name or None, its arguments) after `auto`."""
        if self.miner == "none":
            return None, {}
        if self.miner == "auto":
            return self.kind.miner, {**dict(self.kind.miner_args), **self.miner_args}
        return self.miner, dict(self.miner_args)

    def describe(self) -> str:
        miner, _ = self.resolved_miner()
        args = ", ".join(f"{k}={v}" for k, v in self.loss_args.items())
        return (f"{self.loss}({args})" + (f" + {miner} miner" if miner else "")
                + f", {self.dim}-d embeddings")


class Objective(nn.Module):
    """The metric loss (and miner) of an embed stage: `objective(embeddings, labels) -> loss`."""

    def __init__(self, spec: EmbeddingSpec, num_classes: int) -> None:
        super().__init__()
        kind = spec.kind
        extra = {"num_classes": num_classes, "embedding_size": spec.dim} if kind.classes else {}
        self.loss = _pml_class("losses", kind.pml)(**extra, **spec.loss_args)
        miner, miner_args = spec.resolved_miner()
        self.miner = _pml_class("miners", MINERS[miner])(**miner_args) if miner else None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # fp32: PML casts its class centres to the embeddings' dtype, which under bf16 autocast
        # would quietly turn the trained parameters themselves into bf16.
        embeddings = embeddings.float()
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs)

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor | None:
        """Class logits (cosine to each class centre, scaled) for losses that have centres: a
        training accuracy over the training identities. None for pair and triplet losses."""
        get = getattr(self.loss, "get_logits", None)
        return get(embeddings.float()) if get is not None else None


class EmbeddingHead(nn.Module):
    """Pooled features -> [hidden layers] -> linear `dim` -> L2 normalisation.

    With `features_only` set it returns the normalised pooled features themselves: the starting
    point an embed stage measures at epoch 0 (plain pretrained features, not a random projection).
    """

    installed_head = True  # head.head_paths finds it: strategies and layer groups treat it as the head

    def __init__(self, in_features: int, spec: EmbeddingSpec, hidden: HeadSpec,
                 num_classes: int | None) -> None:
        super().__init__()
        blocks = []
        width = in_features
        for w in hidden.layers:
            blocks.append(nn.Sequential(OrderedDict(
                linear=nn.Linear(width, w), act=ACTIVATIONS[hidden.activation](),
                drop=nn.Dropout(hidden.dropout))))
            width = w
        self.hidden = nn.Sequential(*blocks)
        self.proj = nn.Linear(width, spec.dim)
        self.objective = Objective(spec, num_classes) if num_classes is not None else None
        self.features_only = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if not self.features_only:
            x = self.proj(self.hidden(x))
        out = nn.functional.normalize(x.float(), dim=1)
        if self.training and self.objective is not None:
            # The loss's parameters (class centres) are used after forward. DDP with
            # find_unused_parameters (on whenever a strategy freezes) marks parameters that
            # forward's output does not reach as unused, then fails when the loss's gradient
            # reaches them too. A zero term ties them in: autograd sums both uses into one
            # gradient, so DDP sees each parameter ready once, and the values are unchanged.
            out = out + 0.0 * sum(p.sum() for p in self.objective.parameters())
        return out


def install_embedding_head(model: nn.Module, spec: EmbeddingSpec, hidden: HeadSpec,
                           num_classes: int | None) -> EmbeddingHead:
    """Replace the classifier of `model` by an EmbeddingHead (with its objective when training)."""
    paths = head_paths(model)
    if len(paths) != 1:
        raise WeightsError(f"task: embed: the model has {len(paths)} classifiers ({', '.join(paths) or '-'}); "
                           "an embedding head replaces exactly one")
    old = model.get_submodule(paths[0])
    if not isinstance(old, nn.Linear):
        raise WeightsError(f"task: embed: the classifier {paths[0]} is a {type(old).__name__}; an "
                           "embedding head replaces a Linear classifier (pick another architecture)")
    head = EmbeddingHead(old.in_features, spec, hidden, num_classes)
    model.set_submodule(paths[0], head)
    return head


def embedding_head(model: nn.Module) -> EmbeddingHead | None:
    """The model's EmbeddingHead, or None for a classifier."""
    return next((m for m in model.modules() if isinstance(m, EmbeddingHead)), None)


@contextmanager
def pretrained_features(model: nn.Module) -> Iterator[None]:
    """Within the block the embedding head passes the pooled features through, normalised."""
    head = embedding_head(model)
    if head is None:
        yield
        return
    head.features_only = True
    try:
        yield
    finally:
        head.features_only = False


def adapt_embedding_head(model: nn.Module, incoming: LoadedWeights, class_ids: list[str],
                         mode: str | None) -> HeadReport:
    """Carry an incoming embedding head over when its shapes are this head's; the loss's class
    centres too when the class ids are the same, in the same order (they are rows per class).

    A classifier's head (a classify -> embed hand-off) has nothing to give: the backbone carries
    over (build.py) and the embedding head starts fresh. `head: reset` always starts fresh.
    """
    path = head_paths(model)[0]
    own = {k: v for k, v in model.state_dict().items() if k.startswith(f"{path}.")}
    src = incoming.state_dict
    body = {k: v for k, v in own.items() if ".objective." not in k}
    centres = {k: v for k, v in own.items() if ".objective." in k}
    fits = bool(body) and all(k in src and src[k].shape == v.shape for k, v in body.items())
    if mode == "keep" and not fits:
        raise WeightsError(f"head: 'keep' needs an embedding head of the same shapes in "
                           f"{incoming.source}; use head: match or reset")
    if mode == "reset" or not fits:
        why = "head: reset" if mode == "reset" else f"{incoming.source} has none of these shapes"
        return HeadReport(mode="reset", kept=0, total=len(class_ids),
                          embedding=f"new ({why})")
    same_ids = incoming.class_ids is not None and list(incoming.class_ids) == list(class_ids)
    take = dict(body)
    if centres and same_ids and all(k in src and src[k].shape == v.shape for k, v in centres.items()):
        take.update(centres)
    with torch.no_grad():
        for k, v in take.items():
            v.copy_(src[k])
    kept_centres = len(take) > len(body)
    note = "class centres kept" if kept_centres else (
        "class centres new (other identities)" if centres else "no class centres")
    return HeadReport(mode="keep" if kept_centres else "match", kept=len(class_ids) if kept_centres else 0,
                      total=len(class_ids), source=incoming.source,
                      embedding=f"kept from {incoming.source}; {note}")
