"""One training stage, end to end: resolved config (+ incoming weights) -> run folder.

A stage is a pure function of (resolved config, incoming weights, seed) -> artifacts: config.yaml,
split.npz, history.jsonl, best.safetensors, model.json, confusion.json and last/ (runfolder.py
names them). It decides nothing about reports or command lines: that is the caller's (runs/).

The epoch loop reads top to bottom: `_run_epoch` trains, `_make_record` measures, `_persist`
writes, `_decide_stop` applies the stop rules, and `_checkpoint` saves where the stage stands.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.schema import TrainConfig
from ..data import ImageDataset, build_transform, make_loader
from ..data.folder import save_split
from ..defaults import FEW_IDENTITIES
from ..errors import NonFiniteLoss, TrainingInterrupted
from ..io import remove_leftovers
from ..kinds import task
from ..metrics import metric, val_summary
from ..models import EmbeddingSpec, HeadSpec, LoadedWeights, pretrained_features
from ..runfolder import (
    BEST,
    CHECKPOINTS,
    HISTORY,
    LAST,
    MODEL_CARD,
    SPLIT,
    SPLIT_ARRAYS,
    VAL_PREDICTIONS,
    Confusion,
    EpochRecord,
    HeldOutRecord,
    ModelCard,
    best_record,
    epoch_record,
    read_config,
    read_history,
    read_model_card,
    split_file,
    trained_epochs,
    write_config,
    write_confusion,
    write_history,
    write_model_card,
    write_teacher,
    write_test,
    write_val_predictions,
)
from .callbacks import Hooks, StageInfo, StopTraining
from .checkpoint import (
    Resumable,
    keep_recent,
    load_last,
    rng_state,
    save_last,
    save_weights,
    saved_position,
    writing,
)
from .cluster import fit_world, requeue_signal
from .distill import Teacher
from .distributed import (
    all_objects,
    from_main,
    is_main_process,
    max_over_ranks,
    wait_for_everyone,
    world_size,
)
from .embedding import evaluate_embeddings
from .loop import NON_FINITE_FIX, EpochStats, StopFlag, catch_signals, evaluate, train_one_epoch
from .optim import group_lrs
from .progress import Reporter, bar
from .setup import Given, StageSetup, prepare_stage, start_epoch
from .stopping import StopTracker, improved, stop_reason
from .strategies import Trainable
from .trackers import close_tracker, log_epoch, open_tracker


@dataclass
class TrainResult:
    """What a finished (or stopped) stage produced."""

    run_dir: Path
    best: dict[str, Any]
    history: list[EpochRecord]
    stopped: str
    weights: Path
    class_ids: list[str]
    class_names: list[str]
    head: dict[str, Any] = field(default_factory=dict)
    test: HeldOutRecord | None = None  # the best weights on the test split, when there is one
    task: str = "classify"  # the stage's task (kinds.TASKS): what its records measure
    complete: bool = False  # it had already finished: a resume found nothing to do

    @property
    def best_top1(self) -> float:
        return float(self.best.get("val_top1", float("nan")))

    @property
    def test_top1(self) -> float:
        return self.test.top1 if self.test is not None else float("nan")


def run_stage(
    cfg: TrainConfig, rep: Reporter, *, resume: bool = False, incoming: LoadedWeights | None = None,
    teacher: Teacher | None = None, given: Given | None = None, hooks: Hooks | None = None,
) -> TrainResult:
    """Train the stage `cfg` describes into `cfg.out`; with `resume`, continue from its last/.
    `teacher`: the network `cfg.teacher` names, built by the caller (runs/); `given`: a network
    and datasets passed as objects; `hooks`: the caller's callbacks (training/callbacks.py)."""
    run_dir = cfg.out
    hooks = hooks or Hooks()
    # On a resume, another number of processes keeps the global batch (or is refused): cluster.py.
    run_cfg = fit_world(cfg, run_dir / LAST, world_size()) if resume else cfg
    setup = prepare_stage(run_cfg, rep, incoming, split_from=run_dir if resume else None, teacher=teacher,
                          given=given)
    if is_main_process():
        _start_folder(setup, resume)
        if teacher is not None:
            write_teacher(run_dir, teacher.record())
    wait_for_everyone()
    state, history = _restore(setup, resume, rep)
    if resume and is_main_process():
        _record_resume(cfg)  # the settings as given: the checkpoint records the accumulation used
    card = ModelCard(architecture=setup.bundle.architecture or cfg.model, class_ids=setup.index.class_ids,
                     class_names=setup.index.class_names, preprocess=setup.pre.as_dict(),
                     strategy=cfg.strategy, head=setup.bundle.head.as_dict(),
                     data=str(setup.index.root), layout=setup.index.layout, task=cfg.task,
                     teacher=teacher.record() if teacher is not None else None,
                     embedding=_embedding_card(setup) if task(cfg.task).embeds else {},
                     weights_from=_weights_from(cfg, incoming, given),
                     **HeadSpec.from_mapping(cfg.model_dump()).as_dict())
    hooks.call("on_stage_start", StageInfo(cfg, setup.model, run_dir, setup.index.class_names,
                                           state.epoch, is_main_process()))
    stopped = _epochs(setup, state, history, rep, card, hooks)
    _say_if_start_won(setup, state.tracker, history, rep)
    if not (run_dir / BEST).exists() and is_main_process():
        _save_best(setup, card, history[-1] if history else {})  # epochs: 0, or nothing improved
    wait_for_everyone()  # the next stage (or the caller) reads what rank 0 wrote
    best = dict(state.tracker.best_record or (history[-1] if history else {}))
    test = _test_best(setup, rep, best.get("epoch"))
    result = TrainResult(run_dir=run_dir, best=best, history=history, stopped=stopped,
                         weights=run_dir / BEST, class_ids=setup.index.class_ids,
                         class_names=setup.index.class_names, head=setup.bundle.head.as_dict(),
                         test=test, task=cfg.task)
    hooks.call("on_stage_end", result)
    return result


