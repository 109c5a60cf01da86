"""One run per folder: an exclusive lock on the run folder, taken before anything is written.

`fcntl.flock` belongs to the open file, so the kernel releases it when its process dies however it
dies (SIGKILL included): a lock left by a killed run is simply free, and the next run takes it
over. The lock file holds the holder's PID so that a refused run can name it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError

LOCK = ".stagewise.lock"
# What a stagewise folder may hold before its first run has written anything that marks it.
_OURS = {LOCK}


def _flock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one run per folder is then on the user
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def run_lock(folder: Path, markers: tuple[str, ...]) -> Iterator[None]:
    """Hold `folder` for this process; exit 2 if another process holds it, or if the folder has
    files of the user's that are not a stagewise run (`markers` are the files that make one).

    A folder this call created and that the run left empty (it failed before writing anything)
    is removed again, so that a failed start leaves nothing behind.
    """
    folder = Path(folder)
    refuse_foreign(folder, markers)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = _take(folder)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Cleaned up while still held, so no other process can take a lock file about to vanish.
        if created and {p.name for p in folder.iterdir()} <= _OURS:
            with contextlib.suppress(OSError):
                (folder / LOCK).unlink()
                folder.rmdir()
        os.close(fd)


def _take(folder: Path) -> int:
    """An open, locked descriptor of folder/LOCK (exit 2 naming the holder if it is taken).

    A holder that was cleaning up may have unlinked the file we opened: a lock on it would hold
    nothing, so the path is checked to still be that file, and opened again if not.
    """
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _flock(fd):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{folder} is in use by another stagewise process (PID {holder}); "
                              "wait for it to finish, or choose another --out")
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
        os.close(fd)


def refuse_foreign(folder: Path, markers: tuple[str, ...]) -> None:
    """A non-empty folder that is not a stagewise run is the user's: never write into it."""
    if not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir()}
    if names - _OURS and not names & set(markers):
        shown = ", ".join(sorted(names - _OURS)[:5])
        raise ConfigError(f"{folder} holds other files ({shown}) and is not a stagewise run; "
                          "choose an empty or new folder for --out")
