"""One training stage, end to end: config -> data -> model -> loop -> run folder.

A stage is a pure function of (resolved config, incoming weights, seed) -> artifacts. The run
folder holds config.yaml, split.json, history.jsonl, best.safetensors, model.json and last/.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .checkpoint import Resumable, load_last, save_last, save_weights
from .config import TrainConfig, build_config, load_yaml
from .data import (
    DatasetIndex,
    ImageDataset,
    Preprocess,
    build_transform,
    load_dataset,
    make_loader,
    resolve_preprocess,
)
from .data.folder import load_split, save_split
from .engine import LoopParts, StopFlag, catch_signals, evaluate, train_one_epoch
from .errors import ConfigError, TrainingInterrupted
from .io import write_text
from .models import LoadedWeights, build_model
from .optim import Schedule, create_optimizer, group_lrs
from .progress import Reporter, make_reporter
from .run_files import ModelCard, read_history, write_history
from .runtime import make_accelerator
from .stopping import improved, new_tracker, stop_reason
from .strategies import apply_strategy, set_train_mode

log = logging.getLogger("stagewise")

# Keys a resumed run may change without changing its result.
RESUME_FREE = {"num_workers", "out"}


@dataclass
class TrainResult:
    """What a finished (or stopped) stage produced."""

    run_dir: Path
    best: dict[str, Any]
    history: list[dict[str, Any]]
    stopped: str
    weights: Path
    class_ids: list[str]
    class_names: list[str]
    head: dict[str, Any] = field(default_factory=dict)

    @property
    def best_top1(self) -> float:
        return float(self.best.get("val_top1", float("nan")))


def coerce_config(config: TrainConfig | dict | str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Accept a TrainConfig, a dict, a YAML path, or keyword arguments."""
    if isinstance(config, TrainConfig):
        data = config.model_dump()
    elif isinstance(config, (str, Path)):
        data = load_yaml(Path(config))
    else:
        data = dict(config or {})
    data.update(overrides)
    return build_config(data, source=str(config) if isinstance(config, (str, Path)) else "config")


def resume_config(run_dir: Path, given: dict[str, Any]) -> TrainConfig:
    """The saved config of `run_dir`; explicitly given keys must agree with it."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: {path} not found; is {run_dir} a stagewise run folder?")
    saved = load_yaml(path)
    saved_cfg = build_config(saved, source=str(path))
    asked = build_config({**saved, **given}, source="command line")
    before, after = saved_cfg.resolved(), asked.resolved()
    diffs = [f"{k}: {before[k]!r} -> {after[k]!r}" for k in given
             if k not in RESUME_FREE and before.get(k) != after.get(k)]
    if diffs:
        raise ConfigError(
            f"--resume would change the run in {run_dir}: " + "; ".join(diffs)
            + ". Resume with the saved settings, or start a new run with another --out"
        )
    return asked


def train(
    config: TrainConfig | dict | str | Path | None = None,
    /,
    *,
    resume: bool = False,
    reporter: Reporter | str = "rich",
    incoming: LoadedWeights | None = None,
    stage_name: str | None = None,
    resume_hint: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train one stage and write its run folder.

    `incoming`, `stage_name` and `resume_hint` are for pipelines: the weights handed over, the
    name shown in progress lines, and the command an interrupted stage tells the user to run.

    Example:
        >>> import stagewise
        >>> r = stagewise.train(data="data/pets", model="resnet18", weights="r18.safetensors",
        ...                     strategy="probe", epochs=5, out="runs/pets")  # doctest: +SKIP
        >>> r.best["val_top1"]  # doctest: +SKIP
    """
    if resume:
        given = dict(overrides)
        if config is not None:
            given = {**coerce_config(config, {}).model_dump(exclude_unset=True), **given}
        out = Path(given.get("out") or (config.out if isinstance(config, TrainConfig) else "runs/train"))
        cfg = resume_config(out, given)
    else:
        cfg = coerce_config(config, overrides)
        if (cfg.out / "config.yaml").exists():
            raise ConfigError(
                f"{cfg.out} already holds a run; pass --resume to continue it, or choose another --out"
            )
    rep = make_reporter(reporter, stage_name) if isinstance(reporter, str) else reporter
    hint = resume_hint or f"stagewise train --resume --out {cfg.out}"
    try:
        return _run(cfg, resume, rep, incoming, hint)
    finally:
        rep.close()


