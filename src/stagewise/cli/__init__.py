"""The command line: parse, build typed configs, call the API. No training logic lives here.

One module per command group (train, pipeline, data, inference, retrieval, reporting, models);
flags and summary
printing that several share live in `common`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .._version import __version__
from ..errors import StagewiseError, TrainingInterrupted, clip
from . import (
    data,
    explain,
    hub,
    inference,
    keys,
    models,
    pipeline,
    reporting,
    retrieval,
    train,
    tune,
)
from .parser import StagewiseParser

# One module per command group, in the order `stagewise --help` lists them.
PARSERS = [train.add_parsers, pipeline.add_parsers, data.add_parsers, inference.add_parsers,
           explain.add_parsers, hub.add_parsers, retrieval.add_parsers, reporting.add_parsers,
           models.add_parsers, tune.add_parsers, keys.add_parsers]


# What `stagewise --help` says first: what the tool is for (the module docstring is for developers).
DESCRIPTION = """\
stagewise: transfer learning and stage-by-stage training of image classifiers.

Train a timm or torchvision model on an image folder (one stage, or a pipeline of stages that
hand their weights on), compare models and strategies on the same budget, and get a report of
each run (curves with stage boundaries, the gain over a baseline); then predict, evaluate and
export the result."""

EPILOG = """\
examples:
  stagewise train --data DIR --model resnet18 --weights hub --out runs/first
  stagewise run pipeline.yaml --out runs/pipe     (stagewise run alone: the built-in demo)
  stagewise compare --data DIR --out runs/cmp     (a default set of architectures)
  stagewise tune --data DIR --config space.yaml --out runs/tune   (Optuna search)
  stagewise keys                                  (every config key, with its default)

Every long option may be written with _ as well as - (--data_dir, --learning_rate).
`stagewise COMMAND --help` describes a command's flags."""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; a command's flags that need the library are added only when that
    command is parsed or its help printed (DeferredParser), so --help stays free of torch."""
    parser = StagewiseParser(prog="stagewise", description=DESCRIPTION, epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"stagewise {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
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
        where = f"{clip(str(exc.filename))}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
