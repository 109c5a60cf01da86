"""Cached features: a probe runs its frozen backbone once per image (and per augmented view), not
once per image per epoch, then trains the head on the pooled features.

With augmentation off this is exact: BatchNorm is frozen and in eval mode under a probe, so the
backbone maps an image to the same features every epoch, and the head sees what it would have
seen. With augmentation on, `feature_views: K` renders K augmented views of each image (view v
with the augmentation draws of epoch v) and epoch e trains on view e mod K: a probe then sees K
different augmentations instead of one per epoch. timm has no such helper (its feature
extraction returns feature maps, not a training set), hence this module.
"""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.index import Samples
from ..data.loader import _EPOCH_STRIDE, ImageDataset, SampleDataset, collate_skip_bad
from ..errors import ConfigError
from ..kinds import strategy


class FeatureHeadModel(Protocol):
    """A timm classifier split the timm way (see `has_feature_head`)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...

    def get_classifier(self) -> nn.Module: ...


def _feature_head(model: nn.Module) -> FeatureHeadModel:
    """`model` seen as a timm classifier: cache: features runs only on models `has_feature_head`
    accepts (check_features_supported refuses the others first)."""
    return cast(FeatureHeadModel, model)


class HeadOnFeatures(nn.Module):
    """What a probe trains, on pooled features: the model's dropout before its classifier, then
    the classifier itself (the same Parameters, so the optimizer and checkpoints see no change)."""

    def __init__(self, model: nn.Module, drop_rate: float) -> None:
        super().__init__()
        self.classifier = _feature_head(model).get_classifier()
        self.drop = nn.Dropout(drop_rate)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(features))


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's pre-logits features: what the classifier of `model` takes as input."""
    timm_model = _feature_head(model)
    return timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)


class FeatureDataset(SampleDataset):
    """Features of one split, `views` x images x dim; the sampler's key carries the epoch, and
    epoch e reads view e mod views (a bad image stays bad in every view)."""

    def __init__(self, features: torch.Tensor, samples: Samples, bad: list[bool]) -> None:
        self.features, self.samples, self.bad = features, samples, bad

    def __len__(self) -> int:
        return self.features.shape[1]

    def __getitem__(self, key: int) -> tuple[Any, Any]:
        epoch, i = divmod(int(key), _EPOCH_STRIDE)
        if self.bad[i]:
            return None, self.samples.describe(i)
        return self.features[epoch % self.features.shape[0], i], self.samples.labels[i]


def has_feature_head(model: nn.Module) -> bool:
    """Whether `model` splits into pooled features and a classifier the timm way."""
    return all(hasattr(model, name) for name in ("forward_features", "forward_head", "get_classifier"))


def check_features_supported(cfg: Any, world: int, model: nn.Module) -> None:
    """cache: features trains the head alone; say which settings it cannot honour, and why."""
    problems = []
    if not has_feature_head(model):
        problems.append(f"model '{cfg.model}' does not split into features and a classifier the timm "
                        "way (torchvision builds); use cache: memory")
    if not strategy(cfg.strategy).head_only:
        problems.append(f"strategy '{cfg.strategy}' trains the backbone too (features would go stale); "
                        "use strategy: probe, or cache: memory")
    if cfg.mixup or cfg.cutmix:
        problems.append("mixup/cutmix mix images, not features; set them to 0 or use cache: memory")
    if cfg.ema:
        problems.append("ema averages the whole network; drop ema or use cache: memory")
    if cfg.train_bn:
        problems.append("train_bn trains the backbone's BatchNorm, so its features change; drop one")
    if cfg.progressive_resize or cfg.progressive:
        problems.append("progressive_resize/progressive change the images every epoch; drop one of them")
    if world > 1:
        problems.append("several processes would each extract every feature; run a probe with "
                        "cached features in one process")
    if problems:
        raise ConfigError("cache: features: " + "; ".join(problems))


@torch.inference_mode()
def extract(model: nn.Module, dataset: ImageDataset, views: int, batch_size: int, workers: int,
            device: torch.device, channels_last: bool = False) -> tuple[torch.Tensor, list[bool]]:
    """Pooled features of every image of `dataset` for each of `views` epochs' augmentations:
    (views, N, dim) on the CPU, and which images could not be decoded."""
    model.eval()
    n, rows, bad = len(dataset), [], [False] * len(dataset)
    for view in range(views):
        keys = [view * _EPOCH_STRIDE + i for i in range(n)]
        loader = DataLoader(_Keyed(dataset, keys), batch_size=batch_size, num_workers=workers,
                            collate_fn=_collate_with_index)
        out: list[torch.Tensor | None] = [None] * n
        for idx, batch in loader:
            for i in idx[len(batch.images):]:  # indices of the images that failed to decode
                bad[i] = True
            if not len(batch.images):
                continue
            x = batch.images.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            feats = pooled_features(model, x).float().cpu()
            for i, f in zip(idx, feats, strict=False):
                out[i] = f
        dim = next(f for f in out if f is not None).shape[0] if any(f is not None for f in out) else 0
        rows.append(torch.stack([f if f is not None else torch.zeros(dim) for f in out]))
    return torch.stack(rows), bad


class _Keyed(Dataset):
    """`dataset` at the given sampler keys, each item tagged with its image index."""

    def __init__(self, dataset: ImageDataset, keys: list[int]) -> None:
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, j: int) -> tuple[int, Any]:
        return j, self.dataset[self.keys[j]]


def _collate_with_index(items: list) -> tuple[list[int], Any]:
    """The batch of good images first, then the indices of bad ones after those of good ones."""
    good = [j for j, item in items if item[0] is not None]  # (x, label[, sample index])
    bad = [j for j, item in items if item[0] is None]
    return good + bad, collate_skip_bad([item for _, item in items])