def _run(
    cfg: TrainConfig, resume: bool, rep: Reporter, incoming: LoadedWeights | None, hint: str
) -> TrainResult:
    run_dir = cfg.out
    index = load_dataset(cfg.data, cfg.format, cfg.val_fraction, cfg.seed)
    split_file = run_dir / "split.json"
    if resume and split_file.is_file():
        index = load_split(index, split_file)
    index.check()
    if index.skipped:
        shown = ", ".join(index.skipped[:3])
        rep.message(f"warning: skipped {len(index.skipped)} unreadable image(s): {shown}")
    run_dir.mkdir(parents=True, exist_ok=True)
    # A fresh run always records its own split: a split.json left by an attempt that failed
    # before config.yaml (say, on bad weights) may describe other data or another val_fraction.
    if index.splits["train"].paths is not None and not (resume and split_file.is_file()):
        save_split(index, split_file)

    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    torch.use_deterministic_algorithms(False)
    bundle = build_model(
        cfg.model, index.class_ids, weights=cfg.weights, head_mode=cfg.head, incoming=incoming,
        drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate, image_size=cfg.image_size,
        class_names=index.class_names,
    )
    for note in bundle.load_notes:
        rep.message(note)
    rep.message(bundle.head.describe())
    if cfg.strategy != "scratch" and not cfg.weights and incoming is None:
        rep.message(f"warning: strategy '{cfg.strategy}' without weights starts from random init")
    pre = resolve_preprocess(bundle.data_config, cfg.image_size, cfg.mean, cfg.std)

    accelerator = make_accelerator(cfg.precision, cfg.grad_accum)
    rep.message(f"device {accelerator.device}, precision {accelerator.mixed_precision}, "
                f"{len(index.splits['train'])} train / {len(index.splits['val'])} val images, "
                f"{index.num_classes} classes, {pre.image_size}px")
    parts, sampler = _loop_parts(cfg, index, bundle.model, pre, accelerator)
    # Written only once every setting has been checked against the data (class_weights, the
    # optimizer's package, the cache): a folder with config.yaml counts as a run and needs --resume.
    write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.resolved(), sort_keys=False))
    state = Resumable(epoch=0, batches_done=0, global_step=0, history_len=0, tracker=new_tracker())
    history: list[dict[str, Any]] = []
    if resume:
        found = load_last(run_dir / "last", accelerator.unwrap_model(parts.model), parts.optimizer,
                          parts.schedule, accelerator.scaler, parts.ema.module if parts.ema else None)
        if found is not None:
            state = found
            history = read_history(run_dir)[: state.history_len]
            rep.message(f"resumed at epoch {state.epoch + 1}, batch {state.batches_done}")

    meta = ModelCard(cfg.model, cfg.strategy, index, pre, bundle.head.as_dict())
    stopped = _epochs(cfg, parts, sampler, state, history, rep, meta, hint)
    best_path = run_dir / "best.safetensors"
    if not best_path.exists():  # epochs: 0, or nothing improved: the current weights are the best
        save_weights(_eval_model(parts), best_path)
        meta.write(run_dir, history[-1] if history else {})
    best = dict(state.tracker.get("best_record") or (history[-1] if history else {}))
    if cfg.report and accelerator.is_main_process:
        from .reporting import write_report

        rep.message(f"report: {write_report(run_dir)}")
    return TrainResult(run_dir=run_dir, best=best, history=history, stopped=stopped,
                       weights=best_path, class_ids=index.class_ids, class_names=index.class_names,
                       head=bundle.head.as_dict())


