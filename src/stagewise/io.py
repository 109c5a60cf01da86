"""Atomic file writes: a crash at any instant leaves the old file or the new one, never a torn one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; the result is a normal file
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Atomically write a file produced by `writer(tmp_path)` (e.g. safetensors' save_file)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def replace_dir(build: Callable[[Path], None], target: Path) -> None:
    """Build a folder next to `target`, then swap it in.

    Two renames cannot be atomic together; a crash between them leaves `<target>.old`, which
    `existing_dir` falls back to, so a reader always finds one complete folder.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.new")
    old = target.with_name(f"{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-built folder (a full disk) frees its space
        raise
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def existing_dir(target: Path) -> Path | None:
    """The complete folder written by `replace_dir`, or None."""
    target = Path(target)
    if target.is_dir():
        return target
    old = target.with_name(f"{target.name}.old")
    return old if old.is_dir() else None


# The names the writers above leave behind when killed mid-write: mkstemp's `.<name>.XXXXXXXX.tmp`
# (8 characters of tempfile's alphabet) and replace_dir's `.<name>.new`. Nothing else matches.
_TMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def remove_leftovers(folder: Path, dirs: tuple[str, ...] = ()) -> list[Path]:
    """Remove what an interrupted write left in `folder`; returns what was removed.

    Call it only while holding the folder (no writer can be running). `dirs` are the targets
    of `replace_dir` here: their `.<name>.new` is always partial, and their `<name>.old` is a
    stale copy once `<name>` exists (replace_dir renames only complete folders into place).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()
               and _TMP_FILE.match(p.name)]
    for name in dirs:
        new, old = folder / f".{name}.new", folder / f"{name}.old"
        removed += [d for d in (new,) if d.is_dir() and not d.is_symlink()]
        if (folder / name).is_dir() and old.is_dir() and not old.is_symlink():
            removed.append(old)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
