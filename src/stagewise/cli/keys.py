"""`stagewise keys`: every stage key with its type, default and help, and the aliases.

The listing that errors no longer repeat: an unknown key's message names the closest key and
points here.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="list every config key of a stage (type, default, help) and the aliases",
                       description="Every key a stage accepts (YAML, --set, a pipeline stage, the "
                       "Python API), read from the schema, then the spellings of other tools "
                       "accepted as aliases.")
    p.add_argument("pattern", nargs="?", help="only keys whose name contains this (e.g. lr)")
    p.add_argument("--json", action="store_true", help="print {keys: [...], aliases: [...]} as JSON")
    p.add_argument("--markdown", action="store_true",
                   help="print the reference page docs/configuration.md is (a test keeps it equal)")
    p.set_defaults(handler=_cmd_keys)


def _cmd_keys(args: argparse.Namespace) -> int:
    from ..config.aliases import describe_aliases
    from ..config.keys import key_rows

    rows = key_rows(args.pattern)
    aliases = [a for a in describe_aliases() if not args.pattern or args.pattern.lower() in str(a)]
    if args.json:
        print(json.dumps({"keys": rows, "aliases": aliases}, default=str, indent=1))
        return 0
    if args.markdown:
        from ..config.keys import markdown_page

        print(markdown_page(rows, aliases), end="")
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table("key", "type", "default", "help", title="stage keys (YAML, --set KEY=VALUE, pipeline "
                  "stages); *: default filled by strategy, weights source or optimizer (kinds.recipe)")
    for r in rows:
        default = json.dumps(r["default"], default=str) + (" *" if r["by_choice"] else "")
        table.add_row(*map(escape, (r["key"], r["type"], default, r["help"])))
    console.print(table)
    if aliases:
        extra = Table("written as", "means", title="aliases (config/aliases.py): accepted and "
                      "rewritten to stagewise's keys")
        for a in aliases:
            extra.add_row(escape(a["spelling"]), escape(a["means"]))
        console.print(extra)
    return 0
