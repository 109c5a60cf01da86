"""Procedurally generated shape images in levels of growing difficulty (the built-in curriculum).

Level 1: 4 shape classes, 32 px, clean. Level 2: 8 classes, 48 px, colour/size/rotation variation
and clutter. Level 3: 12 classes, 64 px, textured backgrounds and noise. Class ids are shared
across levels (a level's classes include the previous level's), so head handoff matters.
Deterministic by seed: every image is drawn from its own generator seeded by (seed, level, split, i).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

Mask = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]


def _triangle(u, v, rho, r):
    return (v >= -r) & (v <= 0.6 * r) & (np.abs(u) <= (v + r) * 0.56)


SHAPES: dict[str, Mask] = {
    "circle": lambda u, v, rho, r: rho < r,
    "square": lambda u, v, rho, r: np.maximum(np.abs(u), np.abs(v)) < 0.8 * r,
    "triangle": _triangle,
    "cross": lambda u, v, rho, r: ((np.abs(u) < 0.28 * r) & (np.abs(v) < r))
    | ((np.abs(v) < 0.28 * r) & (np.abs(u) < r)),
    "ring": lambda u, v, rho, r: (rho < r) & (rho > 0.6 * r),
    "diamond": lambda u, v, rho, r: np.abs(u) + np.abs(v) < r,
    "star": lambda u, v, rho, r: rho < r * (0.45 + 0.55 * np.abs(np.cos(2.5 * np.arctan2(v, u)))),
    "hbar": lambda u, v, rho, r: (np.abs(u) < r) & (np.abs(v) < 0.3 * r),
    "vbar": lambda u, v, rho, r: (np.abs(v) < r) & (np.abs(u) < 0.3 * r),
    "ellipse": lambda u, v, rho, r: (u / r) ** 2 + (v / (0.5 * r)) ** 2 < 1,
    "semicircle": lambda u, v, rho, r: (rho < r) & (v > 0),
    "frame": lambda u, v, rho, r: (np.maximum(np.abs(u), np.abs(v)) < 0.85 * r)
    & (np.maximum(np.abs(u), np.abs(v)) > 0.55 * r),
}
CLASS_ORDER = list(SHAPES)


@dataclass(frozen=True)
class Level:
    name: str
    classes: int
    size: int
    train_per_class: int
    val_per_class: int
    color_jitter: bool
    scale_range: tuple[float, float]
    max_rotation: float  # degrees; kept small so square/diamond and hbar/vbar stay distinct
    clutter: int
    texture: bool
    noise: float


CURRICULUM = (
    Level("level1", 4, 32, 60, 20, False, (0.55, 0.7), 0.0, 0, False, 0.0),
    Level("level2", 8, 48, 60, 20, True, (0.4, 0.75), 20.0, 2, False, 0.04),
    Level("level3", 12, 64, 50, 20, True, (0.35, 0.8), 25.0, 3, True, 0.08),
)
PRESETS = {"curriculum": CURRICULUM}


def render(shape: str, level: Level, rng: np.random.Generator) -> np.ndarray:
    """One uint8 HxWx3 image of `shape` drawn under `level`'s variation."""
    n = level.size
    yy, xx = _grid(n)
    img = _background(level, rng, xx, yy)
    for _ in range(level.clutter):
        cx, cy = rng.uniform(-0.9, 0.9, size=2)
        blob = (xx - cx) ** 2 + (yy - cy) ** 2 < rng.uniform(0.004, 0.012)
        img[blob] = rng.uniform(0, 1, size=3)
    r = rng.uniform(*level.scale_range)
    cx, cy = rng.uniform(-0.15, 0.15, size=2) * (1 - r)
    theta = np.deg2rad(rng.uniform(-level.max_rotation, level.max_rotation))
    c, s = np.cos(theta), np.sin(theta)
    u = c * (xx - cx) + s * (yy - cy)
    v = -s * (xx - cx) + c * (yy - cy)
    mask = SHAPES[shape](u, v, np.sqrt(u**2 + v**2), r)
    color = rng.uniform(0.55, 1.0, size=3) * rng.permutation([1.0, rng.uniform(0.3, 1), rng.uniform(0, 0.6)]) \
        if level.color_jitter else np.array([0.95, 0.95, 0.95])
    img[mask] = color
    if level.noise:
        img = img + rng.normal(0, level.noise, size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@lru_cache(maxsize=8)
def _grid(n: int) -> np.ndarray:
    grid = np.mgrid[0:n, 0:n].astype(np.float32) / (n - 1) * 2 - 1
    grid.flags.writeable = False  # shared between calls
    return grid


def _background(level: Level, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    n = xx.shape[0]
    if not level.color_jitter:
        return np.full((n, n, 3), 0.15, dtype=np.float32)
    base = rng.uniform(0.0, 0.45, size=3).astype(np.float32)
    img = np.broadcast_to(base, (n, n, 3)).copy()
    if level.texture:
        freq, phase = rng.uniform(3, 9), rng.uniform(0, 2 * np.pi)
        angle = rng.uniform(0, np.pi)
        wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) * np.pi + phase)
        img += (0.12 * wave)[..., None] * rng.uniform(0.3, 1.0, size=3)
    return img


def generate(out: Path, preset: str = "curriculum", seed: int = 0, scale: float = 1.0) -> list[Path]:
    """Write every level as `out/<level>/{train,val}/<class>/<i>.png`; returns the level folders.

    `scale` multiplies the images per class (e.g. 0.25 for quick tests).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown synth preset '{preset}'; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    folders = []
    for li, level in enumerate(PRESETS[preset]):
        folder = out / level.name
        counts = {"train": max(2, round(level.train_per_class * scale)),
                  "val": max(1, round(level.val_per_class * scale))}
        for si, (split, per_class) in enumerate(counts.items()):
            for ci, shape in enumerate(CLASS_ORDER[: level.classes]):
                d = folder / split / shape
                d.mkdir(parents=True, exist_ok=True)
                for i in range(per_class):
                    rng = np.random.default_rng([seed, li, si, ci, i])
                    Image.fromarray(render(shape, level, rng)).save(d / f"{i:05d}.png", compress_level=1)
        folders.append(folder)
    return folders
