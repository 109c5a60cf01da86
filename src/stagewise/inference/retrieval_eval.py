"""Measure re-identification: recall@k, mAP and mAP@R, and open-set rejection at a threshold.

A folder of identity folders is searched leave-one-out (each image queries all the others); a folder
with `query/` and `gallery/` (each of identity folders) searches the gallery with every query.
Identities need not be classes of the model. The ranking metrics come from pytorch-metric-learning's
AccuracyCalculator over one exact faiss search, which also gives recall@k and the distances.

The metrics themselves (and the open-set threshold) are defined in `stagewise.ranking`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.folder import split_dirs
from ..io import write_json, write_text
from ..ranking import (  # noqa: F401  (re-exported for callers of the inference API)
    KEEP_MATCHES,
    RECALL_AT,
    RetrievalError,
    require_metrics,
    retrieval_metrics,
)
from ..runfolder import check_outputs
from .evaluation import EVAL_FILE, output_paths
from .retrieval import Embedder, Embeddings, embed_items, identity_items


@dataclass
class RetrievalEvaluation:
    """Re-identification scores of one model on one folder (see the module doc for each metric)."""

    model: str
    data: str
    mode: str  # "leave-one-out" or "query/gallery"
    queries: int
    gallery: int
    identities: int
    metrics: dict[str, Any]
    bad_images: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """(metric, value) lines for a printed table."""
        m = self.metrics

        def num(v: float | None) -> str:
            return "-" if v is None else f"{v:.4f}"

        rows = [(f"recall@{n}", num(m["recall"][str(n)])) for n in RECALL_AT]
        rows += [("mAP", num(m["map"])), ("mAP@R", num(m["map_at_r"])),
                 (f"threshold (keeps {m['keep']:.0%} of true matches)", num(m["threshold"])),
                 (f"rejected: absent identities ({m['absent_queries']})", num(m["rejected_absent"])),
                 ("rejected: own identity removed (simulated)", num(m["rejected_simulated"]))]
        return rows

    def write(self, out: Path) -> tuple[Path, Path]:
        """JSON to `out`, a markdown summary beside it (same name, .md)."""
        out, report = output_paths(out)
        check_outputs([out, report], EVAL_FILE)
        write_json(out, self.as_dict())
        lines = [f"# Retrieval: {self.data} ({self.mode})", "", f"Model: `{self.model}`", "",
                 f"{self.queries} queries, {self.gallery} gallery images, {self.identities} "
                 "identities", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.rows()]
        lines += [f"- note: {n}" for n in self.notes]
        write_text(report, "\n".join(lines) + "\n")
        return out, report


def evaluate_retrieval(clf: Embedder, data: str | Path, batch_size: int = 32,
                       num_workers: int | None = None, keep: float = KEEP_MATCHES,
                       on_progress: Callable[[int], None] | None = None,
                       split: str = "val") -> RetrievalEvaluation:
    """Embed the images of `data` and score their search (leave-one-out, or query/ vs gallery/).

    A folder of train/ and val/ (the trainer's identity layout, data/identities.py) is not two
    identities: the `split` folder of it is searched leave-one-out (val/: the held-out identities).

    Example:
        >>> ev = evaluate_retrieval(stagewise.load("runs/pets"), "data/reid")  # doctest: +SKIP
        >>> ev.metrics["recall"]["1"], ev.metrics["map"]  # doctest: +SKIP
    """
    root = Path(data)
    if not root.is_dir():
        raise RetrievalError(f"data folder not found: {root}")
    if not 0 < keep < 1:
        raise RetrievalError(f"keep must be between 0 and 1 (a share of true matches), got {keep}")
    notes: list[str] = []
    split_mode = (root / "query").is_dir() and (root / "gallery").is_dir()
    if not split_mode:
        root = _split_folder(root, split, notes)
    query = embed_items(clf, identity_items(root / "query" if split_mode else root), batch_size,
                        num_workers, on_progress)
    gallery = (embed_items(clf, identity_items(root / "gallery"), batch_size, num_workers)
               if split_mode else None)
    _check_usable(query, gallery, root)
    q_labels = [lab or "" for lab in query.labels]
    g_labels = [lab or "" for lab in gallery.labels] if gallery else None
    metrics = retrieval_metrics(query.vectors, q_labels, gallery.vectors if gallery else None,
                                g_labels, keep)
    if metrics["ranked_to"] < (len(gallery) if gallery else len(query) - 1):
        notes.append(f"rankings cut at {metrics['ranked_to']}: mAP is mAP@{metrics['ranked_to']}")
    if metrics["known_queries"] == 0:
        notes.append("no query has its identity in the gallery: ranking metrics are undefined")
    identities = set(q_labels) | set(g_labels or [])
    return RetrievalEvaluation(
        model=str(clf.source or "in memory"), data=str(data),
        mode="query/gallery" if split_mode else "leave-one-out", queries=len(query),
        gallery=len(gallery) if gallery else len(query), identities=len(identities),
        metrics=metrics, bad_images=query.failed + (gallery.failed if gallery else []), notes=notes)


def _split_folder(root: Path, split: str, notes: list[str]) -> Path:
    """The folder of identities to search: `root`, or its `split` folder when it has train/val/test
    folders (read as the trainer reads them, never as identities named 'train' and 'val')."""
    found = split_dirs(root)
    if not found:
        return root
    if split not in found:
        raise RetrievalError(
            f"{root}: holds the split folders {', '.join(f'{p.name}/' for p in found.values())}, each of "
            f"identity folders, and no {split}/; choose the one to search with --split "
            f"({', '.join(found)}), or pass one of them as --data")
    notes.append(f"searched {found[split]} (the '{split}' split) leave-one-out; --split chooses "
                 "another split folder")
    return found[split]


def _check_usable(query: Embeddings, gallery: Embeddings | None, root: Path) -> None:
    for part in (query, gallery):
        if part is not None and len(part) == 0:
            shown = part.failed[0] if part.failed else "-"
            raise RetrievalError(f"{root}: none of the images could be read, e.g. {shown}")
    identities = sorted({lab for part in (query, gallery) if part is not None
                         for lab in part.labels if lab})
    if len(identities) < 2:
        raise RetrievalError(
            f"{root}: retrieval needs at least 2 identities, found {len(identities)} "
            f"({', '.join(identities) or 'none'}): among one identity every match is right and every "
            f"metric reads 1.0. Add a folder per identity: {root}/<identity>/*.jpg")
