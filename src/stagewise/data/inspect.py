"""`stagewise data inspect`: what a dataset holds and what is wrong with it, before training.

Reads every file: its content hash in chunks (exact duplicates, and leakage when a duplicate sits
in two splits), a full decode (files that would be skipped mid-epoch), its mode and its size as
training sees it (after the EXIF orientation is applied).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .hashing import content_hash
from .images import BAD_IMAGE_ERRORS, open_source, oriented_size
from .index import DatasetIndex, Samples
from .layouts import load_dataset
from .progress import Progress, task


@dataclass
class FileInfo:
    digest: str
    size: tuple[int, int] | None = None  # (width, height) after EXIF orientation, as trained on
    mode: str | None = None
    error: str | None = None


@dataclass
class InspectReport:
    """Everything `inspect` found; `as_dict()` is the --json output."""

    root: str
    layout: str
    class_ids: list[str]
    class_names: list[str]
    counts: dict[str, list[int]]  # split -> images per class
    imbalance: dict[str, float | None]  # split -> largest / smallest class (None: a class is empty)
    sizes: dict[str, int]  # "WxH" -> images, most common first
    size_range: dict[str, int]  # min/max width and height
    modes: dict[str, int]
    undecodable: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # cross-split groups
    duplicate_files_within_splits: int = 0

    @property
    def total(self) -> int:
        return sum(sum(c) for c in self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_images": self.total}


def probe_file(path: Path) -> FileInfo:
    """Hash (in chunks: never the whole file in memory) and fully decode one file."""
    try:
        source = open_source(path)  # a file, or a shard member's bytes (data/shards.py)
        digest = (content_hash(path) if isinstance(source, (str, Path)) else
                  hashlib.blake2b(source.read(), digest_size=16).hexdigest())
        info = FileInfo(digest=digest)
    except OSError as exc:
        return FileInfo(digest=f"unreadable:{path}", error=f"cannot read: {exc.strerror}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(open_source(path)) as img:
                info.mode = img.mode
                img.load()
                info.size = oriented_size(img)  # after load(): a PNG's EXIF may follow its pixels
    except BAD_IMAGE_ERRORS as exc:
        info.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return info


def _probe_split(samples: Samples, advance: Callable[[int], None]) -> list[FileInfo]:
    if samples.arrays is not None:
        h, w = samples.arrays.shape[1:3]
        advance(len(samples))
        return [FileInfo(digest=hashlib.blake2b(a.tobytes(), digest_size=16).hexdigest(),
                         size=(w, h), mode="RGB") for a in samples.arrays]
    workers = max(1, min(8, os.cpu_count() or 1))
    infos = []
    with ThreadPoolExecutor(workers) as pool:  # reading and decoding release the GIL
        for info in pool.map(probe_file, samples.paths or [], chunksize=16):
            infos.append(info)
            advance(1)
    return infos


def inspect_dataset(root: Path, fmt: str = "auto", val_fraction: float = 0.2,
                    seed: int = 0, progress: Progress = False) -> InspectReport:
    """Index `root` with its layout's reader, then read every image once.

    `progress` shows indexing and reading (see `data.progress`); off by default.
    """
    index = load_dataset(Path(root), fmt, val_fraction, seed, progress)
    total = sum(len(s) for s in index.splits.values())
    with task(progress, "reading images", total) as advance:
        infos = {name: _probe_split(s, advance) for name, s in index.splits.items()}
    return summarise(index, infos)


def summarise(index: DatasetIndex, infos: dict[str, list[FileInfo]]) -> InspectReport:
    counts = {name: s.counts(index.num_classes) for name, s in index.splits.items()}
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    widths, heights = [], []
    undecodable = [{"path": p, "error": "unreadable header (skipped while indexing)"}
                   for p in index.skipped]
    by_digest: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, split_infos in infos.items():
        samples = index.splits[name]
        for i, info in enumerate(split_infos):
            by_digest[info.digest].append((name, samples.describe(i)))
            if info.error:
                undecodable.append({"path": samples.describe(i), "error": info.error})
                continue
            w, h = info.size or (0, 0)
            sizes[f"{w}x{h}"] += 1
            modes[info.mode or "?"] += 1
            widths.append(w)
            heights.append(h)
    cross = [{"hash": d, "splits": sorted({s for s, _ in files}),
              "files": [{"split": s, "path": p} for s, p in files]}
             for d, files in by_digest.items() if len({s for s, _ in files}) > 1]
    within = sum(len(f) - 1 for f in by_digest.values() if len({s for s, _ in f}) == 1 and len(f) > 1)
    return InspectReport(
        root=str(index.root), layout=index.layout, class_ids=index.class_ids,
        class_names=index.class_names, counts=counts,
        imbalance={name: _imbalance(c) for name, c in counts.items()},
        sizes=dict(sizes.most_common()), modes=dict(modes.most_common()),
        size_range=({"min_width": min(widths), "max_width": max(widths),
                     "min_height": min(heights), "max_height": max(heights)} if widths else {}),
        undecodable=undecodable, duplicates=sorted(cross, key=lambda g: g["files"][0]["path"]),
        duplicate_files_within_splits=within,
    )


def _imbalance(counts: list[int]) -> float | None:
    if not counts or min(counts) == 0:
        return None
    return round(max(counts) / min(counts), 3)


def render(report: InspectReport, console: Any = None, max_rows: int = 30) -> None:
    """Print the report as rich tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    splits = list(report.counts)
    summary = Table(title=f"Dataset {escape(report.root)}", show_header=False, title_justify="left")
    summary.add_row("layout", report.layout)
    summary.add_row("classes", str(len(report.class_ids)))
    for name in splits:
        ratio = report.imbalance[name]
        shown = f"{ratio:g}x" if ratio is not None else "a class has no images"
        summary.add_row(f"{name} images", f"{sum(report.counts[name])} (largest/smallest class: {shown})")
    summary.add_row("undecodable", _flag(len(report.undecodable)))
    summary.add_row("cross-split duplicates", _flag(len(report.duplicates)))
    summary.add_row("duplicates within a split", str(report.duplicate_files_within_splits))
    console.print(summary)

    classes = Table(title="Images per class", title_justify="left")
    for col in ("id", "name", *splits):
        classes.add_column(col, justify="right" if col in splits else "left")
    for i, cid in enumerate(report.class_ids[:max_rows]):
        name = report.class_names[i] if report.class_names[i] != cid else ""
        classes.add_row(cid, name, *(str(report.counts[s][i]) for s in splits))
    if len(report.class_ids) > max_rows:
        classes.add_row(f"... {len(report.class_ids) - max_rows} more", "", *([""] * len(splits)))
    console.print(classes)

    images = Table(title="Image sizes and modes", title_justify="left")
    images.add_column("size (WxH)")
    images.add_column("images", justify="right")
    for size, n in list(report.sizes.items())[:8]:
        images.add_row(size, str(n))
    if len(report.sizes) > 8:
        images.add_row(f"{len(report.sizes) - 8} other sizes", str(sum(list(report.sizes.values())[8:])))
    console.print(images)
    r = report.size_range
    if r:
        console.print(f"width {r['min_width']}-{r['max_width']} px, height {r['min_height']}-"
                      f"{r['max_height']} px; modes: "
                      + ", ".join(f"{m} {n}" for m, n in report.modes.items()))
    _render_problems(report, console, max_rows)


