"""Cluster operations: the lock on filesystems without flock, --resume auto, the requeue signal,
keep_last checkpoints, every rank's RNG state, and resuming at another world size."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from stagewise.lock import LOCK, LockUnsupportedWarning, held_by_other, run_lock


def test_lock_degrades_with_a_warning_where_the_filesystem_cannot_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "run"
    with pytest.warns(LockUnsupportedWarning, match="does not support file locks.*only one job"):
        with run_lock(out, "stage"):
            (out / "config.yaml").write_text("x: 1\n")
    assert (out / LOCK).is_file()
    with pytest.warns(LockUnsupportedWarning):
        assert held_by_other(out) is None  # nothing can say who holds it: treated as free


def test_lock_errors_other_than_no_locking_still_propagate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    def broken(fd: int, op: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fcntl, "flock", broken)
    with pytest.raises(OSError, match="I/O error"), run_lock(tmp_path / "run", "stage"):
        pass