def _loop_parts(
    cfg: TrainConfig, index: DatasetIndex, model: nn.Module, pre: Preprocess, accelerator: Any
) -> tuple[LoopParts, Any]:
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3

    train_ds = ImageDataset(index.splits["train"], build_transform(pre, cfg.augmentation, True), cfg.seed,
                            seeded=cfg.augmentation != "none", seed_numpy=cfg.augmentation == "strong")
    val_ds = ImageDataset(index.splits["val"], build_transform(pre, "none", False), cfg.seed, seeded=False)
    from .data.cache import attach_cache

    attach_cache([train_ds, val_ds], cfg.cache, pre)
    rank, world = accelerator.process_index, accelerator.num_processes
    pin = accelerator.device.type == "cuda"
    mixing = bool(cfg.mixup or cfg.cutmix)
    # Mixup pairs images and BatchNorm cannot train on one image: drop a last batch that small.
    small_tail = mixing or len(train_ds) % cfg.batch_size == 1
    train_loader = make_loader(train_ds, cfg.batch_size, True, cfg.seed, cfg.num_workers,
                               drop_last=small_tail and len(train_ds) > cfg.batch_size,
                               rank=rank, world=world, pin_memory=pin)
    val_loader = make_loader(val_ds, cfg.batch_size, False, cfg.seed, cfg.num_workers,
                             rank=rank, world=world, pin_memory=pin)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer(model, cfg)
    steps = math.ceil(len(train_loader) / cfg.grad_accum)
    schedule = Schedule(optimizer, cfg, steps)
    mixup = None
    if mixing:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                      label_smoothing=cfg.label_smoothing, num_classes=index.num_classes)
        criterion: nn.Module = SoftTargetCrossEntropy()
    else:
        criterion = nn.CrossEntropyLoss(weight=_class_weights(cfg, index), label_smoothing=cfg.label_smoothing)
    model, optimizer = accelerator.prepare(model, optimizer)
    criterion = criterion.to(accelerator.device)
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=cfg.ema) if cfg.ema else None
    parts = LoopParts(accelerator=accelerator, model=model, optimizer=optimizer, schedule=schedule,
                      criterion=criterion, train_loader=train_loader, val_loader=val_loader,
                      num_classes=index.num_classes, mixup=mixup, ema=ema, grad_clip=cfg.grad_clip,
                      channels_last=cfg.channels_last)
    return parts, train_loader.sampler


def _class_weights(cfg: TrainConfig, index: DatasetIndex) -> torch.Tensor | None:
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "balanced":
        counts = torch.tensor(index.splits["train"].counts(index.num_classes), dtype=torch.float)
        return counts.sum() / (len(counts) * counts.clamp(min=1))
    if len(cfg.class_weights) != index.num_classes:
        raise ConfigError(
            f"class_weights: {len(cfg.class_weights)} values for {index.num_classes} classes "
            f"({', '.join(index.class_ids[:10])})"
        )
    return torch.tensor(cfg.class_weights, dtype=torch.float)


def _eval_model(parts: LoopParts) -> nn.Module:
    return parts.ema.module if parts.ema is not None else parts.accelerator.unwrap_model(parts.model)


