"""Errors a user can act on. The CLI prints their message (no traceback) and exits with code 2."""

from __future__ import annotations

import reprlib


class StagewiseError(Exception):
    """Bad input: a config key, a file, a dataset or weights. The message says what to fix."""

    exit_code = 2


class ConfigError(StagewiseError):
    """A configuration key, value or file is invalid."""


class DataError(StagewiseError):
    """A dataset cannot be used as given."""


class WeightsError(StagewiseError):
    """Weights cannot be loaded safely or do not fit the model."""


# The exit code of a run stopped by its requeue signal (config `requeue_signal`) after saving:
# EX_TEMPFAIL of sysexits.h, "try again later", so a job script can tell it from a failure (1, 2)
# and from a plain SIGTERM/SIGINT stop (143/130).
REQUEUE_EXIT = 75


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM (or the requeue signal) arrived; a checkpoint was saved and the run can be
    resumed. `requeue`: the signal was the run's `requeue_signal`, and the exit code says so."""

    def __init__(self, signum: int, run_dir: object = None, resume_hint: str | None = None,
                 requeue: bool = False) -> None:
        super().__init__(signum, run_dir)
        self.signum = signum
        self.run_dir = run_dir
        self.requeue = requeue
        # The command that continues the run: set by whoever started it (runs/, cli/), since only
        # they know how it was started.
        self.resume_hint = resume_hint

    def __str__(self) -> str:
        where = f"; saved {self.run_dir}" if self.run_dir is not None else ""
        how = f"; resume with: {self.resume_hint}" if self.resume_hint else ""
        if self.requeue:
            return (f"stopped for requeue by signal {self.signum}{where}; exit code {REQUEUE_EXIT}"
                    f"{how}")
        return f"interrupted by signal {self.signum}{where}{how}"

    @property
    def exit_code(self) -> int:
        return REQUEUE_EXIT if self.requeue else 128 + self.signum


class RunStopped(StagewiseError):
    """A run stopped on an error after its folder was started; `resumable` when `--resume` can
    continue it, and then whoever started it sets `resume_hint` (only they know the command)."""

    def __init__(self, message: str, *, resumable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.resumable = resumable
        self.resume_hint: str | None = None

    def __str__(self) -> str:
        how = f"; resume with: {self.resume_hint}" if self.resume_hint and self.resumable else ""
        return f"{self.message}{how}"


class CheckpointError(RunStopped):
    """A checkpoint or the best weights could not be written, or read back on a resume."""


class NonFiniteLoss(RunStopped):
    """The loss (or the weights) became NaN/inf; the message says which checkpoint exists."""


class CallbackError(RunStopped):
    """A callback passed to stagewise.train raised: the run stopped there, its checkpoint intact
    (the message names the callback); not bad input, so not exit code 2."""

    exit_code = 1


class PeerLost(RunStopped):
    """Another process of a multi-process run died (or lost its connection) while this one
    waited for it in a collective: not bad input, so not exit code 2."""

    exit_code = 1


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 8
_REPR.maxlevel = 3


def shown(value: object, limit: int = 200) -> str:
    """`repr(value)` cut to about `limit` characters, for echoing user input in a message.

    reprlib stops at its own limits without walking the rest of the value, so even a huge or
    deeply shared value costs little to show.
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = 200) -> str:
    """`text` cut to at most `limit` characters, ending in '...' where cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
