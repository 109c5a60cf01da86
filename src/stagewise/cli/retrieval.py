"""CLI commands `embed`, `index`, `search`: retrieval for re-identification. Parse, call, print.

They need the optional extra (`pip install 'stagewise[retrieval]'`); without it they exit 2 with
that command. `evaluate --retrieval` lives with `evaluate` in `inference`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import StagewiseError
from ..inference.choices import OUTPUT_FORMATS
from .inference import MODEL_HELP

FORMATS = OUTPUT_FORMATS


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="write L2-normalised embeddings of images (.npz)",
                       description="Pre-logits features of any classification run, unit length "
                       "(so a dot product is a cosine similarity). Files inside <folder>/<identity>/ "
                       "are labelled with the identity.")
    _model_flags(p, positional=True)
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--out", type=Path, default=Path("embeddings.npz"), help="the .npz to write")
    p.set_defaults(handler=_cmd_embed)

    p = sub.add_parser("index", help="index a gallery of images for search",
                       description="Embeds every image of GALLERY (GALLERY/<identity>/*.jpg gives "
                       "identities) into an exact cosine index, with a sidecar JSON of paths, "
                       "identities and the model beside it.")
    _model_flags(p, positional=True)
    p.add_argument("gallery", nargs="+", help="gallery folder(s), files or globs")
    p.add_argument("--out", type=Path, default=Path("gallery.index"), help="the index file to write")
    p.set_defaults(handler=_cmd_index)

    p = sub.add_parser("search", help="find the nearest gallery images of query images",
                       description="MODEL_OR_INDEX is a saved index (its sidecar names the model) "
                       "or a model run, then with --gallery to index on the fly.")
    p.add_argument("source", type=Path, metavar="MODEL_OR_INDEX", help=f"a .index file, or {MODEL_HELP}")
    p.add_argument("queries", nargs="+", help="query image files, folders or globs")
    p.add_argument("--gallery", nargs="+", default=None, help="gallery to index when given a model")
    p.add_argument("--model", type=Path, default=None,
                   help="the model of a saved index, when it moved since indexing")
    p.add_argument("--top-k", type=int, default=5, help="matches per query")
    p.add_argument("--format", choices=FORMATS, default="table", help="table, or json/csv on stdout")
    _model_flags(p, positional=False)
    p.set_defaults(handler=_cmd_search)


def _model_flags(p: argparse.ArgumentParser, positional: bool) -> None:
    if positional:
        p.add_argument("model", type=Path, help=MODEL_HELP)
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--num-workers", type=int, default=None, help="image decoding workers")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")


def _embed(clf: Any, inputs: list[str], args: argparse.Namespace) -> Any:
    """Embeddings of `inputs`; inputs that match nothing and unreadable files are warned about."""
    from ..inference.retrieval import embed_items, labelled_inputs

    items, missing = labelled_inputs(inputs)
    emb = embed_items(clf, items, args.batch_size, args.num_workers)
    problems = missing + emb.failed
    if len(emb) == 0:
        raise StagewiseError(f"none of the inputs could be embedded: {problems[0] if problems else '-'}")
    if problems and not args.quiet:
        print(f"warning: {len(problems)} input(s) skipped, e.g. {problems[0]}", file=sys.stderr)
    return emb


def _cmd_embed(args: argparse.Namespace) -> int:
    from ..inference import load
    from ..inference.retrieval import EMBEDDINGS_FILE
    from ..runfolder import check_outputs

    check_outputs([args.out], EMBEDDINGS_FILE)  # before minutes of embedding, not after
    clf = load(args.model, device=args.device)  # embeddings need no faiss: plain numpy out
    emb = _embed(clf, args.inputs, args)
    out = emb.save(args.out)
    labelled = sum(lab is not None for lab in emb.labels)
    if not args.quiet:
        print(f"wrote {out}: {len(emb)} x {emb.vectors.shape[1]} embeddings, {labelled} labelled",
              file=sys.stderr)
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from ..inference import load
    from ..inference.retrieval import INDEX_FILE, Retriever, index_paths, require_faiss
    from ..runfolder import check_outputs

    require_faiss()  # before minutes of embedding, not after
    check_outputs(list(index_paths(args.out)), INDEX_FILE)
    clf = load(args.model, device=args.device)
    gallery = Retriever(_embed(clf, args.gallery, args), clf=clf)
    path, sidecar = gallery.save(args.out)
    if not args.quiet:
        print(f"wrote {path} ({len(gallery)} images, "
              f"{len(set(gallery.gallery.labels) - {None})} identities) and {sidecar}", file=sys.stderr)
    return 0


def _retriever(args: argparse.Namespace) -> tuple[Any, Any]:
    """(retriever, classifier) for a saved index or a model plus --gallery."""
    from ..inference import load
    from ..inference.retrieval import Retriever, is_saved_index, read_sidecar, require_faiss

    require_faiss()
    if is_saved_index(args.source):
        if args.gallery:
            raise StagewiseError(f"{args.source} is a saved index: it is the gallery; drop --gallery "
                                 "(or pass the model instead of the index to search another gallery)")
        model = args.model or Path(read_sidecar(args.source)["model"])
        clf = load(model, device=args.device)
        return Retriever.load(args.source, clf=clf), clf
    if not args.gallery:
        what = ("a model, not a saved index" if args.source.is_dir() else
                f"not a saved index (no {args.source.name}.json beside it)")
        raise StagewiseError(f"{args.source}: {what}; add --gallery DIR to index a gallery now, or "
                             "pass an index written by `stagewise index MODEL DIR --out FILE`")
    clf = load(args.source, device=args.device)
    return Retriever(_embed(clf, args.gallery, args), clf=clf), clf


def _cmd_search(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise StagewiseError("--top-k must be at least 1")
    gallery, clf = _retriever(args)
    queries = _embed(clf, args.queries, args)
    matches = gallery.search(queries, args.top_k)
    rows = [{"query": p, "label": lab, "matches": [asdict(m) for m in ms]}
            for p, lab, ms in zip(queries.paths, queries.labels, matches, strict=True)]
    if args.format == "json":
        print(json.dumps({"index": str(args.source), "model": str(clf.source),
                          "top_k": args.top_k, "results": rows}, indent=2))
    elif args.format == "csv":
        sys.stdout.write(_csv(rows))
    else:
        _table(rows)
    return 0


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["query", "query_label", "rank", "path", "label", "distance"])
    for r in rows:
        for m in r["matches"]:
            writer.writerow([r["query"], r["label"] or "", m["rank"], m["path"], m["label"] or "",
                             f"{m['distance']:.6f}"])
    return buf.getvalue()


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # plain Text: file names may contain [brackets]

    table = Table(show_edge=False, header_style="bold")
    for col in ("query", "rank", "gallery image", "identity", "distance"):
        table.add_column(col, overflow="fold")
    for r in rows:
        for m in r["matches"]:
            table.add_row(Text(r["query"] if m["rank"] == 1 else ""), str(m["rank"]), Text(m["path"]),
                          Text(m["label"] or "-"), f"{m['distance']:.4f}")
    Console().print(table)
