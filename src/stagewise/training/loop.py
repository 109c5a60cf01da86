"""The train/eval loop of one stage on Accelerate. It knows nothing about other stages.

Read top to bottom: `train_one_epoch` runs the optimizer steps of one epoch (`_micro_step` per
batch, `_optimizer_step` per accumulation window), `evaluate` measures the model on a loader.
Set-up lives in `setup.py`; the epoch sequence, checkpoints and stopping in `stage.py`.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from ..errors import NonFiniteLoss
from ..scoring import ClassScores, Scores
from .distributed import agreed, all_objects, sum_over_ranks
from .progress import Reporter

if TYPE_CHECKING:  # the modules that build these import the loop themselves
    from timm.data import Mixup
    from timm.utils import ModelEmaV3

    from .optim import Schedule

# How often the live loss is pulled from the device: each .item() is a sync on a GPU.
LOG_EVERY = 10
NON_FINITE_FIX = "Lower the LR, add grad_clip, or use fp32 precision"


class SoftTargets(Protocol):
    """A teacher's part of the loss (training/distill.py's Distiller)."""

    def __call__(self, task_loss: torch.Tensor, student_logits: torch.Tensor, x: torch.Tensor,
                 index: torch.Tensor | None) -> torch.Tensor: ...

    def take_mean(self, acc: Any) -> float: ...


class Criterion(Protocol):
    """The loss: an nn loss module, or training/embedding.py's EmbedCriterion (whose `scores`
    gives class logits for a training accuracy)."""

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


@dataclass
class LoopParts:
    """Everything the loop touches, prepared by setup.py (model and optimizer through Accelerate)."""

    accelerator: Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    criterion: Criterion
    train_loader: DataLoader
    val_loader: DataLoader
    num_classes: int
    mixup: Mixup | None = None
    ema: ModelEmaV3 | None = None
    grad_clip: float | None = None
    grad_accum: int = 1
    channels_last: bool = False
    distill: SoftTargets | None = None  # a teacher's soft targets, mixed into the loss


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
    """Set by SIGINT/SIGTERM (or the requeue signal); the loop finishes its step, saves and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None


@contextmanager
def catch_signals(flag: StopFlag, requeue: signal.Signals | None = None) -> Iterator[None]:
    """Turn the first SIGINT/SIGTERM (or `requeue`) into a request to stop; a second one acts as
    usual."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = (signal.SIGINT, signal.SIGTERM, *((requeue,) if requeue is not None else ()))
    previous = {s: signal.getsignal(s) for s in caught}

    def handler(signum: int, _frame: object) -> None:
        flag.signum = signum
        signal.signal(signum, previous[signal.Signals(signum)])

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


class _Tally:
    """The loss sum and the accuracy (scoring.py) kept on the device: pulling them is a sync on
    a GPU.

    Accuracy counts the batches that have class scores (an embed stage with a pair loss has none:
    its accuracy is NaN, and the record leaves it out)."""

    def __init__(self, device: torch.device, num_classes: int) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)  # this rank's, for the live line
        self.scores = ClassScores(num_classes, device, top5=False, confusion=False)
        self.seen = 0
        self.scored = 0

    def add(self, loss: torch.Tensor, scores: torch.Tensor | None, y: torch.Tensor) -> None:
        n = y.shape[0]
        self.seen += n
        self.loss += loss.detach().float() * n
        if scores is not None:
            self.scores.update(scores, y)
            self.correct += (scores.argmax(-1) == y).sum()
            self.scored += n

    def local_means(self) -> tuple[float, float]:
        """This rank's mean loss and accuracy so far: one device sync, no collective."""
        loss, correct = torch.stack([self.loss, self.correct.float()]).tolist()
        return loss / max(1, self.seen), correct / self.scored if self.scored else math.nan

    def means(self, acc: Accelerator) -> tuple[float, float, int]:
        """Mean loss and accuracy over every rank's images so far (a collective with N ranks:
        call it at the same batch on all of them)."""
        loss, seen, scored = sum_over_ranks(acc, [self.loss.item(), self.seen, self.scores.images])
        top1 = self.scores.compute().top1 if scored else math.nan
        return loss / max(1.0, seen), top1, int(seen)


def _usable(batch: Any, loader: DataLoader) -> bool:
    """Bad files can leave a batch empty, or with one image, which BatchNorm cannot train on
    (a batch_size of 1 is the user's choice and is kept)."""
    n_images = batch.images.shape[0] if batch.images.numel() else 0
    return n_images > 1 or (n_images == 1 and (getattr(loader, "batch_size", None) or 1) == 1)