def _weights_from(cfg: TrainConfig, incoming: LoadedWeights | None, given: Given | None) -> str:
    """model.json's `weights_from`: where the stage's starting weights came from, in one line."""
    if incoming is not None:
        return f"handoff: {incoming.source}"
    if given is not None and given.model is not None:
        return f"module: the weights {type(given.model).__name__} held when passed in"
    if cfg.weights_auto:
        return cfg.weights_auto
    if not cfg.weights:
        return "none: random init"
    if cfg.weights == "hub" or cfg.weights.startswith("hf-hub:"):
        return f"hub: {cfg.model if cfg.weights == 'hub' else cfg.weights}"
    return f"file: {cfg.weights}"


def _embedding_card(setup: StageSetup) -> dict[str, Any]:
    """model.json's `embedding`: the spec, and the validation identities that were trained on
    (its retrieval metrics are then not held out)."""
    card = EmbeddingSpec.from_mapping(setup.cfg.model_dump()).as_dict()
    if setup.val_shared:
        card["val_not_held_out"] = list(setup.val_shared)
    return card


def _start_folder(setup: StageSetup, resume: bool) -> None:
    """The run folder with its split and config (rank 0 only)."""
    run_dir = setup.cfg.out
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # a resume cleans up once its checkpoint has loaded (_restore)
        remove_leftovers(run_dir, (LAST,))
    # A fresh run always records its own split: a split file left by an attempt that failed
    # before config.yaml (say, on bad weights) may describe other data or another val_fraction.
    if setup.index.splits["train"].paths is not None and not (resume and split_file(run_dir)):
        (run_dir / SPLIT).unlink(missing_ok=True)  # an older format's, left by a failed attempt
        save_split(setup.index, run_dir / SPLIT_ARRAYS)
    # Written only once every setting has been checked against the data (class_weights, the
    # optimizer's package, the cache): a folder with config.yaml counts as a run and needs --resume.
    # A resume rewrites it (a new out: or num_workers:) only once its checkpoint has loaded
    # (_record_resume): a refused resume leaves the folder as it was.
    if not resume:
        write_config(run_dir, setup.cfg.resolved())


