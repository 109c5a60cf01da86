"""The parser class of every command: deferred flags (deferred.py) plus the spellings other
tools' tutorials use.

`--data_dir`, `--learning_rate`, `--freeze_backbone`: scripts written for argparse programs with
underscored flags (timm's train.py, the Hugging Face examples, most tutorials) run as written. Done
once here, before argparse sees the arguments, rather than by declaring a second spelling on every
flag: subcommands added later get it for free, and --help lists each flag once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .deferred import DeferredParser


class StagewiseParser(DeferredParser):
    """Accepts `--foo_bar` for every known long option `--foo-bar` (and its abbreviations).

    Only option names change: a value (`--set a_b=c`, `--out my_runs`) and everything after `--`
    stay as written. Subparsers are StagewiseParsers too (argparse's `add_subparsers` uses the
    parent's class), and each rewrites against its own options when it parses its share of argv.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        import sys

        self.populate()  # the deferred flags must be known before their spellings are checked
        given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self.hyphenated(given), namespace)

    def hyphenated(self, args: list[str]) -> list[str]:
        """`args` with each underscored long option that this parser knows hyphenated."""
        out: list[str] = []
        for i, arg in enumerate(args):
            if arg == "--":  # argparse's end of options: the rest are values
                return out + args[i:]
            out.append(self._hyphenated_option(arg))
        return out

    def _hyphenated_option(self, arg: str) -> str:
        if not isinstance(arg, str):  # argparse's own checks say what is wrong with it
            return arg
        name, eq, value = arg.partition("=")
        if not name.startswith("--") or "_" not in name or name in self._option_string_actions:
            return arg
        fixed = name[:2] + name[2:].replace("_", "-")
        # A prefix of a known option too: argparse then resolves (or refuses) the abbreviation.
        known = any(option.startswith(fixed) for option in self._option_string_actions)
        return fixed + eq + value if known else arg
