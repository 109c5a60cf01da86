"""Retrieval for re-identification: embed, index, search, evaluate (Python and CLI).

Identities are generated: each has its own coarse colour pattern; its views are the pattern
shifted by a few pixels with noise added. Metrics are checked against brute-force numpy.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stagewise
from conftest import make_image_folder, tiny_config
from stagewise.cli import main
from stagewise.inference.retrieval import (
    Embeddings,
    RetrievalError,
    Retriever,
    flat_index,
    labelled_inputs,
    normalise,
    require_faiss,
    search_index,
)
from stagewise.inference.retrieval_eval import evaluate_retrieval, retrieval_metrics

SIZE = 32


def make_identity_folder(root: Path, identities: int = 5, views: int = 4, seed: int = 0,
                         prefix: str = "id") -> Path:
    """root/<identity>/*.png: one 4x4 colour pattern per identity, each view shifted and noisy."""
    rng = np.random.default_rng(seed)
    for i in range(identities):
        pattern = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float64)
        base = np.kron(pattern, np.ones((SIZE // 4, SIZE // 4, 1)))
        folder = root / f"{prefix}{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for v in range(views):
            dy, dx = rng.integers(-2, 3, size=2)
            view = np.roll(base, (int(dy), int(dx)), axis=(0, 1)) + rng.normal(0, 12, base.shape)
            Image.fromarray(np.clip(view, 0, 255).astype(np.uint8)).save(folder / f"v{v}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_resnet trained one epoch on colour classes: a classification run, not a re-id one."""
    root = tmp_path_factory.mktemp("reid")
    data = make_image_folder(root / "data", per_class=4)
    result = stagewise.train(tiny_config(data, root / "run", epochs=1, augmentation="none"),
                             reporter="quiet")
    return result.run_dir


@pytest.fixture(scope="module")
def clf(run: Path) -> stagewise.Classifier:
    return stagewise.load(run, device="cpu")


@pytest.fixture(scope="module")
def reid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_identity_folder(tmp_path_factory.mktemp("ids") / "ids")


def _brute_force(q: np.ndarray, ql: np.ndarray, g: np.ndarray | None, gl: np.ndarray | None):
    """(recall@1, mAP over the full ranking) by sorting every similarity; None gallery: leave one out."""
    loo = g is None
    g, gl = (q, ql) if loo else (g, gl)
    sims = normalise(q) @ normalise(g).T
    if loo:
        np.fill_diagonal(sims, -np.inf)
    r1, aps = [], []
    for i in range(len(q)):
        order = np.argsort(-sims[i], kind="stable")[: len(g) - int(loo)]
        rel = gl[order] == ql[i]
        if not rel.any():
            continue  # identity absent from the gallery: not part of the closed-set metrics
        r1.append(rel[0])
        ranks = np.flatnonzero(rel) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(r1)), float(np.mean(aps))


def test_metrics_match_brute_force_leave_one_out():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 16))
    labels = np.repeat(np.arange(6), 5)
    vectors = centres[labels] + rng.normal(scale=0.9, size=(30, 16))
    names = [f"p{x}" for x in labels]
    m = retrieval_metrics(vectors.astype(np.float32), names)
    r1, mean_ap = _brute_force(vectors, labels, None, None)
    assert m["recall"]["1"] == pytest.approx(r1)
    assert m["map"] == pytest.approx(mean_ap, abs=1e-6)
    assert 0 <= m["map_at_r"] <= m["map"] + 1e-9
    assert m["recall"]["1"] <= m["recall"]["5"] <= m["recall"]["10"] <= 1
    assert m["known_queries"] == 30 and m["absent_queries"] == 0


def test_metrics_match_brute_force_query_gallery_with_absent_identities():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(8, 12))
    gl = np.repeat(np.arange(6), 4)  # identities 6 and 7 have queries only: open set
    ql = np.repeat(np.arange(8), 2)
    g = centres[gl] + rng.normal(scale=0.5, size=(len(gl), 12))
    q = centres[ql] + rng.normal(scale=0.5, size=(len(ql), 12))
    m = retrieval_metrics(q.astype(np.float32), [str(x) for x in ql], g.astype(np.float32),
                          [str(x) for x in gl])
    r1, mean_ap = _brute_force(q, ql, g, gl)
    assert m["recall"]["1"] == pytest.approx(r1)
    assert m["map"] == pytest.approx(mean_ap, abs=1e-6)
    assert (m["known_queries"], m["absent_queries"]) == (12, 4)
    # The threshold keeps at least 95% of the known queries' nearest true matches.
    assert m["accepted_known"] >= 0.95 and m["threshold"] is not None
    assert 0 <= m["rejected_absent"] <= 1 and 0 <= m["rejected_simulated"] <= 1


def test_open_set_rejects_far_identities():
    """Absent identities far from every gallery identity are all rejected; the threshold is a
    distance that occurs among the true matches."""
    rng = np.random.default_rng(3)
    dims = 10
    gl = np.repeat(np.arange(3), 3)
    g = np.eye(dims)[gl] + rng.normal(scale=0.05, size=(9, dims))
    q = np.concatenate([np.eye(dims)[[0, 1, 2]], np.eye(dims)[[7, 8]]])  # 7, 8: unseen
    m = retrieval_metrics(q.astype(np.float32), ["0", "1", "2", "x", "y"], g.astype(np.float32),
                          [str(x) for x in gl])
    assert m["recall"]["1"] == 1.0 and m["rejected_absent"] == 1.0
    assert 0 <= m["threshold"] < 0.1


def test_search_equals_brute_force_cosine():
    rng = np.random.default_rng(4)
    gallery, queries = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    dist, rows = search_index(flat_index(gallery.astype(np.float32)), queries.astype(np.float32), 5)
    sims = normalise(queries) @ normalise(gallery).T
    expected = np.argsort(-sims, axis=1)[:, :5]
    assert (rows == expected).all()
    np.testing.assert_allclose(dist, 1 - np.take_along_axis(sims, expected, 1), atol=1e-5)
    # top_k past the gallery size is capped, not padded with -1 rows.
    assert search_index(flat_index(gallery[:3].astype(np.float32)), queries.astype(np.float32),
                        10)[1].shape == (7, 3)


def test_python_api_index_and_search(clf, reid):
    gallery = clf.index(reid)
    assert len(gallery) == 20 and set(gallery.gallery.labels) == {f"id{i}" for i in range(5)}
    query = reid / "id3" / "v0.png"
    matches = clf.search(query, gallery, top_k=3)[0]
    assert matches[0].path == str(query) and matches[0].distance == pytest.approx(0, abs=1e-5)
    assert [m.rank for m in matches] == [1, 2, 3]
    assert all(a.distance <= b.distance for a, b in zip(matches, matches[1:], strict=False))
    # Same neighbours as brute-force cosine over clf.embed, the documented embedding.
    vectors = normalise(clf.embed(gallery.gallery.paths).numpy())
    q = normalise(clf.embed([query]).numpy())
    expected = np.argsort(-(q @ vectors.T)[0], kind="stable")[:3]
    assert [m.path for m in matches] == [gallery.gallery.paths[j] for j in expected]


def test_labels_come_from_identity_folders(reid, tmp_path):
    loose = tmp_path / "loose.png"
    Image.new("RGB", (8, 8)).save(loose)
    items, errors = labelled_inputs([reid, loose, tmp_path / "missing.png"])
    assert {it.label for it in items if it.path.startswith(str(reid))} == {f"id{i}" for i in range(5)}
    assert [it.label for it in items if it.path == str(loose)] == [None]
    assert len(errors) == 1 and "missing.png" in errors[0]


def test_evaluate_retrieval_leave_one_out_and_query_gallery(clf, reid, tmp_path):
    ev = evaluate_retrieval(clf, reid, num_workers=0)
    assert (ev.mode, ev.queries, ev.identities) == ("leave-one-out", 20, 5)
    # Leave-one-out over the real embeddings equals the brute-force computation.
    emb = Embeddings(normalise(clf.embed(sorted(str(p) for p in reid.rglob("*.png"))).numpy()),
                     [], [], "")
    labels = np.array([p.parent.name for p in sorted(reid.rglob("*.png"))])
    r1, mean_ap = _brute_force(emb.vectors, labels, None, None)
    assert ev.metrics["recall"]["1"] == pytest.approx(r1)
    assert ev.metrics["map"] == pytest.approx(mean_ap, abs=1e-5)
    split = tmp_path / "split"
    make_identity_folder(split / "gallery", identities=4, views=3, seed=5)
    make_identity_folder(split / "query", identities=5, views=1, seed=5)  # id4: absent
    ev2 = evaluate_retrieval(clf, split, num_workers=0)
    assert (ev2.mode, ev2.queries, ev2.gallery) == ("query/gallery", 5, 12)
    assert ev2.metrics["absent_queries"] == 1 and ev2.metrics["rejected_absent"] in (0.0, 1.0)


def test_cli_embed_index_search_round_trip(run, reid, tmp_path, capsys):
    npz, index = tmp_path / "emb.npz", tmp_path / "gallery.index"
    assert main(["embed", str(run), str(reid), "--out", str(npz), "--quiet"]) == 0
    emb = Embeddings.load(npz)
    assert emb.vectors.shape[0] == 20 and set(emb.labels) == {f"id{i}" for i in range(5)}
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1, atol=1e-5)
    assert main(["index", str(run), str(reid), "--out", str(index), "--quiet"]) == 0
    sidecar = json.loads(Path(str(index) + ".json").read_text())
    assert len(sidecar["paths"]) == 20 and sidecar["labels"][0] == "id0"
    query = reid / "id2" / "v1.png"
    capsys.readouterr()
    assert main(["search", str(index), str(query), "--top-k", "4", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    found = out["results"][0]["matches"]
    assert found[0]["path"] == str(query) and found[0]["label"] == "id2" and len(found) == 4
    # The saved index gives the neighbours a fresh in-memory index gives.
    fresh = Retriever(emb).search(emb.vectors[[emb.paths.index(str(query))]], 4)[0]
    assert [m["path"] for m in found] == [m.path for m in fresh]
    assert main(["search", str(run), str(query), "--gallery", str(reid), "--format", "csv",
                 "--top-k", "2"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["rank"] for r in rows] == ["1", "2"] and rows[0]["path"] == str(query)
    assert main(["search", str(index), str(query)]) == 0  # the table for people
    assert "id2" in capsys.readouterr().out


def test_cli_evaluate_retrieval(run, reid, tmp_path, capsys):
    out = tmp_path / "reid.json"
    assert main(["evaluate", str(run), "--data", str(reid), "--retrieval", "--out", str(out),
                 "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "recall@1" in printed and "mAP@R" in printed and "threshold" in printed
    data = json.loads(out.read_text())
    assert data["mode"] == "leave-one-out" and set(data["metrics"]["recall"]) == {"1", "5", "10"}
    assert out.with_suffix(".md").is_file()


def test_missing_extra_names_the_install_command(monkeypatch, run, reid, tmp_path, capsys):
    real_faiss = require_faiss()
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(RetrievalError, match=r"pip install 'stagewise\[retrieval\]'"):
        require_faiss()
    code = main(["index", str(run), str(reid), "--out", str(tmp_path / "g.index")])
    assert code == 2 and "stagewise[retrieval]" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "faiss", real_faiss)
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning.utils.accuracy_calculator", None)
    with pytest.raises(RetrievalError, match=r"stagewise\[retrieval\]"):
        retrieval_metrics(np.eye(4, dtype=np.float32), ["a", "a", "b", "b"])
    code = main(["evaluate", str(run), "--data", str(reid), "--retrieval"])
    assert code == 2 and "pytorch-metric-learning" in capsys.readouterr().err


def test_no_known_query_gives_undefined_metrics_not_zero():
    m = retrieval_metrics(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"])  # all alone
    assert m["known_queries"] == 0 and m["map"] is None and m["recall"]["1"] is None
    assert m["threshold"] is None


def test_bad_index_and_mismatched_queries_are_clear_errors(tmp_path):
    (tmp_path / "x.index").write_text("not an index")
    with pytest.raises(RetrievalError, match="not a saved gallery"):
        Retriever.load(tmp_path / "x.index")
    gallery = Retriever(Embeddings(np.eye(3, dtype=np.float32), ["a", "b", "c"], [None] * 3, "m"))
    with pytest.raises(RetrievalError, match="dimensions"):
        gallery.search(np.ones((1, 5), np.float32))
    with pytest.raises(RetrievalError, match="without its model"):
        gallery.search("image.png")


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:squeezenet1_0"])
def test_torchvision_runs_embed_too(name):
    """torchvision networks have no forward_head: the classifier's input is the embedding."""
    from stagewise.data.transforms import Preprocess
    from stagewise.models import build_model

    model = build_model(name, ["a", "b"], image_size=64).model
    clf = stagewise.Classifier(model, ["a", "b"], ["a", "b"],
                               Preprocess(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    feats = clf.embed(torch.rand(3, 3, 64, 64))
    assert feats.shape == (3, 512)
    gallery = Retriever(Embeddings(normalise(feats.numpy()), ["x", "y", "z"], [None] * 3, name))
    assert gallery.search(feats[1].numpy(), top_k=1)[0][0].path == "y"