def _record_resume(cfg: TrainConfig) -> None:
    """config.yaml of a resume that has been accepted, where its free keys changed it."""
    resolved = cfg.resolved()
    if read_config(cfg.out) != resolved:
        write_config(cfg.out, resolved)


def _restore(setup: StageSetup, resume: bool, rep: Reporter) -> tuple[Resumable, list[EpochRecord]]:
    """Where the stage starts: from scratch, or from its last/ checkpoint on a resume."""
    acc = setup.parts.accelerator
    world, accum = acc.num_processes, setup.cfg.grad_accum
    state = Resumable(epoch=0, batches_done=0, global_step=0, history_len=0, tracker=StopTracker(),
                      world_size=world, grad_accum=accum)
    if not resume:
        return state, []
    parts, run_dir = setup.parts, setup.cfg.out
    found = load_last(run_dir / LAST, setup.model, parts.optimizer, parts.schedule,
                      parts.accelerator.scaler, parts.ema.module if parts.ema else None,
                      rank=acc.process_index)
    if is_main_process():
        # What a killed write left: temp files, and last.old once last/ is there. Only now: a
        # damaged last/ must not cost the last.old its error message points to.
        remove_leftovers(run_dir, (LAST,))
    if found is None:
        return state, []
    if found.world_size != world:  # at an epoch's end: fit_world checked it and set grad_accum
        rep.message(f"{found.world_size} process(es) saved this checkpoint and {world} resume it: "
                    f"grad_accum {accum} keeps the global batch {world * setup.cfg.batch_size * accum}")
    rep.message(f"resumed at epoch {found.epoch + 1}, batch {found.batches_done}")
    found.world_size, found.grad_accum = world, accum  # what the next checkpoint records
    return found, read_history(run_dir)[: found.history_len]


def _epochs(
    setup: StageSetup, state: Resumable, history: list[EpochRecord], rep: Reporter, card: ModelCard,
    hooks: Hooks,
) -> str:
    """Train the remaining epochs; returns why the stage ended."""
    cfg, tracker = setup.cfg, state.tracker
    fresh = not history and state.epoch == 0 and state.batches_done == 0
    # A matched head already knows some classes: measure that before training changes it. An
    # embed stage always measures where it starts: the gain over pretrained features is its point.
    if cfg.epochs == 0 or (fresh and (card.head.get("kept", 0) > 0 or task(cfg.task).measures_start)):
        _evaluate_start(setup, history, rep, card, tracker)
    if cfg.epochs == 0:
        return "evaluated"
    if tracker.stopped:
        return tracker.stopped
    clock = _Clock(tracker)
    logger = open_tracker(cfg.log_with, cfg.out, cfg.out.name, cfg.resolved()) \
        if setup.parts.accelerator.is_main_process else None
    flag = StopFlag()
    state.history_len = len(history)
    epoch = state.epoch
    with catch_signals(flag, requeue_signal(cfg)), _closing(logger):
        try:
            # Each epoch's wall time runs from the end of the previous one's checkpoint, so the
            # epochs' sum is the stage's time less its set-up and its last write; the first one
            # also carries the set-up work its strategy caused (a probe's feature extraction).
            began = time.perf_counter() - setup.prepare_seconds
            for epoch in range(state.epoch, cfg.epochs):
                trainable = start_epoch(setup, epoch)
                stats = _run_epoch(setup, state, epoch, rep, flag, clock)
                if stats.interrupted is not None:
                    _interrupt(setup, state, epoch, stats, clock, rep)
                record, confusion = _make_record(setup, state, epoch, stats, trainable, history, rep)
                record["wall_seconds"] = time.perf_counter() - began
                history.append(record)
                rep.epoch_end(record)
                log_epoch(logger, record)
                _persist(setup, tracker, history, card, confusion)
                reason = _decide_stop(setup, tracker, record, clock)
                state.history_len = len(history)
                _checkpoint(setup, state.at(epoch + 1, 0))
                reason = _epoch_hooks(hooks, setup, record) or reason  # callbacks: after the checkpoint
                began = time.perf_counter()
                # Epoch end (callbacks at an epoch's end belong here, after its checkpoint): a
                # signal that came during validation stops the run now, already saved.
                signum = max_over_ranks(setup.parts.accelerator, flag.signum or 0)
                if signum and not reason and epoch + 1 < cfg.epochs:
                    _stop(setup, signum, rep)
                if reason:
                    rep.message(f"stopping after epoch {epoch + 1}: {reason}")
                    return reason
        except NonFiniteLoss as exc:
            raise _non_finite(setup, epoch, exc) from None
    return "completed"


