"""Knowledge distillation: a frozen teacher's soft targets added to a stage's loss.

The teacher (any run folder or model file) is found and built by runs/ and handed down as a
`Teacher`. Here it is matched to the stage's classes by id, fed each batch preprocessed its own
way (re-normalised and resized from the student's tensor), and its logits are computed once per
training image when those images never change (no augmentation, mixup or progressive resizing).

    loss = (1 - alpha) * loss(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import Distill, TrainConfig
from ..data import AugmentPlan, ImageDataset, Preprocess, make_loader
from ..errors import ConfigError
from ..runfolder import read_teacher
from .distributed import sum_over_ranks
from .loop import LoopParts
from .progress import Reporter


@dataclass
class Teacher:
    """A built, frozen teacher network and what its model.json says about it."""

    network: nn.Module
    architecture: str
    class_ids: list[str]
    preprocess: Preprocess
    source: str  # the path it was loaded from
    sha256: str  # of its weights file: a resume refuses a teacher that changed
    val_top1: float | None = None  # on its own validation split, from its model.json

    def record(self) -> dict[str, Any]:
        """What teacher.json and the student's model.json keep about the teacher."""
        return {"source": self.source, "architecture": self.architecture, "sha256": self.sha256,
                "val_top1": self.val_top1, "classes": len(self.class_ids),
                "image_size": self.preprocess.image_size}


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), the batch's mean (Hinton et al. 2015).

    timm 1.0's `LogitDistillationTask` computes the same (kl_div of log-softmaxes, batchmean,
    times T^2), but as a training task that owns the student's forward pass and optimizer; the loop
    here owns those, so the few lines are written out. T^2 keeps the soft gradients' scale
    independent of T.
    """
    t = temperature
    log_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * (t * t)


def class_order(teacher: Teacher, student_ids: list[str]) -> list[int]:
    """The teacher's logit column for each of the student's classes, matched by class id."""
    where = {c: i for i, c in enumerate(teacher.class_ids)}
    missing = [c for c in student_ids if c not in where]
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise ConfigError(
            f"teacher {teacher.source}: it does not predict {len(missing)} of this stage's "
            f"{len(student_ids)} classes ({shown}); a teacher must know every class the student "
            "learns. Use a teacher trained on these classes, or leave the missing ones out of data:")
    return [where[c] for c in student_ids]


class Distiller:
    """What the loop calls for each batch: the teacher's logits (cached or computed) in the
    student's class order, and the loss mixed from the labels' and the teacher's."""

    def __init__(self, teacher: Teacher, order: list[int], student: Preprocess, settings: Distill,
                 device: torch.device) -> None:
        self.network = teacher.network.to(device).eval().requires_grad_(False)
        self.alpha, self.temperature = settings.alpha, settings.temperature
        self.order = torch.tensor(order, dtype=torch.long, device=device)
        self.device = device
        self.size = teacher.preprocess.image_size

        def column(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float, device=device).view(1, -1, 1, 1)

        self.same_norm = (tuple(student.mean), tuple(student.std)) == (
            tuple(teacher.preprocess.mean), tuple(teacher.preprocess.std))
        self.student_mean, self.student_std = column(student.mean), column(student.std)
        self.teacher_mean, self.teacher_std = column(teacher.preprocess.mean), column(teacher.preprocess.std)
        self.cache: torch.Tensor | None = None  # sample index -> teacher logits
        self.soft_sum = torch.zeros((), device=device)
        self.seen = 0

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """The student's batch as the teacher expects it: its mean/std (as timm's
        DistillationTeacher.normalize_input does), then its image size."""
        x = x.float()
        if not self.same_norm:
            x = (x * self.student_std + self.student_mean - self.teacher_mean) / self.teacher_std
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    @torch.no_grad()
    def logits(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if self.cache is not None and index is not None:
            return self.cache[index.to(self.device)][: x.shape[0]]
        return self.network(self.teacher_input(x)).float()[:, self.order]

    def __call__(self, task_loss: torch.Tensor, student_logits: torch.Tensor, x: torch.Tensor,
                 index: torch.Tensor | None) -> torch.Tensor:
        soft = soft_target_loss(student_logits, self.logits(x, index), self.temperature)
        self.soft_sum += soft.detach() * x.shape[0]
        self.seen += x.shape[0]
        return (1.0 - self.alpha) * task_loss + self.alpha * soft

    def take_mean(self, acc: Any) -> float:
        """The soft loss's mean over the images since the last call (all ranks), then reset."""
        total, seen = sum_over_ranks(acc, [self.soft_sum.item(), self.seen])
        self.soft_sum.zero_()
        self.seen = 0
        return total / max(1.0, seen)

    def fill_cache(self, parts: LoopParts, dataset: ImageDataset, seed: int) -> None:
        """The teacher's logits for every image of `dataset` (the training loader's), in sample
        order, computed once."""
        loader = make_loader(dataset, parts.train_loader.batch_size or 1, False, seed,
                             parts.train_loader.num_workers)
        cache = torch.zeros(len(dataset), len(self.order), device=self.device)
        with parts.accelerator.autocast():
            for batch in loader:
                if batch.images.numel():
                    cache[batch.index.to(self.device)] = self.logits(batch.images.to(self.device))
        self.cache = cache


def cache_exact(cfg: TrainConfig) -> bool:
    """Whether a training image is the same tensor every epoch, so its teacher logits are too."""
    settings = cfg.distill or Distill()
    plan = AugmentPlan.from_mapping(cfg.model_dump())
    return settings.cache and not (plan.active or cfg.mixup or cfg.cutmix or cfg.progressive_resize
                                   or cfg.progressive)


def check_same_teacher(run_dir: Path, teacher: Teacher) -> None:
    """A resumed run must learn from the teacher it started with: same weights, by hash."""
    saved = read_teacher(run_dir)
    if saved is not None and saved.get("sha256") not in (None, teacher.sha256):
        raise ConfigError(
            f"resume: the teacher's weights changed since {run_dir} started ({teacher.source}: "
            f"sha256 {str(saved['sha256'])[:12]}... then, {teacher.sha256[:12]}... now). Restore "
            "the teacher it started with, or start a new run in another folder")


def attach_teacher(cfg: TrainConfig, teacher: Teacher, student_ids: list[str], pre: Preprocess,
                   parts: LoopParts, rep: Reporter, resumed_from: Path | None = None) -> None:
    """Check `teacher` against the stage and add its soft targets to the loop's loss."""
    order = class_order(teacher, student_ids)
    if resumed_from is not None:
        check_same_teacher(resumed_from, teacher)
    settings = cfg.distill or Distill()
    distiller = Distiller(teacher, order, pre, settings, parts.accelerator.device)
    aim = f"val top1 {teacher.val_top1:.4f}" if teacher.val_top1 is not None else "val top1 unknown"
    rep.message(f"teacher: {teacher.source} ({teacher.architecture}, {len(teacher.class_ids)} classes, "
                f"{teacher.preprocess.image_size}px, {aim}); distilling with alpha "
                f"{settings.alpha:g}, temperature {settings.temperature:g}")
    dataset = parts.train_loader.dataset
    if cache_exact(cfg) and isinstance(dataset, ImageDataset):  # the dataset that can be `indexed`
        dataset.indexed = True
        start = time.perf_counter()
        distiller.fill_cache(parts, dataset, cfg.seed)
        rep.message(f"teacher logits for {len(dataset)} train images computed once in "
                    f"{time.perf_counter() - start:.1f}s (no augmentation: reused every epoch)")
    parts.distill = distiller
