"""Train and eval transforms from the model's pretrained config, via timm's transform factory."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Resampling filters timm's transforms know by name (timm.data.transforms.str_to_interp_mode).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Preprocess:
    """What a deployed model needs to see images as it saw them in training."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def as_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct,
                "resize": int(round(self.image_size / self.crop_pct)), "crop": "center"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(image_size=int(d["image_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   interpolation=d.get("interpolation", "bilinear"), crop_pct=float(d.get("crop_pct", 0.875)))


def resolve_preprocess(
    data_config: dict[str, Any], image_size: int | None, mean: Any = None, std: Any = None
) -> Preprocess:
    """The model's pretrained preprocessing, with the user's overrides applied."""
    size = image_size or int(data_config["input_size"][-1])
    return Preprocess(
        image_size=size,
        mean=tuple(mean or data_config.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(std or data_config.get("std", (0.229, 0.224, 0.225))),
        interpolation=data_config.get("interpolation", "bilinear"),
        crop_pct=float(data_config.get("crop_pct", 0.875)),
    )


# Augmentation presets, as keyword arguments of timm.data.create_transform.
PRESETS: dict[str, dict[str, Any]] = {
    "light": {"scale": (0.35, 1.0), "hflip": 0.5, "color_jitter": 0.0},
    "standard": {"scale": (0.08, 1.0), "hflip": 0.5, "color_jitter": 0.0},
    "strong": {"scale": (0.08, 1.0), "hflip": 0.5, "color_jitter": 0.0,
               "auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25, "re_mode": "pixel"},
}


@dataclass(frozen=True)
class AugmentPlan:
    """Training augmentation: a named preset, optionally with timm's `auto_augment`/`re_prob`
    knobs on top, or (`steps`) an explicit list of torchvision v2 transforms that replaces it."""

    preset: str = "standard"
    steps: tuple[Any, ...] = ()
    auto_augment: str | None = None
    re_prob: float | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AugmentPlan:
        """From a TrainConfig dump or a run's config.yaml (keys absent in older runs: defaults)."""
        return cls(preset=str(data.get("augmentation") or "standard"),
                   steps=tuple(data.get("augment") or ()), auto_augment=data.get("auto_augment"),
                   re_prob=data.get("re_prob"))

    @property
    def active(self) -> bool:
        return bool(self.steps) or self.preset != "none"

    @property
    def uses_numpy(self) -> bool:
        """timm's auto-augment policies draw from numpy as well as python's random (v2: torch)."""
        return not self.steps and (self.preset == "strong" or bool(self.auto_augment))

    def describe(self) -> str:
        return f"augment list ({len(self.steps)} steps)" if self.steps else self.preset

    def timm_kwargs(self) -> dict[str, Any]:
        """The preset's create_transform arguments with the user's timm knobs on top."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown augmentation '{self.preset}'; choose one of none, {', '.join(PRESETS)}")
        kwargs = dict(PRESETS[self.preset])
        if self.auto_augment is not None:
            kwargs["auto_augment"] = self.auto_augment
        if self.re_prob is not None:
            kwargs["re_prob"] = self.re_prob
        return kwargs


def build_transform(pre: Preprocess, augmentation: str | AugmentPlan, training: bool) -> Any:
    """timm's transform for training (`augmentation` preset), the user's v2 list, or evaluation
    (resize + center crop)."""
    from timm.data import create_transform

    plan = augmentation if isinstance(augmentation, AugmentPlan) else AugmentPlan(preset=augmentation)
    common: dict[str, Any] = {"interpolation": pre.interpolation, "mean": pre.mean, "std": pre.std}
    if not training or not plan.active:
        return create_transform(pre.image_size, is_training=False, crop_pct=pre.crop_pct, **common)
    if plan.steps:
        from .augment import build_augment

        resize = int(round(pre.image_size / pre.crop_pct))
        return build_augment(list(plan.steps), pre.image_size, pre.mean, pre.std, resize, pre.interpolation)
    return create_transform(pre.image_size, is_training=True, **plan.timm_kwargs(), **common)