def _epochs(
    cfg: TrainConfig, parts: LoopParts, sampler: Any, state: Resumable, history: list[dict[str, Any]],
    rep: Reporter, meta: ModelCard, hint: str,
) -> str:
    acc = parts.accelerator
    model = acc.unwrap_model(parts.model)
    run_dir = cfg.out
    tracker = state.tracker
    flag = StopFlag()
    step_counter = [state.global_step]
    if cfg.epochs == 0:
        _evaluate_start(cfg, parts, history, rep, meta)
        return "evaluated"
    if not history and state.epoch == 0 and state.batches_done == 0 and meta.head.get("kept", 0) > 0:
        # A matched head already knows some classes: measure that before training changes it.
        _evaluate_start(cfg, parts, history, rep, meta)

    def on_step() -> None:
        step_counter[0] += 1

    if tracker.get("stopped"):
        return tracker["stopped"]
    previous_groups = history[-1].get("groups_unfrozen") if history else None
    started = time.perf_counter() - tracker.get("elapsed", 0.0)
    from .reporting.trackers import close_tracker, log_epoch, open_tracker

    logger = open_tracker(cfg.log_with, run_dir, run_dir.name, cfg.resolved()) if acc.is_main_process else None
    with catch_signals(flag), _closing(logger, close_tracker):
        for epoch in range(state.epoch, cfg.epochs):
            trainable = apply_strategy(model, cfg.strategy, epoch, cfg.freeze, cfg.train_bn,
                                       cfg.unfreeze_every, cfg.unfreeze_at, cfg.freeze_epochs)
            set_train_mode(parts.model, cfg.train_bn, cfg.freeze_bn_stats)
            skip = state.batches_done if epoch == state.epoch else 0
            sampler.set_epoch(epoch, skip * cfg.batch_size)
            rep.epoch_start(epoch + 1, cfg.epochs, len(parts.train_loader) + skip)
            stats = train_one_epoch(parts, rep, flag, on_step, skip_batches=skip)
            if stats.bad:
                rep.message(f"warning: skipped {len(stats.bad)} undecodable image(s): {', '.join(stats.bad[:3])}")
            if stats.interrupted is not None:
                tracker["elapsed"] = time.perf_counter() - started
                where = Resumable(epoch, stats.batches_done, step_counter[0], tracker, len(history))
                _save_last(parts, run_dir, where)
                rep.message(f"interrupted: saved {run_dir / 'last'}; resume with: {hint}")
                raise TrainingInterrupted(stats.interrupted, hint)
            metrics = evaluate(_eval_model(parts), parts.val_loader, acc, parts.num_classes, cfg.channels_last)
            confusion = metrics.pop("confusion")
            record = {
                "epoch": epoch + 1, "global_step": step_counter[0],
                "train_loss": stats.loss, "train_top1": stats.top1, **metrics,
                "lr": group_lrs(parts.optimizer),
                "trainable_params": trainable.trainable_params, "total_params": trainable.total_params,
                "groups_unfrozen": trainable.groups_unfrozen, "groups_total": trainable.groups_total,
                "epoch_seconds": stats.seconds, "images_per_sec": stats.images / max(stats.seconds, 1e-9),
                "bad_images": len(stats.bad), "skipped_steps": stats.skipped_steps,
            }
            if previous_groups is not None and trainable.groups_unfrozen != previous_groups:
                record["event"] = f"unfreeze: {trainable.groups_unfrozen}/{trainable.groups_total} groups"
            previous_groups = trainable.groups_unfrozen
            history.append(record)
            rep.epoch_end(record)
            log_epoch(logger, record)
            if acc.is_main_process:
                write_history(run_dir, history)
                if improved(cfg, tracker, record):
                    save_weights(_eval_model(parts), run_dir / "best.safetensors")
                    meta.write_confusion(run_dir, epoch + 1, confusion)
                    meta.write(run_dir, record)
            parts.schedule.epoch_end(record.get(cfg.monitor))
            tracker["elapsed"] = time.perf_counter() - started
            reason = stop_reason(cfg, tracker, record)
            if reason:
                tracker["stopped"] = reason  # a resumed run must not train past its stop
            where = Resumable(epoch + 1, 0, step_counter[0], tracker, len(history))
            _save_last(parts, run_dir, where)
            if reason:
                rep.message(f"stopping after epoch {epoch + 1}: {reason}")
                return reason
    return "completed"


@contextmanager
def _closing(obj: Any, close: Any) -> Iterator[None]:
    try:
        yield
    finally:
        close(obj)


def _evaluate_start(
    cfg: TrainConfig, parts: LoopParts, history: list[dict[str, Any]], rep: Reporter, meta: ModelCard
) -> None:
    """Record epoch 0: the starting weights on the validation set, before any training."""
    metrics = evaluate(_eval_model(parts), parts.val_loader, parts.accelerator, parts.num_classes,
                       cfg.channels_last)
    confusion = metrics.pop("confusion")
    head = meta.head
    record = {"epoch": 0, **metrics, "event": f"start: head {head.get('mode')}, kept "
              f"{head.get('kept', 0)}/{head.get('total')} rows"}
    history.append(record)
    rep.message(f"before training: val top1 {record['val_top1']:.4f} top5 {record['val_top5']:.4f} "
                f"({record['event']})")
    if parts.accelerator.is_main_process:
        write_history(cfg.out, history)
        meta.write_confusion(cfg.out, 0, confusion)


def _save_last(parts: LoopParts, run_dir: Path, where: Resumable) -> None:
    if parts.accelerator.is_main_process:
        save_last(run_dir / "last", parts.accelerator.unwrap_model(parts.model), parts.optimizer,
                  parts.schedule, parts.accelerator.scaler, parts.ema.module if parts.ema else None, where)
    parts.accelerator.wait_for_everyone()
