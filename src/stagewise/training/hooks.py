"""A per-epoch hook: code outside the loop (a hyperparameter search's pruner) sees each epoch's
record and may stop the stage, the way early stopping does: the epoch is saved, the stop
remembered (a resume does not train past it) and the run folder is a normal one.

The hook is installed for a block of code (`epoch_hook`), not passed down: `stagewise tune` runs
stages through `runs.train` and `runs.pipeline.run` unchanged. It runs on the main process only
(the stop is shared with the other ranks by the caller).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ..config.schema import TrainConfig
from ..runfolder import EpochRecord

# (the stage's config, the epoch's record) -> a reason to stop, or None to go on.
EpochHook = Callable[[TrainConfig, EpochRecord], "str | None"]
_HOOKS: ContextVar[tuple[EpochHook, ...]] = ContextVar("stagewise_epoch_hooks", default=())


@contextmanager
def epoch_hook(hook: EpochHook) -> Iterator[None]:
    """Call `hook` after every trained epoch of the stages run inside the block."""
    token = _HOOKS.set((*_HOOKS.get(), hook))
    try:
        yield
    finally:
        _HOOKS.reset(token)


def hook_stop(cfg: TrainConfig, record: EpochRecord) -> str | None:
    """Every installed hook sees the record; the first reason to stop wins."""
    reasons = [hook(cfg, record) for hook in _HOOKS.get()]
    return next((r for r in reasons if r), None)
