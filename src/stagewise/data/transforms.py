"""Train and eval transforms from the model's pretrained config, via timm's transform factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchvision import transforms as T


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


def build_transform(pre: Preprocess, augmentation: str, training: bool) -> T.Compose:
    """timm's transform for training (`augmentation` preset) or evaluation (resize + center crop)."""
    from timm.data import create_transform

    common = {"interpolation": pre.interpolation, "mean": pre.mean, "std": pre.std}
    if not training or augmentation == "none":
        return create_transform(pre.image_size, is_training=False, crop_pct=pre.crop_pct, **common)
    if augmentation not in PRESETS:
        raise ValueError(f"unknown augmentation '{augmentation}'; choose one of none, {', '.join(PRESETS)}")
    return create_transform(pre.image_size, is_training=True, **PRESETS[augmentation], **common)
