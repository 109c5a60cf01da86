"""Index a dataset once, save it as arrays, and read it back at every later stage start and resume.

One process builds (whoever takes the cache file's lock first: rank 0 in practice, or any one
rank per node where the cache directory is node-local); the others wait on the lock and read the
result. The saved index is an `.npz` per (folder, layout, val_fraction, seed, verify) in
`index_cache_dir()`; what makes it stale is written down in `_signature` and docs/data-index.md.

`verify:` says what is opened while indexing (once, by the builder):
  none    nothing; a bad file is dropped and counted by the loader when it meets it.
  header  every image's header (a file that fails is skipped); the val split is decoded instead
          (at 1/8 scale), so that it is opened once and its bad files are known up front.
  decode  every image decoded at 1/8 scale; bad ones are skipped (val's are kept and counted).
  auto    header up to VERIFY_AUTO_LIMIT files, none above (defaults.py says why).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..defaults import VERIFY_AUTO_LIMIT
from ..errors import DataError
from .images import IMAGE_SUFFIXES, decode_error, header_ok, listing_only
from .index import DatasetIndex, Samples
from .progress import Advance, Progress, task
from .table import LabelArray, PathTable, pack_strings, relative_strings

log = logging.getLogger("stagewise")

FORMAT = 1  # bump when the saved arrays or their meaning change: old files are then rebuilt
# A folder changed this close before the build started may change again within the mtime's
# granularity (1-2 s on some filesystems) without its mtime moving: such an index is rebuilt.
_RACY_NS = 2_000_000_000
# Shared filesystems: one index serves every node. Elsewhere the same path on another host is
# another folder, so the host joins the key (multi-node runs on node-local copies).
_SHARED_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "cephfs", "ceph",
              "glusterfs", "fuse.sshfs", "wekafs", "9p")

Reader = Callable[[Path, float, int, Advance | None], DatasetIndex]
PickReader = Callable[[], tuple[str, Reader]]  # (layout name, its reader), detected when asked


@dataclass
class Indexed:
    """A dataset index and how it was obtained (`stagewise data index --json` prints these)."""

    index: DatasetIndex
    cached: bool  # read back from `path` (False: built now)
    seconds: float  # spent indexing (building, or reading back)
    path: Path
    verify: str  # the mode applied (auto resolved)

    @property
    def files(self) -> int:
        return sum(len(s) for s in self.index.splits.values())


def index_cache_dir() -> Path:
    """$STAGEWISE_INDEX_CACHE, else $STAGEWISE_CACHE_DIR/index, else ~/.cache/stagewise/index."""
    if os.environ.get("STAGEWISE_INDEX_CACHE"):
        return Path(os.environ["STAGEWISE_INDEX_CACHE"])
    if os.environ.get("STAGEWISE_CACHE_DIR"):
        return Path(os.environ["STAGEWISE_CACHE_DIR"]) / "index"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stagewise" / "index"


def resolve_verify(verify: str, files: int) -> str:
    """`auto` -> header for up to VERIFY_AUTO_LIMIT files, none above."""
    if verify == "auto":
        return "header" if files <= VERIFY_AUTO_LIMIT else "none"
    if verify not in ("none", "header", "decode"):
        raise DataError(f"verify: '{verify}' is not a mode; choose one of auto, none, header, decode")
    return verify


def saved_index(root: Path, fmt: str, pick: PickReader, val_fraction: float, seed: int,
                verify: str = "auto", progress: Progress = False, refresh: bool = False,
                cache_dir: Path | None = None) -> Indexed:
    """The index of `root` read by `reader`: read back when saved and current, else built (by one
    process: the others wait for it) and saved. `refresh` rebuilds it whatever its state."""
    start = time.perf_counter()
    root = Path(root).absolute()  # the saved paths are relative to it: any working directory
    path = _cache_file(root, fmt, val_fraction, seed, verify, cache_dir or index_cache_dir())
    node_local = not _on_shared_fs(root.resolve())
    if not refresh and (found := _read_current(path)) is not None:
        return Indexed(found[0], True, time.perf_counter() - start, path, found[1])
    with _build_lock(path) as exclusive:
        if not exclusive:  # no lock on this filesystem: rank 0 builds, the others wait for it
            if (found := _wait_for(path, node_local)) is not None:
                return Indexed(found[0], True, time.perf_counter() - start, path, found[1])
        elif not refresh and (found := _read_current(path)) is not None:  # built while we waited
            return Indexed(found[0], True, time.perf_counter() - start, path, found[1])
        index, mode, signature = _build(root, pick()[1], val_fraction, seed, verify, progress)
        _write(path, index, mode, signature)
    log.info("indexed %s: %d files (verify: %s) in %.1fs, saved to %s", root,
             sum(len(s) for s in index.splits.values()), mode, time.perf_counter() - start, path)
    saved = _read(path)  # what every later read sees: the same arrays, not the reader's lists
    return Indexed(saved[0] if saved else index, False, time.perf_counter() - start, path, mode)


def _cache_file(root: Path, fmt: str, val_fraction: float, seed: int, verify: str,
                cache_dir: Path) -> Path:
    key = {"root": str(root), "format": fmt, "version": FORMAT, "val_fraction": val_fraction, "seed": seed,
           "verify": verify}
    if not _on_shared_fs(root.resolve()):
        key["host"] = socket.gethostname()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{root.name or 'root'}-{digest}.npz"


def _on_shared_fs(path: Path) -> bool:
    """Whether `path` lies on a network filesystem (by the longest mount point in /proc/mounts)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return False
    best, kind = "", ""
    for point, fstype in mounts:
        if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) > len(best):
            best, kind = point, fstype
    return kind in _SHARED_FS or kind.startswith("fuse.") and kind != "fuse.overlay"