def _epoch_hooks(hooks: Hooks, setup: StageSetup, record: EpochRecord) -> str | None:
    """The callbacks of an epoch's end, once its record and checkpoint are on disk: one that
    raises stops the run with last/ at this epoch; StopTraining ends the stage as a rule would.
    Rank 0's callbacks decide for every rank (a search's pruner lives on rank 0 alone)."""
    reason = None
    if hooks:
        last, epoch = setup.cfg.out / LAST, int(record["epoch"])
        after = f"{last} holds the checkpoint of epoch {epoch}"
        try:
            hooks.call("on_checkpoint", last, epoch, after=after)
            hooks.call("on_epoch_end", record.copy(), after=after)  # a copy: history keeps its own
        except StopTraining as exc:
            reason = f"stopped by a callback{f' ({exc})' if str(exc) else ''}"
    return from_main(reason)


def _non_finite(setup: StageSetup, epoch: int, exc: NonFiniteLoss) -> NonFiniteLoss:
    """The NaN/inf error, saying what is on disk: the checkpoint a resume continues from, or none."""
    last = setup.cfg.out / LAST
    cause = f"{exc.message.removesuffix(f'. {NON_FINITE_FIX}')} in epoch {epoch + 1}"
    where = saved_position(last)
    if where is None:
        return NonFiniteLoss(
            f"{cause}. No epoch finished and nothing was saved in {last}, so there is nothing to "
            f"resume. {NON_FINITE_FIX}, then run again: a run folder with no trained epoch starts "
            f"afresh, with the new settings", resumable=False)
    done, batches = where
    at = f"at the end of epoch {done}" if batches == 0 else f"in epoch {done + 1} after batch {batches}"
    return NonFiniteLoss(
        f"{cause}. {last} holds the checkpoint saved {at}, before the values went bad: --resume "
        f"continues from it with the same settings. {NON_FINITE_FIX} in a new run (another --out)")


class _Clock:
    """The stage's training time, carried across resumes in the tracker (for max_minutes)."""

    def __init__(self, tracker: StopTracker) -> None:
        self.tracker = tracker
        self.started = time.perf_counter() - tracker.elapsed

    def update(self) -> None:
        self.tracker.elapsed = time.perf_counter() - self.started


def _run_epoch(setup: StageSetup, state: Resumable, epoch: int, rep: Reporter, flag: StopFlag,
               clock: _Clock) -> EpochStats:
    """Train one epoch, skipping the batches a resumed epoch has already done."""
    skip = state.batches_done if epoch == state.epoch else 0
    setup.sampler.set_epoch(epoch)
    if skip and skip >= len(setup.parts.train_loader):
        # A step checkpoint taken at the epoch's last batch (killed in its validation): the
        # epoch's training is done, so the resume goes on to its validation and skips nothing.
        # Its training loss was not saved with the checkpoint, and the record leaves it out.
        rep.epoch_start(epoch + 1, setup.cfg.epochs, skip)
        rep.message(f"epoch {epoch + 1}: every batch was trained before the checkpoint, validating")
        return EpochStats(loss=math.nan, top1=math.nan, images=0, seconds=0.0, batches_done=skip)
    setup.sampler.set_epoch(epoch, skip * setup.cfg.batch_size)
    rep.epoch_start(epoch + 1, setup.cfg.epochs, len(setup.parts.train_loader) + skip)

    every = setup.cfg.checkpoint_every

    def on_step(batches_done: int) -> None:
        state.global_step += 1
        if every and state.global_step % every == 0:  # a crash in a long epoch loses < N steps
            clock.update()  # the time spent so far counts towards max_minutes after a resume
            _checkpoint(setup, state.at(epoch, batches_done))

    stats = train_one_epoch(setup.parts, rep, flag, on_step, skip_batches=skip)
    if stats.bad:
        rep.message(f"warning: skipped {len(stats.bad)} undecodable image(s): {', '.join(stats.bad[:3])}")
    return stats


