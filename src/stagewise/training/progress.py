"""How a run talks to the person (rich progress bars), to scripts (JSON lines), or not at all."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

from ..metrics import summary


class Reporter(Protocol):
    """What a stage reports to. Bars for other passes (validation, the LR sweep) go through
    `bar(rep, ...)`, which draws them only for the rich reporter."""

    def message(self, text: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None: ...
    def batch(self, done: int, loss: float, acc: float, lr: float) -> None: ...
    def epoch_end(self, record: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


class QuietReporter:
    """Prints nothing but warnings, to stderr."""

    def message(self, text: str) -> None:
        if text.startswith(("warning", "error")):
            print(text, file=sys.stderr)

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch(self, done: int, loss: float, acc: float, lr: float) -> None:
        pass

    def epoch_end(self, record: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class SilentReporter(QuietReporter):
    """Prints nothing at all (the other ranks of a multi-process run)."""

    def message(self, text: str) -> None:
        pass


class JsonReporter(QuietReporter):
    """One JSON object per line on stdout: messages and epoch records."""

    def message(self, text: str) -> None:
        print(json.dumps({"event": "message", "text": text, "time": time.time()}), flush=True)

    def epoch_end(self, record: Mapping[str, Any]) -> None:
        # "event" says what the line is; an epoch's own event (unfreezing) is its "note".
        line = {**record, "event": "epoch"}
        if record.get("event"):
            line["note"] = record["event"]
        print(json.dumps(line), flush=True)


class RichReporter:
    """A progress bar per epoch with live loss, accuracy, LR and ETA; a line per finished epoch."""

    def __init__(self, stage: str | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=False)
        self.stage = f"[{stage}] " if stage else ""
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=self.console, transient=True,
        )
        self.epoch_bar: Any = None  # not `self.task`: that would hide the task() method
        self.progress.start()

    def message(self, text: str) -> None:
        style = "yellow" if text.startswith("warning") else None
        self.console.print(f"{self.stage}{text}", style=style, markup=False, highlight=False,
                           soft_wrap=True)

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        if self.epoch_bar is not None:
            self.progress.remove_task(self.epoch_bar)
        self.epoch_bar = self.progress.add_task(f"{self.stage}epoch {epoch}/{epochs}", total=batches, stats="")

    def batch(self, done: int, loss: float, acc: float, lr: float) -> None:
        if self.epoch_bar is not None:
            self.progress.update(self.epoch_bar, completed=done,
                                 stats=f"loss {loss:.4f} acc {acc:.3f} lr {lr:.2e}")

    def epoch_end(self, record: Mapping[str, Any]) -> None:
        if self.epoch_bar is not None:
            self.progress.remove_task(self.epoch_bar)
            self.epoch_bar = None
        self.console.print(
            f"{self.stage}epoch {record['epoch']:>3}  {summary(record)} | "
            f"{record['epoch_seconds']:.1f}s {record['images_per_sec']:.0f} img/s | trainable "
            f"{record['trainable_params']:,}", highlight=False, soft_wrap=True,
        )

    @contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """A bar for set-up work (indexing, decode checks, caching) in this reporter's display:
        a second live display on the same terminal would overwrite this one."""
        handle = self.progress.add_task(f"{self.stage}{description}", total=total, stats="")
        try:
            def advance(n: int = 1) -> None:
                self.progress.advance(handle, n)

            yield advance
        finally:
            self.progress.remove_task(handle)

    def close(self) -> None:
        self.progress.stop()


def progress_of(rep: Reporter) -> Any:
    """What data functions take as `progress`: the reporter's own bars, or none."""
    return rep.task if isinstance(rep, RichReporter) else False


def bar(rep: Reporter, description: str, total: int | None) -> AbstractContextManager[Callable[..., None]]:
    """A progress bar for a pass that is not an epoch (validation, the LR sweep): yields its
    advance(n=1). Only the rich reporter draws one; JSON and quiet reporters stay silent."""
    if isinstance(rep, RichReporter):
        return rep.task(description, total)
    return nullcontext(_no_advance)


def _no_advance(n: int = 1) -> None:
    pass


def make_reporter(kind: str, stage: str | None = None) -> Reporter:
    """The reporter for `kind` (rich, json, quiet); ranks other than 0 print nothing (rank 0 says
    it once; errors still reach every rank's stderr through the CLI)."""
    from .distributed import is_main_process

    if not is_main_process():
        return SilentReporter()
    if kind == "quiet":
        return QuietReporter()
    if kind == "json":
        return JsonReporter()
    return RichReporter(stage)
