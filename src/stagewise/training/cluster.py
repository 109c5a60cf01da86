"""What running on a shared cluster adds to a stage: the requeue signal, and resuming with
another number of processes at an epoch boundary (the global batch kept by adjusting the
gradient accumulation).

Where the rest lives: the lock that degrades on filesystems without flock is `lock.py`; kept
checkpoints (`keep_last`) and every rank's RNG state are `checkpoint.py`; `--resume auto` and the
"already complete" answer are the run's (`runs/single.py`, `runs/pipeline.py`).
"""

from __future__ import annotations

import signal
from pathlib import Path

from ..config.schema import TrainConfig
from ..errors import ConfigError
from .checkpoint import saved_layout


def requeue_signal(cfg: TrainConfig) -> signal.Signals | None:
    """The signal that saves and exits for a requeue (config `requeue_signal`), or None."""
    name = cfg.requeue_signal
    return None if name == "none" else signal.Signals[name]


def fit_world(cfg: TrainConfig, last: Path, world: int) -> TrainConfig:
    """`cfg` with the gradient accumulation that resumes the checkpoint in `last` at `world`
    processes with its global batch (processes x batch_size x grad_accum) unchanged.

    Each process's share of an epoch depends on the number of processes, so a checkpoint from
    the middle of an epoch resumes only with the number that saved it; one from an epoch's end
    resumes with any number that divides its global batch. Anything else is refused (exit 2)
    with the arithmetic, before anything is built.
    """
    layout = saved_layout(last)
    if layout is None:
        return cfg
    saved_world, saved_accum, batches_done = layout
    saved_accum = saved_accum or cfg.grad_accum  # a checkpoint from before it was recorded
    if saved_world == world:
        return cfg if saved_accum == cfg.grad_accum else cfg.model_copy(update={"grad_accum": saved_accum})
    if batches_done:
        raise ConfigError(
            f"{last} was saved in the middle of an epoch (after batch {batches_done}) by "
            f"{saved_world} process(es), and this run has {world}: each process's share of an epoch "
            f"depends on that number, so resume with {saved_world} (torchrun --nproc_per_node, over "
            "all nodes). A checkpoint saved at an epoch's end resumes with another number")
    batch = cfg.batch_size
    global_batch = saved_world * batch * saved_accum
    per_step = world * batch
    if global_batch % per_step:
        fits = [n for n in range(1, global_batch // batch + 1) if (global_batch // batch) % n == 0]
        raise ConfigError(
            f"{last} was trained with global batch {saved_world} process(es) x batch {batch} x "
            f"grad_accum {saved_accum} = {global_batch}; with {world} process(es) x batch {batch} = "
            f"{per_step} per micro-step, grad_accum would be {global_batch} / {per_step} = "
            f"{global_batch / per_step:.3g}, not a whole number. Resume with a number of processes "
            f"that divides {global_batch // batch} ({', '.join(map(str, fits))}), or start a new run")
    return cfg.model_copy(update={"grad_accum": global_batch // per_step})