# ---- building ------------------------------------------------------------------------------

def _build(root: Path, reader: Reader, val_fraction: float, seed: int, verify: str,
           progress: Progress) -> tuple[DatasetIndex, str, dict]:
    started = time.time_ns()
    with listing_only(), task(progress, f"indexing {root.name or root}") as advance:
        index = reader(root, val_fraction, seed, advance)
    mode = resolve_verify(verify, sum(len(s) for s in index.splits.values()))
    listed = {name: s for name, s in index.splits.items() if s.paths is not None}
    per_split: dict[str, int] = {}
    val_bad: dict[str, str] = {}
    skipped = list(index.skipped)
    for name, samples in listed.items():
        bad = _check(samples, "decode" if name == "val" and mode != "none" else mode, progress, name)
        # val keeps the files that open but do not decode: evaluation counts them as bad images
        # (as before this index existed); elsewhere a file that fails its check is skipped.
        gone = {i for i in bad if name != "val" or not header_ok(Path(samples.describe(i)))}
        if name == "val":
            val_bad = {samples.describe(i): bad[i] for i in bad if i not in gone}
        skipped += [samples.describe(i) for i in sorted(gone)]
        per_split[name] = len(gone)
        if gone:
            index.splits[name] = samples.subset([i for i in range(len(samples)) if i not in gone])
    if "val" in listed and val_bad and len(val_bad) == len(index.splits["val"]):
        first, error = next(iter(val_bad.items()))
        raise DataError(f"{root}: none of the {len(val_bad)} images of the 'val' split can be "
                        f"decoded (e.g. {first}: {error}); replace or re-download them "
                        f"(`stagewise data inspect {root}` lists every bad file)")
    index.skipped = skipped
    index.skipped_per_split = per_split
    index.val_bad = val_bad if "val" in listed else None
    index.verified = mode
    names: list[str] = []
    for name in listed:  # arrays now: each path is turned into a string once
        rels = relative_strings(root, index.splits[name].paths or [])
        index.splits[name] = Samples(labels=LabelArray(list(index.splits[name].labels)),
                                     paths=PathTable(root, *pack_strings(rels)))
        names += rels
    signature = _signature(root, names + relative_strings(root, [Path(p) for p in skipped]),
                           per_file=mode != "none", started=started)
    return index, mode, signature


