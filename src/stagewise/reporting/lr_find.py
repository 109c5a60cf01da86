"""The learning-rate range test (Smith 2015; fastai's `lr_find`): train for a few hundred steps
at most while the LR grows exponentially, watch the smoothed loss, suggest an LR.

Two suggestions: `steepest`, where the smoothed loss falls fastest per decade of LR, and
`valley`, fastai's choice from the longest stretch of falling loss (more robust to noise).
The model and optimizer are restored afterwards: the sweep changes nothing the caller holds.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from ..errors import ConfigError
from ..io import write_json
from .plots import new_figure, save_figure

MAX_STEPS = 1000


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    steepest: float | None
    valley: float | None
    stopped: str  # "completed" | "diverged" | "non-finite loss"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_range_test(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    accelerator: Any = None,
) -> LRFindResult:
    """Sweep the LR from `start_lr` to `end_lr` over `steps` optimizer steps.

    Param groups keep their LR ratios (layer decay, explicit group LRs): the swept value is the
    largest group's LR. Stops early once the smoothed loss exceeds `diverge` x its minimum.
    The model is used in the mode it is in (frozen BatchNorm layers may be in eval mode).
    """
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr-find: need 0 < start_lr < end_lr (got {start_lr} and {end_lr})")
    if not 5 <= steps <= MAX_STEPS:
        raise ConfigError(f"lr-find: steps must be between 5 and {MAX_STEPS} (got {steps})")
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_optim = copy.deepcopy(optimizer.state_dict())
    top = max(g["lr"] for g in optimizer.param_groups)
    ratios = [g["lr"] / top for g in optimizer.param_groups]
    gamma = (end_lr / start_lr) ** (1.0 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stopped, avg = "completed", 0.0
    try:
        for i, (x, y) in enumerate(itertools.islice(_batches(loader), steps)):
            lr = start_lr * gamma**i
            for g, r in zip(optimizer.param_groups, ratios, strict=True):
                g["lr"] = lr * r
            loss = _step(model, optimizer, criterion, x, y, accelerator)
            if not math.isfinite(loss):
                stopped = "non-finite loss"
                break
            avg = beta * avg + (1 - beta) * loss
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(avg / (1 - beta ** (i + 1)))  # bias correction, as in Adam
            if i >= 5 and smoothed[-1] > diverge * min(smoothed):
                stopped = "diverged"
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optim)
        optimizer.zero_grad(set_to_none=True)
    return LRFindResult(lrs=lrs, losses=losses, smoothed=smoothed, steepest=steepest_lr(lrs, smoothed),
                        valley=valley_lr(lrs, smoothed), stopped=stopped)


def _batches(loader: Iterable) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches for ever: the loader restarts (with a fresh shuffle) when it runs out."""
    for epoch in itertools.count():
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        empty = True
        for batch in loader:
            x, y = (batch.images, batch.labels) if hasattr(batch, "images") else batch
            if x.numel():
                empty = False
                yield x, y
        if empty:
            raise ConfigError("lr-find: the training loader yields no images")


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
          x: torch.Tensor, y: torch.Tensor, accelerator: Any) -> float:
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    with accelerator.autocast() if accelerator is not None else nullcontext():
        loss = criterion(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    if accelerator is not None:
        accelerator.backward(loss)
    else:
        loss.backward()
    optimizer.step()
    return float(loss.detach())


def steepest_lr(lrs: list[float], smoothed: list[float]) -> float | None:
    """The LR where the smoothed loss falls fastest per decade, before its minimum.

    The first tenth of the sweep is skipped: there the smoothing has not settled yet (and a
    fresh head's first losses are noise), so the minimum is also looked for after it.
    """
    start = max(1, len(smoothed) // 10)
    if len(smoothed) - start < 3:
        return None
    lowest = start + int(np.argmin(smoothed[start:]))
    if lowest - start < 2:
        return None
    # Slope over a window of ~1/10 of the sweep, not point to point: single-batch noise that the
    # smoothing let through must not decide the answer.
    w = max(1, len(smoothed) // 20)
    y, x = np.asarray(smoothed), np.log10(lrs)
    idx = np.arange(start, lowest + 1)
    lo, hi = np.maximum(idx - w, 0), np.minimum(idx + w, lowest)
    slope = (y[hi] - y[lo]) / np.maximum(x[hi] - x[lo], 1e-12)
    if slope.min() >= 0:
        return None
    return float(lrs[int(idx[np.argmin(slope)])])


def valley_lr(lrs: list[float], smoothed: list[float]) -> float | None:
    """fastai's `valley`: the longest run of decreasing loss (longest decreasing subsequence),
    then the point half way down it."""
    n = len(smoothed)
    if n < 3:
        return None
    run = [1] * n
    best_end = 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[best_end]:
            best_end = i
    start = best_end - run[best_end]
    third = (best_end - start) / 3
    return float(lrs[max(0, start + int(third) + int(third / 2))])


def plot_lr_find(result: LRFindResult) -> Figure:
    """Loss against LR (log scale): raw and smoothed, the suggestions marked."""
    fig, axes = new_figure(7.5, 4.2)
    ax = axes[0][0]
    if result.lrs:
        ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="loss")
        ax.plot(result.lrs, result.smoothed, color="C0", lw=1.8, label="smoothed loss")
        ax.set_ylim(*_loss_range(result.smoothed))
    for value, name, colour in ((result.steepest, "steepest", "C3"), (result.valley, "valley", "C2")):
        if value is not None:
            y = float(np.interp(math.log10(value), np.log10(result.lrs), result.smoothed))
            ax.plot([value], [y], "o", color=colour, ms=7, gid=f"suggestion-{name}",
                    label=f"{name}: {value:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (largest param group)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({len(result.lrs)} steps, {result.stopped})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _loss_range(smoothed: list[float]) -> tuple[float, float]:
    """From the lowest smoothed loss to the highest before it (the divergence tail is cut off);
    the whole curve when it never falls."""
    lowest = int(np.argmin(smoothed))
    low = smoothed[lowest]
    high = max(smoothed[: lowest + 1]) if lowest > 0 else max(smoothed)
    pad = 0.1 * (high - low) + 1e-3
    return low - pad, high + pad


def lr_find(
    config: Any = None,
    /,
    *,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    out: str | Path | None = None,
    **overrides: Any,
) -> LRFindResult:
    """Run the range test for a training config (model, weights, data, strategy, optimizer).

    With `out`, writes lr_find.json and lr_find.png there.

    Example:
        >>> r = lr_find(data="data/pets", model="resnet18", weights="r18.safetensors",
        ...             strategy="probe")  # doctest: +SKIP
        >>> r.valley  # doctest: +SKIP
    """
    model, loader, optimizer, criterion, accelerator = _build_parts(config, overrides)
    result = lr_range_test(model, loader, optimizer, criterion, start_lr=start_lr, end_lr=end_lr,
                           steps=steps, accelerator=accelerator)
    if out is not None:
        out = Path(out)
        write_json(out / "lr_find.json", result.as_dict())
        save_figure(plot_lr_find(result), out / "lr_find.png")
    return result


def _build_parts(config: Any, overrides: dict[str, Any]) -> tuple[Any, ...]:
    """Model, training loader, optimizer and loss as a stage of this config would start with
    (strategy applied at its first epoch, so a probe sweeps the head's LR only)."""
    from accelerate.utils import set_seed

    from ..data import ImageDataset, build_transform, load_dataset, make_loader, resolve_preprocess
    from ..models import build_model
    from ..optim import create_optimizer
    from ..runtime import make_accelerator
    from ..stage import coerce_config
    from ..strategies import apply_strategy, set_train_mode

    cfg = coerce_config(config, overrides)
    index = load_dataset(cfg.data, cfg.format, cfg.val_fraction, cfg.seed)
    index.check()
    set_seed(cfg.seed)
    bundle = build_model(cfg.model, index.class_ids, weights=cfg.weights, head_mode=cfg.head,
                         drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate,
                         image_size=cfg.image_size, class_names=index.class_names)
    pre = resolve_preprocess(bundle.data_config, cfg.image_size, cfg.mean, cfg.std)
    dataset = ImageDataset(index.splits["train"], build_transform(pre, cfg.augmentation, True), cfg.seed)
    loader = make_loader(dataset, cfg.batch_size, True, cfg.seed, cfg.num_workers)
    model = bundle.model
    apply_strategy(model, cfg.strategy, 0, cfg.freeze, cfg.train_bn, cfg.unfreeze_every, cfg.unfreeze_at)
    accelerator = make_accelerator(cfg.precision, 1)
    optimizer = create_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    set_train_mode(model, cfg.train_bn)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing).to(accelerator.device)
    return model, loader, optimizer, criterion, accelerator
