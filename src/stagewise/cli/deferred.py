"""Parsers whose arguments are added when their command is used, not when the CLI starts.

A command's flags may need the library to describe themselves (the valid output formats, the
test-time augmentation modes); importing it for `stagewise --help` or another command's --help
would cost seconds of torch. argparse asks a subcommand's parser for its arguments only by parsing
with it or printing its help, so those two entry points add the deferred arguments first.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

Builder = Callable[[argparse.ArgumentParser], None]


class DeferredParser(argparse.ArgumentParser):
    """An ArgumentParser that runs its deferred builders before it parses or formats help.

    Subparsers of a DeferredParser are DeferredParsers too (argparse's `add_subparsers` uses the
    parent's class).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[Builder] = []

    def defer(self, build: Builder) -> None:
        self._pending.append(build)

    def populate(self) -> None:
        """Run the deferred builders, once each."""
        while self._pending:
            self._pending.pop(0)(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        self.populate()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.populate()
        return super().format_help()

    def format_usage(self) -> str:
        self.populate()
        return super().format_usage()


def defer(parser: argparse.ArgumentParser, build: Builder) -> None:
    """Add `build`'s arguments to `parser` when it is used; at once for a plain ArgumentParser."""
    if isinstance(parser, DeferredParser):
        parser.defer(build)
    else:
        build(parser)
