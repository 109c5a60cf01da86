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
from . import data, explain, hub, inference, models, pipeline, reporting, retrieval, train, tune
from .deferred import DeferredParser

# One module per command group, in the order `stagewise --help` lists them.
PARSERS = [train.add_parsers, pipeline.add_parsers, data.add_parsers, inference.add_parsers,
           explain.add_parsers, hub.add_parsers, retrieval.add_parsers, reporting.add_parsers,
           models.add_parsers, tune.add_parsers]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; a command's flags that need the library are added only when that
    command is parsed or its help printed (DeferredParser), so --help stays free of torch."""
    parser = DeferredParser(prog="stagewise", description=__doc__.splitlines()[0])
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
        where = f"{clip(str(exc.filename))}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
