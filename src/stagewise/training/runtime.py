"""Device and precision: Accelerate does the work; this module decides what `auto` means."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from .distributed import cpu_only

_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def auto_precision() -> str:
    """Reduced precision only where it is fast: CUDA (bf16 if supported, else fp16).

    CPUs stay fp32: on the 2-core CPUs we develop on, bf16 matmul measured ~500x slower than
    fp32, and MPS autocast gives little for these models.
    """
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def make_accelerator(precision: str, freezes: bool = False) -> Accelerator:
    """A fresh Accelerator per stage (stages may differ in precision).

    Gradient accumulation is done by the loop (loop.py), not by Accelerate, so no window counter
    of Accelerate's is part of the resumable state. `freezes`: the strategy freezes parameters
    after the model is wrapped (probe, gradual, freeze_epochs, freeze patterns); with several
    processes DDP must then accept parameters without gradients, or its buckets wait for them.
    Every parameter is trainable when DDP registers them, so one unfrozen later is reduced too.
    """
    from accelerate.state import AcceleratorState, GradientState

    chosen = auto_precision() if precision == "auto" else precision
    if chosen == "fp16" and not torch.cuda.is_available():
        chosen = "fp32"  # fp16 autocast with a grad scaler needs a GPU; the CPU path is fp32
    # Accelerate keeps process-wide singletons and refuses a second Accelerator with another
    # precision; the reset is private API, so tests/test_runtime.py pins that it still works
    # (two stages of one process with different precisions each get their own).
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if freezes else []
    return Accelerator(mixed_precision=_PRECISION[chosen], step_scheduler_with_optimizer=False,
                       cpu=cpu_only(), kwargs_handlers=handlers)