def _check(samples: Samples, mode: str, progress: Progress, split: str) -> dict[int, str]:
    """{sample index: why it fails} under `mode`."""
    if mode == "none" or samples.paths is None:
        return {}
    paths = samples.paths
    if mode == "decode":
        fn: Callable[[Path], str | None] = decode_error
    else:
        def fn(p: Path) -> str | None:
            return None if header_ok(p) else "unreadable header"
    bad: dict[int, str] = {}
    workers = max(1, min(8, os.cpu_count() or 1))
    with task(progress, f"checking {split} ({mode})", len(paths)) as advance, \
            ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
        for i, error in enumerate(pool.map(fn, paths, chunksize=64)):
            advance(1)
            if error is not None:
                bad[i] = error
    return bad


def _signature(root: Path, names: Sequence[str], per_file: bool, started: int) -> dict:
    """What must not have changed for the saved index to hold.

    - the mtime of every folder holding indexed files, and of the folders above them up to
      `root`: adding, removing or renaming a file or class folder changes its folder's mtime;
    - in those upper folders, each sub-folder's mtime and each other file's size and mtime (label
      files such as LOC_val_solution.csv or wnids.txt; a new empty class folder);
    - with verify: header/decode, every file's size and mtime too (what was checked is content).
    Not seen with verify: none: a file's content rewritten in place under the same name.
    """
    base = root if root.is_dir() else root.parent
    parents = {n.rpartition("/")[0] for n in names}
    uppers = {""}
    for d in parents:
        if d.startswith("/"):  # outside root (a CSV manifest's absolute paths): its folder only
            continue
        parts = d.split("/") if d else []
        uppers.update("/".join(parts[:k]) for k in range(len(parts)))
    dirs = {d: _mtime(base / d) for d in parents | uppers}
    files: dict[str, list[int]] = {}
    if not root.is_dir():
        st = root.stat()
        files[root.name] = [st.st_size, st.st_mtime_ns]
    for upper in uppers:
        try:
            with os.scandir(base / upper) as it:
                for e in it:
                    rel = f"{upper}/{e.name}" if upper else e.name
                    if e.is_dir():
                        dirs[rel] = e.stat().st_mtime_ns
                    elif os.path.splitext(e.name)[1].lower() not in IMAGE_SUFFIXES:
                        st = e.stat()
                        files[rel] = [st.st_size, st.st_mtime_ns]
        except OSError:
            continue
    return {"base": str(base), "dirs": dirs, "files": files, "started": started,
            "per_file": list(names) if per_file else None}


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def _file_stats(base: Path, names: Sequence[str]) -> np.ndarray:
    out = np.full((len(names), 2), -1, dtype=np.int64)
    for i, n in enumerate(names):
        try:
            st = os.stat(os.path.join(base, n))
            out[i] = st.st_size, st.st_mtime_ns
        except OSError:
            pass
    return out


# ---- saving and reading back ---------------------------------------------------------------

