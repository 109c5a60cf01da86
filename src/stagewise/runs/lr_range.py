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
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config.schema import Distill
from ..errors import ConfigError
from ..reporting.lr_plot import plot_lr_find
from ..reporting.plots import save_figure
from ..runfolder import LR_FIND_PLOT, LRFindResult, write_lr_find
from ..training import coerce_config, prepare_stage, start_epoch
from ..training.distributed import single_process
from ..training.loop import Criterion
from ..training.progress import Reporter, bar, make_reporter
from .teacher import load_teacher

MAX_STEPS = 1000


def lr_range_test(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    criterion: Criterion,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    accelerator: Any = None,
    mixup: Callable | None = None,
    progress: Callable[[int], None] | None = None,
    distill: Callable | None = None,
) -> LRFindResult:
    """Sweep the LR from `start_lr` to `end_lr` over `steps` optimizer steps.

    Param groups keep their LR ratios (layer decay, explicit group LRs): the swept value is the
    largest group's LR. Stops early once the smoothed loss exceeds `diverge` x its minimum.
    The model is used in the mode it is in (frozen BatchNorm layers may be in eval mode).
    `progress(1)` runs after each step (a bar's advance); `distill` mixes a teacher's soft targets in.
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
            loss = _step(model, optimizer, criterion, x, y, accelerator, mixup, distill)
            if progress is not None:
                progress(1)
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
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        empty = True
        for batch in loader:
            x, y = (batch.images, batch.labels) if hasattr(batch, "images") else batch
            if x.numel():
                empty = False
                yield x, y
        if empty:
            raise ConfigError("lr-find: the training loader yields no images")


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: Criterion,
          x: torch.Tensor, y: torch.Tensor, accelerator: Any, mixup: Callable | None = None,
          distill: Callable | None = None) -> float:
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    if mixup is not None:  # the stage's loss takes mixed (soft) targets
        if x.shape[0] % 2:
            x, y = x[:-1], y[:-1]
        x, y = mixup(x, y)
    with accelerator.autocast() if accelerator is not None else nullcontext():
        logits = model(x)
        loss = criterion(logits, y)
        if distill is not None:  # the teacher's logits computed here: the sweep has no indices
            loss = distill(loss, logits, x, None)
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


def lr_find(
    config: Any = None,
    /,
    *,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    out: str | Path | None = None,
    reporter: Reporter | str = "quiet",
    **overrides: Any,
) -> LRFindResult:
    """Run the range test for a training config (model, weights, data, strategy, optimizer).

    The model, data, loss and optimizer are set up exactly as the stage's first epoch would be
    (`train.prepare_stage` + `start_epoch(0)`): with `freeze_epochs: 1` a finetune sweeps the
    head only, as its first epoch trains it. With `out`, writes lr_find.json and lr_find.png there.
    `reporter` ("rich", "json", "quiet" or a Reporter): "rich" draws a bar for the sweep.

    Example:
        >>> r = lr_find(data="data/pets", model="resnet18", weights="r18.safetensors",
        ...             strategy="probe")  # doctest: +SKIP
        >>> r.valley  # doctest: +SKIP
    """
    single_process("lr-find")
    cfg = coerce_config(config, overrides)
    rep = make_reporter(reporter) if isinstance(reporter, str) else reporter
    try:
        # With a teacher the sweep measures the distillation loss the stage will train on; its
        # logits are computed per step (a cache would cost a pass over all images for a few steps).
        if cfg.teacher:
            cfg = cfg.model_copy(update={"distill": Distill(**{**(cfg.distill or Distill()).model_dump(),
                                                                "cache": False})})
        setup = prepare_stage(cfg, rep, teacher=load_teacher(cfg.teacher) if cfg.teacher else None)
        trainable = start_epoch(setup, 0)
        parts = setup.parts
        with bar(rep, "lr-find", steps) as advance:
            result = lr_range_test(parts.model, parts.train_loader, parts.optimizer, parts.criterion,
                                   start_lr=start_lr, end_lr=end_lr, steps=steps,
                                   accelerator=parts.accelerator, mixup=parts.mixup, progress=advance,
                                   distill=parts.distill)
    finally:
        if isinstance(reporter, str):  # a reporter passed in is the caller's to close
            rep.close()
    result.trainable_params = trainable.trainable_params
    if out is not None:
        out = Path(out)
        write_lr_find(out, result)
        save_figure(plot_lr_find(result), out / LR_FIND_PLOT)
    return result
