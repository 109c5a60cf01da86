"""Measure re-identification: recall@k, mAP and mAP@R, and open-set rejection at a threshold.

A folder of identity folders is searched leave-one-out (each image queries all the others); a folder
with `query/` and `gallery/` (each of identity folders) searches the gallery with every query.
Identities need not be classes of the model. The ranking metrics come from pytorch-metric-learning's
AccuracyCalculator over one exact faiss search, which also gives recall@k and the distances.

Open-set rejection: the threshold is the cosine distance within which `keep` (95%) of the queries
whose identity is in the gallery find their nearest true match. A query whose identity is absent
is rejected when even its nearest gallery image lies beyond it. `rejected_absent` measures that on
the queries that really are absent (an identity with one image, leave-one-out; or a query identity
missing from gallery/); `rejected_simulated` on every known query with its own identity taken out
of the gallery (its nearest impostor), so the number exists even when no identity is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import write_json, write_text
from .retrieval import (
    EXTRA_HINT,
    Embedder,
    Embeddings,
    RetrievalError,
    embed_items,
    flat_index,
    identity_items,
    search_index,
)

RECALL_AT = (1, 5, 10)
KEEP_MATCHES = 0.95
MAX_RANK = 1000  # past this, mAP is mAP@1000 (a lower bound): the full ranking is N x N
PML_METRICS = ("precision_at_1", "mean_average_precision", "mean_average_precision_at_r")


def require_metrics() -> type:
    """pytorch-metric-learning's AccuracyCalculator, or an error that names the extra."""
    try:
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    except ImportError:
        raise RetrievalError("retrieval metrics need pytorch-metric-learning, which is not "
                             f"installed: {EXTRA_HINT}") from None
    return AccuracyCalculator


def accuracy_calculator(k: int, knn: Callable) -> Any:
    return require_metrics()(include=PML_METRICS, k=k, knn_func=knn, device=torch.device("cpu"))


class _Knn:
    """The k-NN AccuracyCalculator calls: exact faiss search, kept so that recall@k and the
    distances come from the same ranking. A query never finds itself (dropped by row, not by
    position: with duplicate images, the self-match need not come first)."""

    def __init__(self) -> None:
        self.distances = np.zeros((0, 0), np.float32)
        self.rows = np.zeros((0, 0), np.int64)

    def __call__(self, query: torch.Tensor, k: int, reference: torch.Tensor,
                 ref_includes_query: bool) -> tuple[torch.Tensor, torch.Tensor]:
        q, ref = query.numpy(), reference.numpy()
        dist, rows = search_index(flat_index(ref), q, k + int(ref_includes_query))
        if ref_includes_query:
            is_self = rows == np.arange(len(q))[:, None]
            is_self[~is_self.any(axis=1), -1] = True  # self ranked past k: drop the last instead
            keep = ~is_self
            dist, rows = dist[keep].reshape(len(q), -1), rows[keep].reshape(len(q), -1)
        self.distances, self.rows = dist, rows
        return torch.from_numpy(dist), torch.from_numpy(rows)


def retrieval_metrics(query: np.ndarray, query_labels: list[str], gallery: np.ndarray | None = None,
                      gallery_labels: list[str] | None = None, keep: float = KEEP_MATCHES) -> dict[str, Any]:
    """All metrics of one search; `gallery=None` is leave-one-out over `query`."""
    loo = gallery is None
    ref_labels = query_labels if loo else gallery_labels or []
    names = sorted(set(query_labels) | set(ref_labels))
    code = {n: i for i, n in enumerate(names)}
    q_ids = np.array([code[n] for n in query_labels], np.int64)
    r_ids = q_ids if loo else np.array([code[n] for n in ref_labels], np.int64)
    n_ref = len(r_ids) - int(loo)
    if n_ref < 1:
        raise RetrievalError("retrieval needs at least two images (one query, one gallery image)")
    largest = int(np.bincount(r_ids).max())
    k = min(n_ref, max(MAX_RANK, largest))
    knn = _Knn()
    calc = accuracy_calculator(k, knn)
    pml = calc.get_accuracy(query, q_ids, None if loo else gallery, None if loo else r_ids,
                            ref_includes_query=False)
    hits = r_ids[knn.rows] == q_ids[:, None]
    in_gallery = np.isin(q_ids, r_ids) if not loo else np.bincount(r_ids)[q_ids] > 1
    out = {"ranked_to": k, "known_queries": int(in_gallery.sum()),
           "absent_queries": int((~in_gallery).sum()),
           "map": float(pml["mean_average_precision"]),
           "map_at_r": float(pml["mean_average_precision_at_r"]),
           "recall": {str(n): _mean(hits[in_gallery, :n].any(axis=1)) for n in RECALL_AT}}
    out["recall"]["1"] = float(pml["precision_at_1"])  # the same number; PML's is the reference
    if not in_gallery.any():  # PML returns 0 (with a warning) where the metrics are undefined
        out.update(map=None, map_at_r=None, recall=dict.fromkeys(out["recall"]))
    out.update(_open_set(knn.distances, hits, in_gallery, keep))
    return out