def _write(path: Path, index: DatasetIndex, mode: str, signature: dict) -> None:
    arrays: dict[str, np.ndarray] = {}
    for name, samples in index.splits.items():
        if samples.paths is None:
            continue
        compact = samples.compact(index.root)
        table = compact.paths
        assert isinstance(table, PathTable) and isinstance(compact.labels, LabelArray)
        arrays[f"{name}.blob"], arrays[f"{name}.offsets"] = table.blob, table.offsets
        arrays[f"{name}.labels"] = compact.labels.array
    per_file = signature.pop("per_file")
    base = Path(signature["base"])
    if per_file is not None:
        arrays["sig.blob"], arrays["sig.offsets"] = pack_strings(per_file)
        arrays["sig.stats"] = _file_stats(base, per_file)
    meta = {"format": FORMAT, "root": str(index.root), "layout": index.layout,
            "class_ids": index.class_ids, "class_names": index.class_names,
            "eval_ids": index.eval_ids, "skipped": index.skipped,
            "skipped_per_split": index.skipped_per_split, "val_bad": index.val_bad,
            "verify": mode, "signature": signature,
            "built_by": {"host": socket.gethostname(), "pid": os.getpid(),
                         "rank": os.environ.get("RANK")}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    # Written to a temporary name and renamed, without fsync: a cache, not a record. After a
    # crash a torn file fails to load (or its meta to parse) and is simply built again.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:  # a file object: np.savez would append .npz to a name
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _read(path: Path) -> tuple[DatasetIndex, str, dict, dict[str, np.ndarray]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes())
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # missing, or left by an older version: rebuilt
    if meta.get("format") != FORMAT:
        return None
    root = Path(meta["root"])
    splits = {}
    for key in arrays:
        if key.endswith(".labels"):
            name = key[: -len(".labels")]
            splits[name] = Samples(labels=LabelArray(arrays[key]), paths=PathTable(
                root, arrays[f"{name}.blob"], arrays[f"{name}.offsets"]))
    index = DatasetIndex(root=root, layout=meta["layout"], class_ids=meta["class_ids"],
                         class_names=meta["class_names"], splits=splits, skipped=meta["skipped"],
                         eval_ids=meta["eval_ids"], val_bad=meta["val_bad"],
                         verified=meta["verify"], skipped_per_split=meta["skipped_per_split"])
    return index, meta["verify"], meta, arrays


def _read_current(path: Path) -> tuple[DatasetIndex, str] | None:
    """The saved index at `path` if it is there and its folder has not changed since."""
    found = _read(path)
    if found is None:
        return None
    index, mode, meta, arrays = found
    return (index, mode) if _unchanged(meta["signature"], arrays) else None


def _unchanged(sig: dict, arrays: dict[str, np.ndarray]) -> bool:
    base, newest = sig["base"], sig["started"] - _RACY_NS
    join, stat = os.path.join, os.stat
    try:
        for d, mtime in sig["dirs"].items():
            if mtime > newest or stat(join(base, d)).st_mtime_ns != mtime:
                return False
    except OSError:
        return False
    for f, (size, mtime) in sig["files"].items():
        try:
            st = stat(join(base, f))
        except OSError:
            return False
        if mtime > newest or (st.st_size, st.st_mtime_ns) != (size, mtime):
            return False
    if "sig.stats" in arrays:
        names = PathTable(base, arrays["sig.blob"], arrays["sig.offsets"]).strings()
        stats = arrays["sig.stats"]
        if (stats[:, 1] > newest).any() or not np.array_equal(_file_stats(Path(base), names), stats):
            return False
    return True


# ---- one builder ---------------------------------------------------------------------------

@contextmanager
def _build_lock(path: Path) -> Iterator[bool]:
    """An exclusive lock beside the cache file (yields True), held while one process builds; the
    others block on it, then find the index built. Where the filesystem has no locks (NFS/Lustre
    mounted without them: ENOLCK, EOPNOTSUPP) it yields False and `_wait_for` takes over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("%s: no file locks on this filesystem; rank 0 builds the index", path.parent)
            locked = False
        yield locked
    finally:
        os.close(fd)  # releases the lock


def _wait_for(path: Path, node_local: bool,
              timeout: float = 6 * 3600.0) -> tuple[DatasetIndex, str] | None:
    """Without locks: rank 0 builds (local rank 0 on each node for a node-local folder, whose
    key holds the host); the others poll for the index to appear."""
    rank = int(os.environ.get("LOCAL_RANK" if node_local else "RANK", "0"))
    if rank == 0:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := _read_current(path)) is not None:
            return found
        time.sleep(1.0)
    raise DataError(f"{path}: rank {rank} waited {timeout:.0f}s for rank 0 to build the index")
