"""Retrieval for re-identification: embed images, index a gallery, search it by cosine distance.

Identities searched for need not be classes the model was trained on: any classification run gives
pre-logits features (`Classifier.embed`), L2-normalised here so that an inner product is a cosine
similarity. Search is exact (faiss IndexFlatIP); faiss is the optional extra `stagewise[retrieval]`
and is imported only when a search or index is made, so prediction never pays for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .._version import __version__
from ..data.folder import class_dirs
from ..data.hashing import file_digest
from ..data.images import is_image_file
from ..errors import clip
from ..io import write_json, write_with
from ..ranking import (  # noqa: F401  (re-exported: the names retrieval users import from here)
    EXTRA_HINT,
    RetrievalError,
    flat_index,
    normalise,
    require_faiss,
    search_index,
)
from ..runfolder import check_outputs
from .files import expand_paths, file_loader

SIDECAR_SUFFIX = ".json"  # gallery.index -> gallery.index.json
EMBEDDINGS_FILE = "embeddings.npz"  # the usual output names, suggested when --out is refused
INDEX_FILE = "gallery.index"


def index_paths(path: str | Path) -> tuple[Path, Path]:
    """The two files `Retriever.save(path)` writes: the index and its sidecar JSON."""
    path = Path(path)
    return path, path.with_name(path.name + SIDECAR_SUFFIX)


class Embedder(Protocol):
    """What retrieval needs of a model: a Classifier is one. (A protocol, not the class, so that
    Classifier can offer `.index()` without an import cycle.)"""

    transform: Callable
    device: torch.device
    source: Path | None

    def embed(self, inputs: Any, batch_size: int = 32) -> torch.Tensor: ...


@dataclass(frozen=True)
class Item:
    """One image to embed; `label` is its identity when the folder layout gives one."""

    path: str
    label: str | None = None


@dataclass(frozen=True)
class Match:
    """One gallery image found for a query: rank 1 is the nearest."""

    rank: int
    path: str
    label: str | None
    distance: float  # cosine distance, 1 - cos: 0 same direction, 2 opposite


def labelled_inputs(inputs: Sequence[str | Path]) -> tuple[list[Item], list[str]]:
    """Files, folders and globs as Items, and 'path: why' for inputs that matched nothing.

    A file inside a sub-folder of a folder given on the command line is labelled with that
    sub-folder's name: `gallery/<identity>/*.jpg` gives identities, loose files give none.
    """
    labels: dict[str, str] = {}
    for given in inputs:
        folder = Path(given).expanduser()
        if folder.is_dir():
            for f in folder.rglob("*"):
                rel = f.relative_to(folder).parts
                if len(rel) > 1 and f.is_file() and is_image_file(f):
                    labels[str(f)] = rel[0]
    entries = expand_paths(inputs)
    items = [Item(path, labels.get(path)) for path, error in entries if error is None]
    return items, [f"{path}: {error}" for path, error in entries if error is not None]


def identity_items(folder: Path) -> list[Item]:
    """Every image under `folder/<identity>/`, labelled with the identity."""
    items = [Item(str(f), d.name) for d in class_dirs(folder)
             for f in sorted(d.rglob("*")) if f.is_file() and is_image_file(f)]
    if not items:
        raise RetrievalError(f"{folder}: no images in identity folders; expected "
                             f"{folder}/<identity>/*.jpg (one folder per person, animal or object)")
    return items


@dataclass
class Embeddings:
    """Unit-length embedding rows and the files (and identities) they came from."""

    vectors: np.ndarray  # (N, D) float32
    paths: list[str]
    labels: list[str | None]
    model: str
    failed: list[str] = field(default_factory=list)  # 'path: why' for files not embedded

    def __len__(self) -> int:
        return len(self.paths)

    def save(self, out: str | Path) -> Path:
        """An .npz with vectors, paths, labels ('' where none) and the model."""
        out = Path(out)
        check_outputs([out], EMBEDDINGS_FILE)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a path
                np.savez(fh, vectors=self.vectors, paths=np.array(self.paths, dtype=str),
                         labels=np.array([lab or "" for lab in self.labels], dtype=str),
                         model=np.array(self.model))
        write_with(out, write)
        return out

    @classmethod
    def load(cls, path: str | Path) -> Embeddings:
        with np.load(Path(path), allow_pickle=False) as z:
            return cls(z["vectors"], z["paths"].tolist(),
                       [lab or None for lab in z["labels"].tolist()], str(z["model"]))


def embed_items(clf: Embedder, items: list[Item], batch_size: int = 32,
                num_workers: int | None = None,
                on_progress: Callable[[int], None] | None = None) -> Embeddings:
    """Embed every readable item (decoded in loader workers); unreadable ones go to `failed`."""
    paths = [it.path for it in items]
    chunks: list[np.ndarray] = []
    kept: list[int] = []
    failed: list[str] = []
    loader = file_loader(paths, clf.transform, batch_size, num_workers,
                         pin_memory=clf.device.type == "cuda")
    for batch, ok, bad in loader:
        failed += [f"{paths[i]}: {err}" for i, err in bad]
        if batch is not None:
            chunks.append(clf.embed(batch, batch_size).numpy())
            kept += ok
        if on_progress is not None:
            on_progress(len(kept) + len(failed))
    dim = chunks[0].shape[1] if chunks else 0
    vectors = normalise(np.concatenate(chunks)) if chunks else np.zeros((0, dim), np.float32)
    return Embeddings(vectors, [paths[i] for i in kept], [items[i].label for i in kept],
                      str(clf.source or "in memory"), failed)


class Retriever:
    """A searchable gallery: a faiss index, the gallery's files and identities, and the model.

    Example:
        >>> gallery = stagewise.load("runs/pets").index("gallery/")  # doctest: +SKIP
        >>> gallery.search("query.jpg", top_k=5)[0][0].path  # doctest: +SKIP
    """

    def __init__(self, gallery: Embeddings, clf: Embedder | None = None, index: Any = None) -> None:
        if len(gallery) == 0:
            raise RetrievalError("the gallery is empty: no readable images to index"
                                 + (f" ({gallery.failed[0]})" if gallery.failed else ""))
        self.gallery = gallery
        self.clf = clf
        self.index = index if index is not None else flat_index(gallery.vectors)

    def __len__(self) -> int:
        return len(self.gallery)

    def search(self, queries: Any | Embeddings, top_k: int = 5) -> list[list[Match]]:
        """For each query (images, or vectors already embedded), its top_k gallery matches."""
        dist, rows = search_index(self.index, self._query_vectors(queries), top_k)
        g = self.gallery
        return [[Match(r + 1, g.paths[j], g.labels[j], float(d))
                 for r, (d, j) in enumerate(zip(drow, jrow, strict=True)) if j >= 0]
                for drow, jrow in zip(dist, rows, strict=True)]

    def _query_vectors(self, queries: Any | Embeddings) -> np.ndarray:
        if isinstance(queries, Embeddings):
            return queries.vectors
        if isinstance(queries, np.ndarray):
            return normalise(queries.reshape(-1, queries.shape[-1]))
        if self.clf is None:
            raise RetrievalError("this gallery was loaded without its model; pass embeddings, or "
                                 "load it with Retriever.load(path, clf=stagewise.load(run))")
        vectors = self.clf.embed(queries).numpy()
        return normalise(vectors.reshape(-1, vectors.shape[-1]))

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """The faiss index at `path` and a sidecar JSON (paths, identities, model) beside it."""
        faiss = require_faiss()
        path, sidecar = index_paths(path)
        check_outputs([path, sidecar], INDEX_FILE)
        write_with(path, lambda tmp: faiss.write_index(self.index, str(tmp)))
        g = self.gallery
        write_json(sidecar, {"kind": "stagewise-gallery", "stagewise": __version__,
                             "model": g.model, "weights_sha256": weights_digest(self.clf),
                             "metric": "cosine", "dim": int(self.index.d),
                             "paths": g.paths, "labels": g.labels, "failed": g.failed})
        return path, sidecar

    @classmethod
    def load(cls, path: str | Path, clf: Embedder | None = None) -> Retriever:
        """A saved gallery; `clf` embeds image queries (pass the model named in the sidecar)."""
        faiss = require_faiss()
        meta = read_sidecar(Path(path))
        check_same_model(Path(path), meta, clf)
        try:
            index = faiss.read_index(str(path))
        except (RuntimeError, OSError, MemoryError) as exc:  # faiss raises RuntimeError on bad bytes
            reason = clip(" ".join(str(exc).split()), 160)
            raise RetrievalError(f"{path}: not an index faiss can read ({reason}); rebuild it with "
                                 "`stagewise index MODEL GALLERY --out FILE`") from None
        if index.d != meta["dim"]:
            raise RetrievalError(f"{path}: holds {index.d}-d vectors but its sidecar says {meta['dim']}; "
                                 "rebuild it with `stagewise index`")
        if index.ntotal != len(meta["paths"]):
            raise RetrievalError(f"{path}: holds {index.ntotal} vectors but its sidecar lists "
                                 f"{len(meta['paths'])} files; rebuild it with `stagewise index`")
        vectors = np.zeros((0, index.d), np.float32)  # kept in the index, not needed again
        gallery = Embeddings(vectors, meta["paths"], meta["labels"], meta["model"], meta["failed"])
        return cls(gallery, clf, index)


class Sidecar(BaseModel):
    """The JSON beside a saved index (`Retriever.save`), as read."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["stagewise-gallery"]
    model: str
    dim: int = Field(ge=1, le=1_000_000)
    paths: list[str]
    labels: list[str | None]
    failed: list[str] = Field(default_factory=list)
    weights_sha256: str | None = None  # of the weights that embedded the gallery (None: older)

    @model_validator(mode="after")
    def _one_label_per_path(self) -> Sidecar:
        if len(self.labels) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        return self


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON beside a saved index, checked against `Sidecar`, with a clear error when it is not."""
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if not path.is_file() or not sidecar.is_file():
        raise RetrievalError(f"{path}: not a saved gallery (expected the index and {sidecar.name} "
                             "beside it, as written by `stagewise index`)")
    fix = "rebuild it with `stagewise index MODEL GALLERY --out FILE`"
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RetrievalError(f"{sidecar}: not a readable JSON file ({clip(str(exc), 120)}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("kind") != "stagewise-gallery":
        raise RetrievalError(f"{sidecar}: not a stagewise gallery sidecar; {fix}")
    try:
        return Sidecar.model_validate(meta).model_dump()
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'sidecar'}: "
                             f"{str(e['msg']).removeprefix('Value error, ')}" for e in err.errors()[:3])
        raise RetrievalError(f"{sidecar}: {problems}; {fix}") from None


def weights_digest(clf: Embedder | None) -> str | None:
    """sha256 of the weights file `clf` was loaded from (None: built in memory)."""
    source = getattr(clf, "source", None)
    return file_digest(Path(source), "sha256") if source and Path(source).is_file() else None


def check_same_model(path: Path, meta: dict[str, Any], clf: Embedder | None) -> None:
    """Refuse to search an index with a model other than the one that embedded its gallery:
    another model's vectors (even of the same size) are not comparable, so the matches would be
    nonsense. Compared by the weights' sha256 the sidecar records."""
    recorded = meta.get("weights_sha256")
    given = weights_digest(clf) if recorded else None
    if recorded and given and given != recorded:
        raise RetrievalError(
            f"{path} was indexed with {meta['model']} (weights sha256 {recorded[:12]}...), but the "
            f"model given is {getattr(clf, 'source', None)} (sha256 {given[:12]}...): other weights, "
            "whose embeddings cannot be compared with the index's. Search with the model that built "
            f"the index (--model {meta['model']}), or index the gallery again with this one: "
            "stagewise index MODEL GALLERY --out FILE")


def is_saved_index(path: Path) -> bool:
    return path.is_file() and path.with_name(path.name + SIDECAR_SUFFIX).is_file()

