"""The command line: parse, build typed configs, call the API. No training logic lives here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import StagewiseError, TrainingInterrupted

Handler = Callable[[argparse.Namespace], int]

# CLI flag -> config key, for the flags of `train` that map one to one.
TRAIN_FLAGS: dict[str, tuple[str, type, str]] = {
    "data": ("data", str, "image folder (train/ and val/, or class folders)"),
    "model": ("model", str, "timm (or torchvision) model name, e.g. resnet18"),
    "weights": ("weights", str, "pretrained weights: a .safetensors/.pth file, 'hub' or hf-hub:ID"),
    "strategy": ("strategy", str, "scratch | probe | finetune | gradual"),
    "epochs": ("epochs", int, "epochs to train"),
    "lr": ("lr", float, "base learning rate"),
    "batch-size": ("batch_size", int, "images per batch"),
    "image-size": ("image_size", int, "input size in pixels (default: the model's)"),
    "optimizer": ("optimizer", str, "sgd | adam | adamw | rmsprop | adamw8bit"),
    "scheduler": ("scheduler", str, "constant | one_cycle | cosine | polynomial | exponential | step | multistep | plateau"),
    "precision": ("precision", str, "auto | fp32 | bf16 | fp16"),
    "augmentation": ("augmentation", str, "none | light | standard | strong"),
    "num-workers": ("num_workers", int, "data loader workers"),
    "seed": ("seed", int, "random seed"),
    "out": ("out", str, "run folder to write"),
    "log-with": ("log_with", str, "none | tensorboard | mlflow"),
}


def add_output_flags(p: argparse.ArgumentParser) -> None:
    """--quiet and --log-format, shared by every command that trains."""
    p.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    p.add_argument("--log-format", choices=["rich", "json"], default="rich",
                   help="rich progress for people, JSON lines for scripts")


def reporter_kind(args: argparse.Namespace) -> str:
    """The progress style `make_reporter` takes, from --quiet and --log-format."""
    return "quiet" if args.quiet else args.log_format


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one stage on an image folder",
                       description="Train one stage. Flags override --config; --set overrides both.")
    for flag, (_key, typ, text) in TRAIN_FLAGS.items():
        p.add_argument(f"--{flag}", type=typ, default=None, help=text)
    p.add_argument("--config", type=Path, help="YAML file with any config keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set layer_decay=0.7 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_output_flags(p)
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import apply_overrides, load_yaml
    from .stage import train

    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    for flag, (key, _t, _h) in TRAIN_FLAGS.items():
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            data[key] = value
    data = apply_overrides(data, args.set)
    if args.resume:
        if "out" not in data:
            raise StagewiseError("--resume needs --out RUN_FOLDER (the run to continue)")
        result = train(resume=True, reporter=reporter_kind(args), **data)
    else:
        if "data" not in data:
            raise StagewiseError("train needs --data DIR (or 'data:' in --config)")
        result = train(data, reporter=reporter_kind(args))
    _print_summary(result, args)
    return 0


def _print_summary(result: Any, args: argparse.Namespace) -> None:
    if args.quiet:
        return
    best = result.best
    if args.log_format == "json":
        import json

        print(json.dumps({"event": "done", "run_dir": str(result.run_dir), "stopped": result.stopped,
                          "best": best}))
        return
    top1 = best.get("val_top1")
    shown = f"{top1:.4f}" if isinstance(top1, float) else "-"
    print(f"done ({result.stopped}): best val top1 {shown} at epoch {best.get('epoch', '-')}; "
          f"run folder {result.run_dir}")


def _data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools: synth, inspect, fetch")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="generate the built-in synthetic curriculum")
    s.add_argument("out", type=Path)
    s.add_argument("--preset", default="curriculum")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scale", type=float, default=1.0, help="images per class multiplier")
    s.set_defaults(handler=_cmd_synth)
    _data_inspect_parser(dsub)
    _data_fetch_parser(dsub)


def _data_inspect_parser(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser("inspect", help="classes, counts, sizes, bad files and leakage of a dataset")
    p.add_argument("dir", type=Path, help="dataset folder (or CSV manifest)")
    p.add_argument("--format", default="auto", help="layout (default: detected)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="used when there is no val split")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from .data.inspect import inspect_dataset, render

    report = inspect_dataset(args.dir, args.format, args.val_fraction)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        render(report)
    return 0


def _data_fetch_parser(dsub: argparse._SubParsersAction) -> None:
    from .data.sources import GATED, SOURCES

    p = dsub.add_parser("fetch", help="download a public dataset (checksum-verified, resumable)")
    p.add_argument("name", choices=[*SOURCES, *GATED], help="dataset to download")
    p.add_argument("--root", type=Path, required=True, help="folder to put the dataset in")
    p.add_argument("--base-url", help="mirror serving the same file names (or $STAGEWISE_FETCH_BASE_URL)")
    p.add_argument("--checksum", help="expected md5:<hex> or sha256:<hex>, overriding the registry")
    p.add_argument("--keep-archive", action="store_true", help="keep the archive in ROOT/.downloads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_fetch)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .data.fetch import fetch
    from .data.sources import get_source

    folder = fetch(args.name, args.root, base_url=args.base_url, checksum=args.checksum,
                   keep_archive=args.keep_archive, progress=not args.quiet)
    print(f"{folder}  (data: {folder}, format: {get_source(args.name).layout})")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import PRESETS, generate

    if args.preset not in PRESETS:
        raise StagewiseError(f"unknown preset '{args.preset}'; choose one of {', '.join(PRESETS)}")
    for folder in generate(args.out, args.preset, args.seed, args.scale):
        print(folder)
    return 0


def _pipeline_parsers(sub: argparse._SubParsersAction) -> None:
    from .cli_pipeline import add_parsers

    add_parsers(sub)


def _inference_parsers(sub: argparse._SubParsersAction) -> None:
    from .inference.commands import add_parsers

    add_parsers(sub)  # predict, evaluate, export


def _reporting_parsers(sub: argparse._SubParsersAction) -> None:
    from .reporting.commands import add_parsers

    add_parsers(sub)  # report, compare, lr-find


PARSERS = [_train_parser, _pipeline_parsers, _data_parser, _inference_parsers, _reporting_parsers]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="stagewise", description=__doc__)
    parser.add_argument("--version", action="version", version=f"stagewise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except StagewiseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A path that cannot be read or written (a file where a folder belongs, no permission,
        # a full disk) is the user's to fix: say which path and why, without a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
