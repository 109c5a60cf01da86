"""The train/eval loop of one stage on Accelerate. It knows nothing about other stages.

Read top to bottom: `train_one_epoch` runs the optimizer steps of one epoch, `evaluate` measures
the model on a loader. Set-up, checkpoints and stopping rules live in `stage.py`.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from .errors import NonFiniteLoss
from .progress import Reporter

# How often the live loss is pulled from the device: each .item() is a sync on a GPU.
LOG_EVERY = 10


@dataclass
class LoopParts:
    """Everything the loop touches, prepared by stage.py (model and optimizer through Accelerate)."""

    accelerator: Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    criterion: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    num_classes: int
    mixup: Callable | None = None
    ema: Any = None
    grad_clip: float | None = None
    channels_last: bool = False


@dataclass
class EpochStats:
    loss: float
    top1: float
    images: int
    seconds: float
    batches_done: int
    bad: list[str] = field(default_factory=list)
    skipped_steps: int = 0
    interrupted: int | None = None


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes its step, saves and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None


@contextmanager
def catch_signals(flag: StopFlag) -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM into a request to stop; a second one acts as usual."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: object) -> None:
        flag.signum = signum
        signal.signal(signum, previous[signum])

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _to_device(parts: LoopParts, x: torch.Tensor) -> torch.Tensor:
    x = x.to(parts.accelerator.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if parts.channels_last else x


def train_one_epoch(
    parts: LoopParts,
    reporter: Reporter,
    flag: StopFlag,
    on_step: Callable[[], None],
    skip_batches: int = 0,
) -> EpochStats:
    """One pass over the training loader; `on_step` runs after each optimizer step."""
    acc, model = parts.accelerator, parts.model
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=acc.device)
    correct = torch.zeros((), device=acc.device)
    seen, batches, skipped = 0, skip_batches, 0
    bad: list[str] = []
    live_loss = live_acc = float("nan")
    end = len(parts.train_loader) + skip_batches
    # Accumulation windows restart every epoch and the epoch's last batch closes its window, so no
    # gradient leaks into the next epoch and a resumed run groups batches exactly the same way.
    # (A window left open because bad files emptied the last batch is dropped here.)
    acc.step = 0
    model.zero_grad(set_to_none=True)
    for batch in parts.train_loader:
        bad.extend(batch.bad)
        n_images = batch.images.shape[0] if batch.images.numel() else 0
        # Bad files can leave a batch empty, or with one image, which BatchNorm cannot train on
        # (a batch_size of 1 is the user's choice and is kept).
        if n_images == 0 or (n_images == 1 and (parts.train_loader.batch_size or 1) > 1):
            batches += 1
            continue
        x, y = _to_device(parts, batch.images), batch.labels.to(acc.device, non_blocking=True)
        target = y
        if parts.mixup is not None:
            if x.shape[0] % 2:  # timm's Mixup pairs samples; a bad image can leave one over
                x, y = x[:-1], y[:-1]
            x, target = parts.mixup(x, y)
        if batches + 1 == end:
            acc.step = acc.gradient_accumulation_steps - 1  # accumulate() counts this one as last
        with acc.accumulate(model):
            with acc.autocast():
                logits = model(x)
                loss = parts.criterion(logits, target)
            acc.backward(loss)
            if acc.sync_gradients and parts.grad_clip:
                acc.clip_grad_norm_(model.parameters(), parts.grad_clip)
            parts.optimizer.step()
            parts.optimizer.zero_grad(set_to_none=True)
        batches += 1
        n = y.shape[0]
        seen += n
        loss_sum += loss.detach().float() * n
        correct += (logits.detach().argmax(1) == y).sum()
        if acc.sync_gradients:
            if acc.optimizer_step_was_skipped:
                skipped += 1
            else:
                parts.schedule.step()
                if parts.ema is not None:
                    parts.ema.update(acc.unwrap_model(model))
            on_step()
        if batches % LOG_EVERY == 0 or batches == end:
            live_loss, live_acc = loss_sum.item() / max(1, seen), correct.item() / max(1, seen)
            _check_finite(live_loss, acc, skipped)
            reporter.batch(batches, live_loss, live_acc, parts.optimizer.param_groups[-1]["lr"])
        if flag.signum is not None and acc.sync_gradients:
            break
    total_loss = loss_sum.item() / max(1, seen)
    _check_finite(total_loss, acc, skipped)
    return EpochStats(loss=total_loss, top1=correct.item() / max(1, seen), images=seen,
                      seconds=time.perf_counter() - start, batches_done=batches, bad=bad,
                      skipped_steps=skipped, interrupted=flag.signum)


def _check_finite(loss: float, acc: Accelerator, skipped: int) -> None:
    # With a grad scaler (fp16) inf/NaN steps are skipped and counted instead.
    if math.isfinite(loss) or acc.scaler is not None:
        return
    raise NonFiniteLoss(
        "training loss became NaN/inf; the stage stopped and the last good checkpoint is kept. "
        "Lower the LR, add grad_clip, or use fp32 precision"
    )


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DataLoader, accelerator: Accelerator, num_classes: int,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Loss, top-1, top-5 and the confusion matrix over `loader` (summed across processes)."""
    model.eval()
    k = min(5, num_classes)
    loss_sum = torch.zeros((), device=accelerator.device)
    top1 = torch.zeros((), device=accelerator.device)
    topk = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=accelerator.device)
    for batch in loader:
        if batch.images.numel() == 0:
            continue
        x = batch.images.to(accelerator.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch.labels.to(accelerator.device, non_blocking=True)
        with accelerator.autocast():
            logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        best = logits.topk(k, dim=1).indices
        top1 += (best[:, 0] == y).sum()
        topk += (best == y[:, None]).any(dim=1).sum()
        count += y.shape[0]
        confusion += torch.bincount(y * num_classes + best[:, 0], minlength=num_classes**2)
    totals = accelerator.reduce(torch.stack([loss_sum, top1, topk, count]), reduction="sum")
    n = max(1.0, float(totals[3]))
    out: dict[str, Any] = {"val_loss": float(totals[0]) / n, "val_top1": float(totals[1]) / n,
                           "val_top5": float(totals[2]) / n, "val_images": int(totals[3])}
    confusion = accelerator.reduce(confusion, reduction="sum")
    out["confusion"] = confusion.view(num_classes, num_classes).cpu().tolist()  # rows: true class
    return out