def _rel(path: str, root: str) -> str:
    """Paths inside the dataset are shown relative to it, to keep the tables narrow."""
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def _flag(n: int) -> str:
    return "[green]none[/]" if n == 0 else f"[red]{n}[/]"


def _render_problems(report: InspectReport, console: Any, max_rows: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    if report.undecodable:
        bad = Table(title="Undecodable files (skipped in training)", title_justify="left")
        bad.add_column("path", overflow="fold")
        bad.add_column("error", overflow="fold")
        for item in report.undecodable[:max_rows]:
            bad.add_row(escape(_rel(item["path"], report.root)), escape(item["error"]))
        if len(report.undecodable) > max_rows:
            bad.add_row(f"... {len(report.undecodable) - max_rows} more", "")
        console.print(bad)
    if report.duplicates:
        dup = Table(title="Identical files in more than one split (leakage)", title_justify="left")
        dup.add_column("group", justify="right")
        dup.add_column("split")
        dup.add_column("path", overflow="fold")
        for g, group in enumerate(report.duplicates[:max_rows], start=1):
            for f in group["files"]:
                dup.add_row(str(g), f["split"], escape(_rel(f["path"], report.root)))
        if len(report.duplicates) > max_rows:
            dup.add_row("", "", f"... {len(report.duplicates) - max_rows} more groups")
        console.print(dup)
