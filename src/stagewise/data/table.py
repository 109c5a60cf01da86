"""Compact, array-backed sample lists: paths as one UTF-8 blob + offsets, labels as int32.

A list of 1.28M `pathlib.Path` objects costs ~424 B per file, and every access from a forked
data-loader worker writes to the object's reference count, so the pages holding them are copied
into each worker (~1 GB per worker at ImageNet scale). Here a split is three numpy arrays (one
bytes blob of relative paths, int64 offsets, int32 labels: ~50 B per file, read-only after fork);
`Path` and `int` objects are built on access and die with it. Both classes behave as read-only
sequences, so code written for lists (`paths[i]`, `len`, iteration, `zip`) keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np


def pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(blob uint8, offsets int64 of length n + 1) holding `strings` as UTF-8."""
    encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    if encoded:
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return blob, offsets


class PathTable(Sequence[Path]):
    """`root / relative path` for each file, stored as one blob; `table[i]` is a `Path`.

    A path outside `root` is stored whole (absolute): `root / absolute` is that absolute path.
    """

    def __init__(self, root: Path | str, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.root = str(root)
        self.blob = blob
        self.offsets = offsets

    @classmethod
    def from_paths(cls, root: Path, paths: Sequence[Path]) -> PathTable:
        return cls(root, *pack_strings(relative_strings(root, paths)))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def relative(self, i: int) -> str:
        """The stored (root-relative) string of item `i`."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.blob[lo:hi].tobytes().decode("utf-8", "surrogateescape")

    @overload
    def __getitem__(self, i: int) -> Path: ...
    @overload
    def __getitem__(self, i: slice) -> PathTable: ...
    def __getitem__(self, i: int | slice) -> Path | PathTable:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return Path(self.root, self.relative(i))

    def __iter__(self) -> Iterator[Path]:
        for i in range(len(self)):
            yield Path(self.root, self.relative(i))

    def strings(self) -> list[str]:
        """Every stored relative string (for comparisons and maps; builds n Python objects)."""
        data = self.blob.tobytes()
        off = self.offsets.tolist()
        return [data[off[i]:off[i + 1]].decode("utf-8", "surrogateescape") for i in range(len(self))]

    def take(self, indices: Sequence[int] | np.ndarray) -> PathTable:
        """The items at `indices`, in that order, as a new table."""
        idx = np.asarray(indices, dtype=np.int64)
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        lengths = ends - starts
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if len(idx) == 0:
            return PathTable(self.root, np.zeros(0, dtype=np.uint8), offsets)
        # Gather each item's byte range in one vectorised step: position j of the output reads
        # blob[start of its item + its offset within the item].
        owner = np.repeat(np.arange(len(idx)), lengths)
        within = np.arange(offsets[-1]) - offsets[:-1][owner]
        return PathTable(self.root, self.blob[starts[owner] + within], offsets)

    def same_as(self, other: PathTable) -> bool:
        return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.blob, other.blob)


class LabelArray(Sequence[int]):
    """int32 labels; `labels[i]` is a Python int (JSON-safe), the array stays untouched."""

    def __init__(self, values: np.ndarray | Sequence[int]) -> None:
        self.array = np.asarray(values, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.array)

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> LabelArray: ...
    def __getitem__(self, i: int | slice) -> int | LabelArray:
        if isinstance(i, slice):
            return LabelArray(self.array[i])
        return int(self.array[i])

    def __iter__(self) -> Iterator[int]:
        return iter(self.array.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (LabelArray, list, tuple, np.ndarray)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def take(self, indices: Sequence[int] | np.ndarray) -> LabelArray:
        return LabelArray(self.array[np.asarray(indices, dtype=np.int64)])


def relative_strings(root: Path, paths: Sequence[Path]) -> list[str]:
    """Each path relative to `root` as a string ('/'-separated), or whole where outside it."""
    prefix = str(root).rstrip("/") + "/"
    if isinstance(paths, PathTable):  # its strings, re-rooted: no Path object per item
        if paths.root.rstrip("/") + "/" == prefix:
            return paths.strings()
        if (paths.root.rstrip("/") + "/").startswith(prefix):
            inner = paths.root.rstrip("/")[len(prefix):] + "/"
            return [s if s.startswith("/") else inner + s for s in paths.strings()]
        full = (str(Path(paths.root, s)) for s in paths.strings())
        return [f[len(prefix):] if f.startswith(prefix) else f for f in full]
    out = []
    for p in paths:
        s = str(p)
        out.append(s[len(prefix):] if s.startswith(prefix) else s)
    return out