def _interrupt(setup: StageSetup, state: Resumable, epoch: int, stats: EpochStats, clock: _Clock,
               rep: Reporter) -> None:
    """Save mid-epoch and stop: a resume continues at the next batch."""
    clock.update()
    _checkpoint(setup, state.at(epoch, stats.batches_done))
    _stop(setup, int(stats.interrupted or 0), rep)


def _stop(setup: StageSetup, signum: int, rep: Reporter) -> None:
    """Exit after a saved checkpoint: for a requeue (its own exit code) or on SIGINT/SIGTERM."""
    requeue = signum == requeue_signal(setup.cfg)
    rep.message(f"{'stopped for requeue' if requeue else 'interrupted'}: saved {setup.cfg.out / LAST}")
    raise TrainingInterrupted(signum, run_dir=setup.cfg.out, requeue=requeue)


def _make_record(
    setup: StageSetup, state: Resumable, epoch: int, stats: EpochStats, trainable: Trainable,
    history: list[EpochRecord], rep: Reporter,
) -> tuple[EpochRecord, list[list[int]] | None]:
    """The epoch's record (train stats, validation metrics, LRs, what trained) and confusion."""
    parts = setup.parts
    metrics = _validate(setup, rep)
    confusion = metrics.pop("confusion", None)
    record = epoch_record({
        "epoch": epoch + 1, "global_step": state.global_step, "image_size": setup.train_size(epoch),
        # NaN: no batch trained since the resume (_run_epoch), so the record leaves it out
        **({} if math.isnan(stats.loss) else {"train_loss": stats.loss}),
        **metrics,
        **{k: v for k, v in setup.progressive(epoch).items() if k != "image_size"},
        "lr": group_lrs(parts.optimizer, setup.coarse_groups()),
        "trainable_params": trainable.trainable_params, "total_params": trainable.total_params,
        "groups_unfrozen": trainable.groups_unfrozen, "groups_total": trainable.groups_total,
        "epoch_seconds": stats.seconds, "images_per_sec": stats.images / max(stats.seconds, 1e-9),
        "bad_images": len(stats.bad), "skipped_steps": stats.skipped_steps,
    })
    if not math.isnan(stats.top1):  # an embed stage's pair loss has no class scores
        record["train_top1"] = stats.top1
    if parts.distill is not None:
        record["train_distill_loss"] = parts.distill.take_mean(parts.accelerator)
    previous = history[-1].get("groups_unfrozen") if history else None
    if previous is not None and trainable.groups_unfrozen != previous:
        record["event"] = f"unfreeze: {trainable.groups_unfrozen}/{trainable.groups_total} groups"
    return record, confusion


def _persist(setup: StageSetup, tracker: StopTracker, history: list[EpochRecord], card: ModelCard,
             confusion: list[list[int]] | None) -> None:
    """history.jsonl after every epoch; best weights, model.json and confusion on improvement."""
    record = history[-1]
    better = improved(setup.cfg, tracker, record)  # on every process: the tracker is shared state
    if not setup.parts.accelerator.is_main_process:
        return
    with writing(setup.cfg.out / HISTORY):
        write_history(setup.cfg.out, history)
    if better:
        _save_best(setup, card, record)
        if confusion is not None:
            write_confusion(setup.cfg.out, Confusion(setup.index.class_ids, record["epoch"], confusion))


def _decide_stop(setup: StageSetup, tracker: StopTracker, record: EpochRecord, clock: _Clock) -> str | None:
    """Step a plateau schedule, then the stop rules; a stop is remembered so that a resumed
    run does not train past it."""
    values: Mapping[str, Any] = record
    monitored = values.get(setup.cfg.monitor)
    setup.parts.schedule.epoch_end(float(monitored) if isinstance(monitored, (int, float)) else None)
    clock.update()
    # Rank 0 decides (clocks differ between processes) and every rank follows.
    reason = from_main(stop_reason(setup.cfg, tracker, record))
    if reason:
        tracker.stopped = reason
    return reason