def _micro_step(parts: LoopParts, batch: Any, sync: bool,
                window: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Forward and backward of one batch; gradients are all-reduced only when `sync`.

    Accumulation is done here rather than with `Accelerator.accumulate`, whose window counter
    is private state: windows restart every epoch and the epoch's last batch closes its window,
    so no gradient leaks into the next epoch and a resumed run groups batches the same way.
    """
    acc, model = parts.accelerator, parts.model
    x, y = _to_device(parts, batch.images), batch.labels.to(acc.device, non_blocking=True)
    target = y
    if parts.mixup is not None:
        if x.shape[0] % 2:  # timm's Mixup pairs samples; a bad image can leave one over
            x, y = x[:-1], y[:-1]
        x, target = parts.mixup(x, y)
    with nullcontext() if sync else acc.no_sync(model), acc.autocast():
        out = model(x)  # logits, or an embed stage's embeddings
        loss = parts.criterion(out, target)
        if parts.distill is not None:
            loss = parts.distill(loss, out, x, batch.index)
    with nullcontext() if sync else acc.no_sync(model):
        acc.backward(loss / window)  # a mean over the window's micro-batches
    scores = getattr(parts.criterion, "scores", None)
    with torch.no_grad():
        return loss, scores(out) if scores is not None else out, y


def _window_size(batch: int, accum: int, end: int) -> int:
    """Micro-batches in the accumulation window of 1-based `batch`: `accum`, except the epoch's
    last window, which the epoch's end cuts short (its gradient is still a mean, not a fraction)."""
    start = batch - (batch - 1) % accum
    return min(accum, end - start + 1)


def _reduce_gradients(parts: LoopParts) -> None:
    """Average the gradients over ranks by hand (what DDP does on a synced backward)."""
    acc = parts.accelerator
    if acc.num_processes == 1:
        return
    for p in parts.model.parameters():
        if p.grad is not None:
            p.grad.copy_(acc.reduce(p.grad, reduction="mean"))


def _optimizer_step(parts: LoopParts) -> bool:
    """Clip, step, zero the gradients; False when the grad scaler skipped a non-finite step."""
    acc = parts.accelerator
    if parts.grad_clip:
        acc.clip_grad_norm_(parts.model.parameters(), parts.grad_clip)
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    if acc.optimizer_step_was_skipped:
        return False
    parts.schedule.step()
    if parts.ema is not None:
        parts.ema.update(acc.unwrap_model(parts.model))
    return True


def train_one_epoch(
    parts: LoopParts,
    reporter: Reporter,
    flag: StopFlag,
    on_step: Callable[[int], None],
    skip_batches: int = 0,
) -> EpochStats:
    """One pass over the training loader; `on_step(batches_done)` runs after each optimizer step
    (the stage counts steps and may checkpoint there). No sync per batch: what ranks must agree
    on (a batch some rank cannot train on, a stop signal, a NaN loss) is one host-side all-reduce
    per batch overlapping the batch before it (distributed.agreed); rank 0 pulls its running loss
    every LOG_EVERY batches (one device sync); the epoch's totals are summed once, at its end."""
    start = time.perf_counter()
    acc = parts.accelerator
    tally = _Tally(acc.device, parts.num_classes)
    batches, skipped, pending, signum = skip_batches, 0, 0, 0
    bad: list[str] = []
    end = len(parts.train_loader) + skip_batches
    parts.model.zero_grad(set_to_none=True)
    watch = _Watch()

    def local_flags(batch: Any) -> list[int]:
        return [int(not _usable(batch, parts.train_loader)), flag.signum or 0, watch.non_finite]

    # Every rank runs the same number of batches (the sampler pads), so the agreements (and
    # DDP's collectives) happen at the same batches everywhere.
    for batch, (unusable, asked, non_finite) in agreed(parts.train_loader, local_flags, acc.num_processes):
        if non_finite:
            _check_finite(math.nan, acc)
        bad.extend(batch.bad)
        batches += 1
        window_end = batches % parts.grad_accum == 0 or batches == end
        # A batch left empty by bad files on one rank is skipped by all: DDP's collectives must
        # run the same number of times on every rank.
        if not unusable:
            loss, logits, y = _micro_step(parts, batch, sync=window_end,
                                          window=_window_size(batches, parts.grad_accum, end))
            tally.add(loss, logits, y)
            pending += 1
        if window_end and pending:
            if unusable:  # the window's gradients were never all-reduced (no_sync micro-steps)
                _reduce_gradients(parts)
            pending = 0
            if _optimizer_step(parts):
                on_step(batches)
            else:
                skipped += 1
        if acc.is_main_process and (batches % LOG_EVERY == 0 or batches == end):
            live_loss, live_acc = tally.local_means()
            watch.saw(live_loss, acc)
            reporter.batch(batches, live_loss, live_acc, parts.optimizer.param_groups[-1]["lr"])
        # A signal to any one rank stops them all (with one process, as soon as it comes).
        signum = max(signum, asked, flag.signum or 0 if acc.num_processes == 1 else 0)
        if window_end and signum:  # between optimizer steps: a resume groups batches the same
            break
    total_loss, top1, seen = tally.means(acc)
    _check_finite(total_loss, acc)
    return EpochStats(loss=total_loss, top1=top1, images=seen,
                      seconds=time.perf_counter() - start, batches_done=batches, bad=bad,
                      skipped_steps=skipped, interrupted=signum or None)


class _Watch:
    """Whether the main process's running loss went NaN/inf: with one process it raises at once;
    with several the flag joins the next agreement, so every rank raises at the same batch."""

    def __init__(self) -> None:
        self.non_finite = 0

    def saw(self, loss: float, acc: Accelerator) -> None:
        if acc.num_processes == 1:
            _check_finite(loss, acc)
        elif not math.isfinite(loss) and acc.scaler is None:
            self.non_finite = 1


def _check_finite(loss: float, acc: Accelerator) -> None:
    # With a grad scaler (fp16) inf/NaN steps are skipped and counted instead.
    if math.isfinite(loss) or acc.scaler is not None:
        return
    # The stage (stage.py) knows which checkpoint exists and rewrites this message to say so.
    raise NonFiniteLoss(f"training loss became NaN/inf. {NON_FINITE_FIX}")


def eval_batches(loader: DataLoader, accelerator: Accelerator, channels_last: bool = False,
                 progress: Callable[[int], None] | None = None,
                 ) -> Iterator[tuple[torch.Tensor | None, torch.Tensor, int, torch.Tensor | None]]:
    """(images on the device or None when every file failed, labels on the CPU, bad files, the
    samples' indices when the dataset gives them) per batch of an evaluation loader;
    `progress(1)` after each."""
    for batch in loader:
        if progress is not None:
            progress(1)
        if batch.images.numel() == 0:
            yield None, batch.labels, len(batch.bad), batch.index
            continue
        x = batch.images.to(accelerator.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, batch.labels, len(batch.bad), batch.index


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DataLoader, accelerator: Accelerator, num_classes: int,
    channels_last: bool = False, progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Loss, top-1, top-5 and the confusion matrix over `loader` (summed across processes);
    `progress(1)` after each batch (a progress bar's advance). With a loader that gives sample
    indices, also "predictions": (index, class, confidence) of every sample, for the report."""
    model.eval()
    device = accelerator.device
    loss_sum, count, bad = (torch.zeros((), device=device) for _ in range(3))
    scores = ClassScores(num_classes, device)
    kept: list[torch.Tensor] = []
    for x, labels, n_bad, index in eval_batches(loader, accelerator, channels_last, progress):
        bad += n_bad
        if x is None:
            continue
        y = labels.to(device, non_blocking=True)
        with accelerator.autocast():
            logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        count += y.shape[0]
        scores.update(logits, y)
        if index is not None:  # on the device: pulled once, after the pass
            conf, pred = logits.softmax(dim=1).max(dim=1)
            kept.append(torch.stack([index.to(device).double(), pred.double(), conf.double()]))
    totals = accelerator.reduce(torch.stack([loss_sum, count, bad]), reduction="sum")
    n = int(totals[1])
    # Every rank sees the same total, so all of them take (or skip) the collective in compute.
    s = scores.compute() if n else Scores(0.0, 0.0, [[0] * num_classes for _ in range(num_classes)])
    return {"val_loss": float(totals[0]) / max(1, n), "val_top1": s.top1, "val_top5": s.top5,
            "val_images": n, "bad_val_images": int(totals[2]),
            "confusion": s.confusion,  # rows: true class
            **({"predictions": _all_predictions(kept)} if kept else {})}


def _all_predictions(kept: list[torch.Tensor]) -> torch.Tensor:
    """Every rank's (index, class, confidence) rows, one per sample (the sampler's padding
    repeats some: same sample, same prediction), sorted by index: a 3 x N tensor on the CPU."""
    local = torch.cat(kept, dim=1).cpu()
    rows = torch.cat(all_objects(local), dim=1)
    _, first = np.unique(rows[0].numpy(), return_index=True)
    return rows[:, torch.from_numpy(first)]
