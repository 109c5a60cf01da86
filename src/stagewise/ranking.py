"""Exact cosine search and the ranking metrics over it: recall@k, mAP, mAP@R, open-set rejection.

Shared by training (an embed stage measures its validation identities every epoch) and inference
(`stagewise evaluate --retrieval`, `search`), so it sits below both. faiss and
pytorch-metric-learning are the optional extra `stagewise[retrieval]`, imported on first use.

Open-set rejection: the threshold is the cosine distance within which `keep` (95%) of the queries
whose identity is in the gallery find their nearest true match. A query whose identity is absent
is rejected when even its nearest gallery image lies beyond it. `rejected_absent` measures that on
the queries that really are absent (an identity with one image, leave-one-out; or a query identity
missing from the gallery); `rejected_simulated` on every known query with its own identity taken
out of the gallery (its nearest impostor), so the number exists even when no identity is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .errors import StagewiseError

EXTRA_HINT = "pip install 'stagewise[retrieval]'"


class RetrievalError(StagewiseError):
    """Retrieval cannot run as asked: a missing extra, an unusable index or gallery."""


def require_faiss() -> Any:
    """The faiss module, or an error that names the extra to install."""
    try:
        import faiss
    except ImportError:
        raise RetrievalError(f"retrieval needs faiss-cpu, which is not installed: {EXTRA_HINT}") from None
    return faiss


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, contiguous: what faiss takes)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.ascontiguousarray(v / np.maximum(norms, 1e-12))


def flat_index(vectors: np.ndarray) -> Any:
    """An exact inner-product index of unit rows: its scores are cosine similarities."""
    faiss = require_faiss()
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(normalise(vectors))
    return index


def search_index(index: Any, queries: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(cosine distances, gallery rows), each (Q, k), nearest first; k is capped at the gallery."""
    if top_k < 1:
        raise RetrievalError(f"top_k must be at least 1, got {top_k}")
    k = min(top_k, index.ntotal)
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    if queries.shape[1] != index.d:
        raise RetrievalError(f"query embeddings have {queries.shape[1]} dimensions, the index "
                             f"{index.d}; search with the model that built the index")
    sims, rows = index.search(normalise(queries), k)
    # Clipped: rounding makes 1 - cos of an image with itself slightly negative.
    return np.clip(1.0 - sims, 0.0, 2.0), rows


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
    out: dict[str, Any] = {
        "ranked_to": k, "known_queries": int(in_gallery.sum()),
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