def _open_set(dist: np.ndarray, hits: np.ndarray, known: np.ndarray, keep: float) -> dict[str, Any]:
    """The threshold that keeps `keep` of true matches, and the share of absent queries it rejects."""
    true_d = _first(dist[known], hits[known])
    impostor_d = _first(dist[known], ~hits[known])
    true_d, impostor_d = true_d[~np.isnan(true_d)], impostor_d[~np.isnan(impostor_d)]
    if len(true_d) == 0:
        return {"threshold": None, "keep": keep, "rejected_absent": None, "rejected_simulated": None}
    # "higher": a distance that occurs, with at least `keep` of true matches at or below it.
    t = float(np.quantile(true_d, keep, method="higher"))
    absent_d = dist[~known, 0] if dist.shape[1] else np.zeros(0)
    return {"threshold": t, "keep": keep,
            "accepted_known": _mean(true_d <= t),
            "rejected_absent": _mean(absent_d > t) if len(absent_d) else None,
            "rejected_simulated": _mean(impostor_d > t) if len(impostor_d) else None}


def _first(dist: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, the distance at the first True of `mask` (NaN when none is ranked)."""
    found = mask.any(axis=1)
    pos = mask.argmax(axis=1)
    picked = dist[np.arange(len(dist)), pos] if dist.size else np.zeros(len(dist))
    return np.where(found, picked, np.nan)


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


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
        out = Path(out)
        report = out.with_suffix(".md")
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
                       on_progress: Callable[[int], None] | None = None) -> RetrievalEvaluation:
    """Embed the images of `data` and score their search (leave-one-out, or query/ vs gallery/).

    Example:
        >>> ev = evaluate_retrieval(stagewise.load("runs/pets"), "data/reid")  # doctest: +SKIP
        >>> ev.metrics["recall"]["1"], ev.metrics["map"]  # doctest: +SKIP
    """
    root = Path(data)
    if not root.is_dir():
        raise RetrievalError(f"data folder not found: {root}")
    if not 0 < keep < 1:
        raise RetrievalError(f"keep must be between 0 and 1 (a share of true matches), got {keep}")
    split = (root / "query").is_dir() and (root / "gallery").is_dir()
    query = embed_items(clf, identity_items(root / "query" if split else root), batch_size,
                        num_workers, on_progress)
    gallery = embed_items(clf, identity_items(root / "gallery"), batch_size, num_workers) if split else None
    _check_usable(query, gallery, root)
    q_labels = [lab or "" for lab in query.labels]
    g_labels = [lab or "" for lab in gallery.labels] if gallery else None
    metrics = retrieval_metrics(query.vectors, q_labels, gallery.vectors if gallery else None,
                                g_labels, keep)
    notes = []
    if metrics["ranked_to"] < (len(gallery) if gallery else len(query) - 1):
        notes.append(f"rankings cut at {metrics['ranked_to']}: mAP is mAP@{metrics['ranked_to']}")
    if metrics["known_queries"] == 0:
        notes.append("no query has its identity in the gallery: ranking metrics are undefined")
    identities = set(q_labels) | set(g_labels or [])
    return RetrievalEvaluation(
        model=str(clf.source or "in memory"), data=str(data),
        mode="query/gallery" if split else "leave-one-out", queries=len(query),
        gallery=len(gallery) if gallery else len(query), identities=len(identities),
        metrics=metrics, bad_images=query.failed + (gallery.failed if gallery else []), notes=notes)


def _check_usable(query: Embeddings, gallery: Embeddings | None, root: Path) -> None:
    for part in (query, gallery):
        if part is not None and len(part) == 0:
            shown = part.failed[0] if part.failed else "-"
            raise RetrievalError(f"{root}: none of the images could be read, e.g. {shown}")
