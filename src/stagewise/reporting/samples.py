"""Images for the report: predictions of the trained model on validation images, and what the
training augmentation does to a few training images.

The model is rebuilt from model.json (architecture, class list, preprocessing) and the run's
safetensors weights by `stagewise.load`, exactly as a user of the artifact would load it; nothing
comes from the training process, so `stagewise report` works on a copied run folder.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import defaults
from ..data import AugmentPlan, Preprocess, Samples, build_transform, load_dataset
from ..data.folder import load_split
from ..data.identities import read_identities
from ..data.images import BAD_IMAGE_ERRORS, load_rgb
from ..kinds import embeds
from ..runfolder import split_file
from .history import ReportError


@dataclass
class Predicted:
    """One validation image and what the model made of it."""

    index: int  # position in the split's Samples
    true: int
    pred: int
    confidence: float  # softmax probability of `pred`

    @property
    def correct(self) -> bool:
        return self.true == self.pred


def load_model(weights: Path) -> tuple[nn.Module, Preprocess]:
    """The model of a run (weights with model.json beside them) in eval mode on the CPU, loaded
    as a user of the artifact would load it (`stagewise.load`)."""
    from ..inference import load

    clf = load(weights, device="cpu")
    return clf.model, clf.preprocess


def split_samples(config: dict[str, Any], run_dir: Path, split: str) -> tuple[Samples, list[str]]:
    """The images of `split` as the run used them (split.npz or an older split.json, when saved), with the ids their
    labels index (class ids; an embed stage's validation identities)."""
    if "data" not in config:
        raise ReportError(f"{run_dir / 'config.yaml'} has no 'data' key")
    if str(config["data"]).startswith("python:"):
        raise ReportError(f"the images were datasets passed to stagewise.train ({config['data']}), "
                          "which a report cannot read back from the run folder")
    read = read_identities if embeds(config.get("task")) else partial(
        load_dataset, fmt=config.get("format", "auto"))
    index = read(Path(config["data"]), val_fraction=float(config.get("val_fraction", defaults.VAL_FRACTION)),
                 seed=int(config.get("seed", defaults.SEED)))
    if (saved := split_file(run_dir)) is not None:
        index = load_split(index, saved)
    if split not in index.splits or len(index.splits[split]) == 0:
        raise ReportError(f"{config['data']}: no '{split}' images")
    # An embed stage's validation identities are not its classes: its labels index eval_ids.
    ids = index.eval_ids if split != "train" and index.eval_ids is not None else index.class_ids
    return index.splits[split], ids


def spread(n: int, limit: int) -> list[int]:
    """Up to `limit` indices spread evenly over range(n), so every class is represented."""
    if n <= limit or limit <= 1:
        return list(range(min(n, limit)))
    return sorted({int(round(i * (n - 1) / (limit - 1))) for i in range(limit)})


@torch.inference_mode()
def predict(model: nn.Module, pre: Preprocess, samples: Samples, indices: list[int],
            batch_size: int = 32) -> list[Predicted]:
    """Predictions for `samples[indices]` with the evaluation transform; bad files are skipped."""
    transform = build_transform(pre, "none", False)
    out: list[Predicted] = []
    for start in range(0, len(indices), batch_size):
        kept, x = decoded(samples, indices[start:start + batch_size], transform)
        if x is None:
            continue
        probs = model(x).float().softmax(dim=1)
        conf, pred = probs.max(dim=1)
        out += [Predicted(i, samples.labels[i], int(p), float(c))
                for i, p, c in zip(kept, pred.tolist(), conf.tolist(), strict=True)]
    return out


def decoded(samples: Samples, indices: list[int],
            transform: Callable) -> tuple[list[int], torch.Tensor | None]:
    """The readable ones of `samples[indices]`, transformed and stacked (None if none is)."""
    kept, xs = [], []
    for i in indices:
        try:
            xs.append(transform(_image(samples, i)))
            kept.append(i)
        except BAD_IMAGE_ERRORS:
            continue
    return kept, torch.stack(xs) if xs else None


def one_per_class(samples: Samples, limit: int) -> list[int]:
    """The first image of up to `limit` classes, the classes spread over the class list."""
    first: dict[int, int] = {}
    for i, label in enumerate(samples.labels):
        first.setdefault(label, i)
    labels = sorted(first)
    return [first[labels[k]] for k in spread(len(labels), limit)]


def pick_examples(preds: list[Predicted], wrong: int = 8, right: int = 8) -> list[Predicted]:
    """The most confident mistakes first (the instructive ones), then confident correct ones.

    When there are fewer mistakes than `wrong`, more correct images fill the grid.
    """
    bad = sorted((p for p in preds if not p.correct), key=lambda p: -p.confidence)[:wrong]
    good = [p for p in preds if p.correct]
    good = [good[i] for i in spread(len(good), right + wrong - len(bad))] if good else []
    return bad + good


def thumbnail(samples: Samples, i: int, size: int = 128) -> np.ndarray:
    img = _image(samples, i)
    img.thumbnail((size, size))
    return np.asarray(img)


def augmentation_views(samples: Samples, pre: Preprocess, augmentation: str | AugmentPlan, images: int = 4,
                       views: int = 5, seed: int = 0) -> list[list[np.ndarray]]:
    """Per image: the evaluation view, then `views` training views, as HxWx3 uint8 arrays."""
    eval_tf = build_transform(pre, "none", False)
    train_tf = build_transform(pre, augmentation, True)
    rows = []
    for n, i in enumerate(one_per_class(samples, images)):
        img = _image(samples, i)
        row = [_denormalise(eval_tf(img), pre)]
        for v in range(views):
            with _seeded(seed * 10_007 + n * 101 + v):
                row.append(_denormalise(train_tf(img), pre))
        rows.append(row)
    return rows


def _image(samples: Samples, i: int):
    if samples.arrays is not None:
        from PIL import Image

        return Image.fromarray(samples.arrays[i]).convert("RGB")
    return load_rgb(samples.paths[i])  # type: ignore[index]


def _denormalise(x: torch.Tensor, pre: Preprocess) -> np.ndarray:
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    img = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return (img * 255).round().astype(np.uint8)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Give the caller's python/numpy/torch RNG streams back untouched: a report written between
    pipeline stages must not shift the random numbers of the stage after it."""
    state = (random.getstate(), np.random.get_state())
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(state[0])
            np.random.set_state(state[1])


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python/numpy/torch for one augmentation draw, so the preview is repeatable."""
    with preserved_rng():
        random.seed(seed)
        np.random.seed(seed)
        torch.random.default_generator.manual_seed(seed)  # the CPU generator only, as the loader does
        yield
