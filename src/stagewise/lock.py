"""One run per folder: an exclusive lock on the run folder, taken before anything is written.

`fcntl.flock` belongs to the open file, so the kernel releases it when its process dies however it
dies (SIGKILL included): a lock left by a killed run is simply free, and the next run takes it
over. The lock file holds the holder's PID, so that a refused run can name it, and the kind of
run the folder holds ("stage", "pipeline", "compare"): written by stagewise and never deleted
from a folder that holds a run, it is the proof that the folder is ours. A file's name is no
such proof (a user's own `config.yaml` or `history.jsonl` has the same name as ours); a folder
from before the lock recorded its kind is recognised by what its files hold (`proof`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import ConfigError

LOCK = ".stagewise.lock"
# What a stagewise folder may hold before its first run has written anything that marks it.
_OURS = {LOCK}


# What flock raises on a filesystem that cannot lock (NFS mounted with nolock, some Lustre and
# FUSE mounts): no lock is possible there, which is not the same as "another run holds it".
_NO_LOCKING = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)


class LockUnsupportedWarning(RuntimeWarning):
    """The run folder's filesystem has no flock: one run per folder is then on the user."""


def _flock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one run per folder is then on the user
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LOCKING:
            raise
        # Degrade rather than refuse: a cluster's shared scratch is often mounted without
        # locking, and refusing every run there would leave the user no way to train at all.
        warnings.warn(
            f"the filesystem of {_fd_path(fd)} does not support file locks ({os.strerror(exc.errno)}): "
            "stagewise cannot stop a second run from writing the same folder; make sure only one "
            "job uses this --out at a time (docs/clusters.md)", LockUnsupportedWarning, stacklevel=3)
        return True
    return True


def _fd_path(fd: int) -> str:
    """The file behind `fd`, for a message ("?" where /proc is not there to say)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "the run folder"


@contextlib.contextmanager
def run_lock(folder: Path, kind: str, proof: Callable[[Path], bool] | None = None) -> Iterator[None]:
    """Hold `folder` for this process; exit 2 if another process holds it, or if the folder has
    files that are not a stagewise run of this `kind` (`proof(folder)`: whether its files, read,
    are such a run; the lock file's recorded kind is proof enough).

    A folder this call created and that the run left empty (it failed before writing anything)
    is removed again, so that a failed start leaves nothing behind.
    """
    folder = Path(folder)
    refuse_foreign(folder, kind, proof)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = _take(folder)
    try:
        # Written whole, then cut to length: a reader never sees the file empty (refuse_foreign).
        text = f"{os.getpid()}\n{kind}\n".encode()
        os.pwrite(fd, text, 0)
        os.ftruncate(fd, len(text))
        yield
    finally:
        # Cleaned up while still held, so no other process can take a lock file about to vanish.
        if created and {p.name for p in folder.iterdir()} <= _OURS:
            with contextlib.suppress(OSError):
                (folder / LOCK).unlink()
                folder.rmdir()
        os.close(fd)


def held_by_other(folder: Path) -> str | None:
    """The PID (as text) of another process holding `folder`'s lock, or None when it is free.
    For commands that write into a run folder without training it (report, evaluate)."""
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _flock(fd):
            return None
        return _holder(fd)
    finally:
        os.close(fd)  # closing the descriptor releases a lock this probe took


def running_in(folder: Path) -> tuple[Path, str] | None:
    """(the locked folder, its holder's PID) when another process holds `folder` or the run
    folder around it (a pipeline's stages/NAME, a comparison's cells/NAME), else None."""
    folder = Path(folder).resolve()
    around = [folder.parent.parent] if folder.parent.name in ("stages", "cells", "baselines") else []
    for candidate in (folder, *around):
        holder = held_by_other(candidate)
        if holder is not None and holder != str(os.getpid()):
            return candidate, holder
    return None


def refuse_if_running(folder: Path, command: str) -> None:
    """For commands that write into a run folder without training it (report, evaluate): exit 2
    while a training holds the folder, whose files change under it."""
    found = running_in(folder)
    if found is not None:
        where, pid = found
        raise ConfigError(f"{where} is being trained by another stagewise process (PID {pid}); "
                          f"{command} would write into it while its files change: wait for the "
                          f"run to finish (or stop it), then run {command} again")


def _holder(fd: int) -> str:
    return os.pread(fd, 64, 0).decode(errors="replace").split("\n", 1)[0].strip() or "?"


def recorded_kind(folder: Path) -> str | None:
    """The kind of run the lock file of `folder` records (None: no lock file, or one without)."""
    try:
        lines = (Path(folder) / LOCK).read_text(errors="replace").splitlines()
    except OSError:
        return None
    return lines[1].strip() if len(lines) > 1 and lines[1].strip() else None


def _take(folder: Path) -> int:
    """An open, locked descriptor of folder/LOCK (exit 2 naming the holder if it is taken).

    A holder that was cleaning up may have unlinked the file we opened: a lock on it would hold
    nothing, so the path is checked to still be that file, and opened again if not.
    """
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _flock(fd):
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(f"{folder} is in use by another stagewise process (PID {holder}); "
                              "wait for it to finish, or choose another --out")
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
        os.close(fd)


def refuse_foreign(folder: Path, kind: str, proof: Callable[[Path], bool] | None = None) -> None:
    """A non-empty folder that is not a stagewise run of this kind is the user's (or another
    kind of run's): never write into it."""
    if not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir()}
    if not names - _OURS:
        return
    recorded = recorded_kind(folder)
    if recorded == kind or (recorded is None and proof is not None and proof(folder)):
        return
    shown = ", ".join(sorted(names - _OURS)[:5])
    if recorded is not None:
        raise ConfigError(f"{folder} holds a stagewise {recorded} run, not a {kind} run ({shown}); "
                          "choose an empty or new folder for --out")
    raise ConfigError(f"{folder} holds other files ({shown}) and is not a stagewise run (none of "
                      f"them is what a {kind} run writes); nothing was written there: choose an "
                      "empty or new folder for --out")
