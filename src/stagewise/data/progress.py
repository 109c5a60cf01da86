"""Optional progress bars for slow data work: indexing, checking, inspecting, caching.

Functions that may take a while accept `progress: Progress = False`:
- False: silent (library use, tests);
- True: a transient rich bar on stderr (stdout may carry JSON, as `data inspect --json` does);
- a task factory `(description, total) -> context manager yielding advance(n)`: lets a caller that
  already shows a live display (the trainer's reporter) host the task in it, since two live
  displays on one terminal overwrite each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

Advance = Callable[[int], None]
TaskFactory = Callable[[str, int | None], AbstractContextManager[Advance]]
Progress = bool | TaskFactory


def _ignore(n: int = 1) -> None:
    pass


@contextmanager
def task(progress: Progress, description: str, total: int | None = None) -> Iterator[Advance]:
    """A progress task for `description`; yields `advance(n)`. Total None: the count is unknown."""
    if progress is False or progress is None:
        yield _ignore
    elif progress is True:
        with rich_task(description, total) as advance:
            yield advance
    else:
        with progress(description, total) as advance:
            yield advance


@contextmanager
def rich_task(description: str, total: int | None = None) -> Iterator[Advance]:
    """One transient rich bar on stderr (it disappears when done and draws nothing off a terminal)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        handle = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(handle, n)

        yield advance
