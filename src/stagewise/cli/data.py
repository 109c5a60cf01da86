"""`stagewise data synth|inspect|fetch|shard`: dataset tools."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import defaults
from ..errors import StagewiseError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools: synth, inspect, fetch, index, shard")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser(
        "synth", help="generate synthetic datasets: the built-in curriculum or a fake ImageNet family",
        description="curriculum: OUT/level1..level3, class folders of procedural shapes (the demo's "
                    "data). imagenet-family: OUT/imagenette2, tiny-imagenet-200, imagenet-mini and "
                    "imagenet, tiny fakes in the real layouts with real ImageNet wnids, for trying the "
                    "imagenet-progressive preset (--set data_root=OUT) without downloading.")
    s.add_argument("out", type=Path, help="folder to write the datasets in (created if missing)")
    s.add_argument("--preset", default="curriculum", choices=["curriculum", "imagenet-family"],
                   help="what to make (default: curriculum)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default: 0)")
    s.add_argument("--scale", type=float, default=1.0,
                   help="curriculum only: images per class multiplier (default: 1.0)")
    s.add_argument("--classes", type=int, default=20, metavar="K",
                   help="imagenet-family only: classes of imagenet-mini and imagenet (11-1000; "
                        "Imagenette's 10 wnids plus K-10 more); tiny-imagenet-200 gets the first "
                        "min(K, 200), imagenette2 always its 10 (default: 20)")
    s.add_argument("--per-class", type=int, default=8, metavar="N",
                   help="imagenet-family only: train images per class; val gets max(2, N/2) "
                        "(default: 8)")
    s.add_argument("--size", type=int, default=64, metavar="PX",
                   help="imagenet-family only: image side in pixels, JPEG (default: 64)")
    s.set_defaults(handler=_cmd_synth)
    _inspect_parser(dsub)
    _fetch_parser(dsub)
    _shard_parser(dsub)
    _index_parser(dsub)


def _split_arguments(p: argparse.ArgumentParser, seed_help: str) -> None:
    """How a folder is read and split, as training reads it (`data index` and `data shard`)."""
    p.add_argument("--format", default="auto", help="layout of DIR (default: detected)")
    p.add_argument("--val-fraction", type=float, default=defaults.VAL_FRACTION,
                   help="held out as val when DIR has no val split (must match the training "
                        "config's)")
    p.add_argument("--seed", type=int, default=defaults.SEED, help=seed_help)


def _index_parser(dsub: argparse._SubParsersAction) -> None:
    from ..config.choices import VerifyMode, choices_of

    p = dsub.add_parser(
        "index", help="build (or refresh) the saved file index that training reads back",
        description="Lists DIR once and saves the index as arrays in the index cache "
                    "($STAGEWISE_INDEX_CACHE, else $STAGEWISE_CACHE_DIR/index, else "
                    "~/.cache/stagewise/index); training and resumes read it back while DIR is "
                    "unchanged. Run it before a multi-node job to index outside its time.")
    p.add_argument("dir", type=Path, help="dataset folder (or CSV manifest)")
    _split_arguments(p, "the training config's seed")
    p.add_argument("--verify", default=defaults.VERIFY, choices=choices_of(VerifyMode),
                   help=f"what to open: auto (header up to {defaults.VERIFY_AUTO_LIMIT} files, "
                        "none above), none, header, decode (default: auto)")
    p.add_argument("--refresh", action="store_true", help="rebuild even if the saved index is current")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_index)


def _cmd_index(args: argparse.Namespace) -> int:
    from ..data.layouts import index_dataset

    done = index_dataset(args.dir, args.format, args.val_fraction, args.seed,
                         progress=not args.json, verify=args.verify, refresh=args.refresh)
    index = done.index
    splits = {name: len(s) for name, s in index.splits.items()}
    report = {"files": done.files, "seconds": round(done.seconds, 4), "cached": done.cached,
              "classes": index.num_classes, "layout": index.layout, "verify": done.verify,
              "splits": splits,
              "skipped": len(index.skipped), "cache": str(done.path)}
    if args.json:
        print(json.dumps(report))
    else:
        how = "read back" if done.cached else "built"
        print(f"{done.files} files, {index.num_classes} classes ({', '.join(f'{k} {v}' for k, v in splits.items())}); "
              f"{how} in {done.seconds:.2f}s (verify: {done.verify}) -> {done.path}")
    return 0


def _inspect_parser(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser("inspect", help="classes, counts, sizes, bad files and leakage of a dataset")
    p.add_argument("dir", type=Path, help="dataset folder (or CSV manifest)")
    p.add_argument("--format", default="auto", help="layout (default: detected)")
    p.add_argument("--val-fraction", type=float, default=defaults.VAL_FRACTION,
                   help="used when there is no val split")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import inspect_dataset, render

    report = inspect_dataset(args.dir, args.format, args.val_fraction, progress=True)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        render(report)
    return 0


def _fetch_parser(dsub: argparse._SubParsersAction) -> None:
    from ..data.sources import GATED, SOURCES  # the registry, for the valid names in --help

    p = dsub.add_parser("fetch", help="download a public dataset (checksum-verified, resumable)")
    p.add_argument("name", choices=[*SOURCES, *GATED], help="dataset to download")
    p.add_argument("--root", type=Path, required=True, help="folder to put the dataset in")
    p.add_argument("--base-url", help="mirror serving the same file names (or $STAGEWISE_FETCH_BASE_URL)")
    p.add_argument("--checksum", help="expected md5:<hex> or sha256:<hex>, overriding the registry")
    p.add_argument("--keep-archive", action="store_true", help="keep the archive in ROOT/.downloads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_fetch)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from ..data.fetch import fetch
    from ..data.sources import get_source

    folder = fetch(args.name, args.root, base_url=args.base_url, checksum=args.checksum,
                   keep_archive=args.keep_archive, progress=not args.quiet)
    print(f"{folder}  (data: {folder}, format: {get_source(args.name).layout})")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    if args.preset == "imagenet-family":
        return _synth_family(args)
    from ..data.synth import PRESETS, generate

    if args.preset not in PRESETS:
        raise StagewiseError(f"unknown preset '{args.preset}'; choose one of {', '.join(PRESETS)}")
    for folder in generate(args.out, args.preset, args.seed, args.scale):
        print(folder)
    return 0


def _synth_family(args: argparse.Namespace) -> int:
    import time

    from ..data.synth_imagenet import generate_family

    start = time.perf_counter()
    try:
        folders = generate_family(args.out, classes=args.classes, per_class=args.per_class,
                                  size=args.size, seed=args.seed)
    except ValueError as exc:
        raise StagewiseError(f"data synth: {exc}") from None
    files = [f for folder in folders for f in folder.rglob("*") if f.is_file()]
    for folder in folders:
        print(folder)
    print(f"{len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB in "
          f"{time.perf_counter() - start:.1f}s; run the preset with --set data_root={args.out}")
    return 0


def _shard_parser(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "shard", help="write a dataset as WebDataset tar shards (train with --data OUT)",
        description="Reads FOLDER in any layout train reads (its train/val split, or val_fraction "
                    "held out) and writes OUT/<split>-NNNNNN.tar shards with an offset index and "
                    "stagewise-shards.json (classes, counts). The image files' bytes are stored "
                    "as they are. See docs/shards.md.")
    p.add_argument("dir", type=Path, metavar="FOLDER", help="dataset folder (or CSV manifest)")
    p.add_argument("out", type=Path, metavar="OUT",
                   help="new folder for the shards (must not exist or be empty)")
    p.add_argument("--shard-size", default="256MB", metavar="SIZE",
                   help="bytes per shard: 256MB, 1GB, 512MiB (default: 256MB)")
    _split_arguments(p, "seed of that split and of the training samples' order in the shards")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_shard)


def _cmd_shard(args: argparse.Namespace) -> int:
    from ..data.shard_writer import parse_size, write_shards

    size = parse_size(args.shard_size)  # before anything is read
    manifest = write_shards(args.dir, args.out, size, args.format, args.val_fraction, args.seed,
                            progress=not args.quiet)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    for name, info in manifest["splits"].items():
        total = sum(s["bytes"] for s in info["shards"])
        print(f"{name}: {info['samples']} images in {len(info['shards'])} shard(s), {total / 1e6:.1f} MB")
    print(f"{args.out}  ({len(manifest['classes']['ids'])} classes, {manifest['seconds']:.1f}s; "
          f"train with --data {args.out})")
    return 0