def _save_best(setup: StageSetup, card: ModelCard, record: EpochRecord) -> None:
    save_weights(setup.saved_model, setup.cfg.out / BEST)
    with writing(setup.cfg.out / MODEL_CARD):
        write_model_card(setup.cfg.out, card.with_metrics(record))
    found = setup.val_predictions  # the validation pass of exactly these weights
    if found is not None:
        with writing(setup.cfg.out / VAL_PREDICTIONS):
            write_val_predictions(setup.cfg.out, found[0], found[1], found[2], setup.cfg.out / BEST)


@contextmanager
def _closing(logger: Any) -> Iterator[None]:
    try:
        yield
    finally:
        close_tracker(logger)


def _evaluate_start(setup: StageSetup, history: list[EpochRecord], rep: Reporter, card: ModelCard,
                    tracker: StopTracker) -> None:
    """Record epoch 0: the starting weights on the validation set, before any training. They are
    the best so far: a trained epoch must beat them to replace them in best.safetensors. A fresh
    embedding head is measured as the pretrained features it reads (a random projection of them
    would say nothing), which no weights file holds: that epoch 0 is a reference, not a candidate."""
    head = card.head
    fresh_embedding = task(setup.cfg.task).embeds and head.get("mode") in ("new", "reset")
    with pretrained_features(setup.model) if fresh_embedding else nullcontext():
        metrics = _validate(setup, rep)
    confusion = metrics.pop("confusion", None)
    event = ("start: pretrained features (the embedding head is new)" if fresh_embedding else
             f"start: head {head.get('mode')}, kept {head.get('kept', 0)}/{head.get('total')} rows")
    record = epoch_record({"epoch": 0, "image_size": setup.pre.image_size, **metrics, "event": event,
                           **({"head_bypassed": True} if fresh_embedding else {})})
    history.append(record)
    rep.message(f"before training: {val_summary(record)} ({event})")
    identities = record.get("val_identities")
    if isinstance(identities, int) and identities < FEW_IDENTITIES:
        rep.message(f"warning: only {identities} validation identities: the monitor "
                    f"({setup.cfg.monitor}) moves by whole identities and is a weak guide to unseen "
                    "ones; hold out more (val_fraction, a bigger val/ folder), or check with "
                    "stagewise evaluate --retrieval on identities of their own")
    better = not fresh_embedding and improved(setup.cfg, tracker, record)  # on every rank
    if setup.parts.accelerator.is_main_process:
        write_history(setup.cfg.out, history)
        if better:
            _save_best(setup, card, record)
        if confusion is not None:
            write_confusion(setup.cfg.out, Confusion(setup.index.class_ids, 0, confusion))


def _say_if_start_won(setup: StageSetup, tracker: StopTracker, history: list[EpochRecord],
                      rep: Reporter) -> None:
    """Training that only made things worse is said, not hidden behind a "best" trained epoch."""
    monitor = setup.cfg.monitor
    start = next((r for r in history if r.get("epoch") == 0), None)
    trained = trained_epochs(history)
    if start is None or not trained:
        return
    best_trained = best_record(trained, monitor)
    if tracker.best_epoch == 0:
        rep.message(f"warning: no trained epoch beat the starting weights on {monitor} "
                    f"({metric(monitor).format(start.get(monitor))}); best.safetensors keeps them (epoch 0)")
    elif start.get("head_bypassed") and metric(monitor).better(start.get(monitor), best_trained.get(monitor)):
        rep.message(f"warning: the pretrained features (epoch 0) retrieve better than any trained epoch "
                    f"on {monitor}: {metric(monitor).format(start.get(monitor))} against "
                    f"{metric(monitor).format(best_trained.get(monitor))}; best.safetensors holds the best "
                    "trained epoch, but the network without this head may serve you better")


