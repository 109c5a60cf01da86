"""File digests read in chunks, so a huge file never sits in memory (one 1.5 GB file took 2.2 GB)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def file_digest(path: Path, algorithm: str | Callable[[], Any]) -> str:
    """Hex digest of the file at `path`; `algorithm` is a hashlib name or a constructor.

    Example:
        >>> file_digest(Path("a.jpg"), "sha256")  # doctest: +SKIP
        '9f86d0...'
    """
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):  # Python 3.11+: reads into one reused buffer
            return hashlib.file_digest(f, algorithm).hexdigest()
        h = hashlib.new(algorithm) if isinstance(algorithm, str) else algorithm()
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        return h.hexdigest()


def _blake2b_128() -> Any:
    return hashlib.blake2b(digest_size=16)


def content_hash(path: Path) -> str:
    """The 128-bit BLAKE2b of a file: the identity `inspect` and the decoded cache give content."""
    return file_digest(path, _blake2b_128)
