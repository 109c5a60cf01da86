"""Your code at fixed points of a stage: `stagewise.train(..., callbacks=[MyCallback()])`.

A callback subclasses `Callback` and overrides the methods it needs (the others do nothing):

    class PrintTop1(stagewise.Callback):
        def on_epoch_end(self, record):
            print(record["epoch"], record["val_top1"])

Calls, in order: `on_stage_start(info)` once the network, data and checkpoint are ready (after a
resume's checkpoint has loaded); per epoch, after its record is written and its checkpoint saved,
`on_checkpoint(path, epoch)` then `on_epoch_end(record)`; `on_stage_end(result)` with the
TrainResult once the stage is done. An epoch's callbacks run after its checkpoint, so whatever a
callback does, last/ holds that epoch: a callback that raises stops the run with a
`CallbackError` naming it, and `resume=True` continues from there. A callback may stop the run on
purpose by raising `StopTraining` (same checkpoint, no error). With several processes
(torchrun), callbacks run on each: check `info.is_main` before writing files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import CallbackError, ConfigError
from ..runfolder import EpochRecord

if TYPE_CHECKING:
    from ..config.schema import TrainConfig


@dataclass(frozen=True)
class StageInfo:
    """What `on_stage_start` is told about the stage about to train."""

    config: TrainConfig
    model: nn.Module  # the network being trained (its weights change in place)
    run_dir: Path
    class_names: list[str]
    start_epoch: int  # 0-based: the first epoch still to train (> 0 after a resume)
    is_main: bool  # the process that writes the run folder


class Callback:
    """Base class of a stage's callbacks: every method does nothing unless overridden."""

    def on_stage_start(self, info: StageInfo) -> None:
        """The stage is set up and about to train its first remaining epoch."""

    def on_epoch_end(self, record: EpochRecord) -> None:
        """An epoch finished: `record` is its line of history.jsonl (epoch, train_loss,
        val_top1, lr, ...; runfolder.EpochRecord), already written and checkpointed."""

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        """last/ at `path` now holds the end of (1-based) `epoch`."""

    def on_stage_end(self, result: Any) -> None:
        """The stage ended (completed or stopped by a rule): `result` is its TrainResult."""


class StopTraining(Exception):  # noqa: N818 - read as a command, like StopIteration
    """Raised by a callback to end the stage after this epoch, as a stopping rule would."""


class Hooks:
    """The callbacks of one stage, called by the loop at its fixed points (stage.py)."""

    def __init__(self, callbacks: Sequence[Any] = ()) -> None:
        if not isinstance(callbacks, (list, tuple)):
            raise ConfigError(f"callbacks: expected a list of Callback instances, got {type(callbacks).__name__}")
        for cb in callbacks:
            if isinstance(cb, type):
                raise ConfigError(f"callbacks: {cb.__name__} is a class; pass an instance, {cb.__name__}()")
        self.callbacks = list(callbacks)

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def call(self, method: str, *args: Any, after: str = "") -> None:
        """Call `method` on every callback that has it; an error names the callback and says what
        is on disk (`after`: the checkpoint a resume continues from)."""
        for cb in self.callbacks:
            fn = getattr(cb, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except StopTraining:
                raise
            except Exception as exc:
                name = f"{type(cb).__name__}.{method}"
                raise CallbackError(
                    f"callback {name} raised {type(exc).__name__}: {exc}. The run stopped there"
                    + (f"; {after}" if after else "") + ". Fix the callback, then train again "
                    "with resume=True to continue") from exc