def _validate(setup: StageSetup, rep: Reporter) -> dict[str, Any]:
    """`evaluate` on the validation loader, with a progress bar where the reporter draws them."""
    parts = setup.parts
    with bar(rep, "validating", len(parts.val_loader)) as advance:
        if task(setup.cfg.task).embeds:
            metrics = evaluate_embeddings(setup.eval_model, parts.val_loader, parts.accelerator,
                                          setup.cfg.channels_last, progress=advance)
        else:
            metrics = evaluate(setup.eval_model, parts.val_loader, parts.accelerator,
                               parts.num_classes, setup.cfg.channels_last, progress=advance)
    setup.val_predictions = metrics.pop("predictions", None)
    # The files the loader dropped, and those indexing skipped before they reached it.
    metrics["bad_val_images"] = int(metrics.get("bad_val_images", 0)) + setup.val_skipped
    return metrics


def _finite(model: nn.Module) -> bool:
    """Whether every weight is finite: one device sync, paid only when a checkpoint is saved."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def _checkpoint(setup: StageSetup, where: Resumable) -> None:
    """last/ from the main process; every process waits until it is on disk."""
    parts = setup.parts
    # The loss is checked only every few batches: a step checkpoint in between must not replace
    # the last good one with NaN weights (with a grad scaler such steps are skipped instead).
    if not _finite(setup.model):
        raise NonFiniteLoss(f"the weights became NaN/inf. {NON_FINITE_FIX}")
    rngs = all_objects(rng_state())  # every rank's: dropout, mixup and crops draw from them
    if parts.accelerator.is_main_process:
        save_last(setup.cfg.out / LAST, setup.model, parts.optimizer, parts.schedule,
                  parts.accelerator.scaler, parts.ema.module if parts.ema else None, where, rngs)
        keep_recent(setup.cfg.out / LAST, setup.cfg.out / CHECKPOINTS, where.global_step,
                    setup.cfg.keep_last)
    parts.accelerator.wait_for_everyone()


def _test_best(setup: StageSetup, rep: Reporter, epoch: int | None) -> HeldOutRecord | None:
    """The best weights, once, on the test split (a test/ folder or `split:`'s third share):
    test.json and `test_top1` in model.json. After the epochs, so it never chooses one."""
    samples = setup.index.splits.get("test")
    if samples is None or len(samples) == 0:
        return None
    from safetensors.torch import load_file

    cfg, parts = setup.cfg, setup.parts
    # The best epoch's weights, not the last one's: what best.safetensors (and model.json) hold.
    model = setup.saved_model
    model.load_state_dict(load_file(str(cfg.out / BEST), device=str(parts.accelerator.device)))
    dataset = ImageDataset(samples, build_transform(setup.pre, "none", False), cfg.seed, seeded=False)
    acc = parts.accelerator
    loader = make_loader(dataset, cfg.batch_size, False, cfg.seed, cfg.num_workers,
                         rank=acc.process_index, world=acc.num_processes,
                         pin_memory=acc.device.type == "cuda")
    with bar(rep, "testing", len(loader)) as advance:
        m = evaluate(model, loader, acc, parts.num_classes, cfg.channels_last, progress=advance)
    ids = setup.index.class_ids
    per_class = {ids[i]: row[i] / sum(row) for i, row in enumerate(m["confusion"]) if sum(row)}
    record = HeldOutRecord(top1=m["val_top1"], top5=m["val_top5"], loss=m["val_loss"],
                           images=m["val_images"], per_class=per_class,
                           bad_images=m["bad_val_images"], epoch=epoch)
    rep.message(f"test (best weights{f', epoch {epoch}' if epoch is not None else ''}): top1 "
                f"{record.top1:.4f} top5 {record.top5:.4f} on {record.images} images")
    if is_main_process():
        write_test(cfg.out, record)
        card = read_model_card(cfg.out / MODEL_CARD)
        with writing(cfg.out / MODEL_CARD):
            write_model_card(cfg.out, ModelCard(**{**asdict(card), "metrics": {
                **card.metrics, "test_top1": record.top1}}))
    wait_for_everyone()
    return record
