"""`stagewise models [PATTERN]`: the model names `--model` accepts, with size and input size."""

from __future__ import annotations

import argparse
import json

DEFAULT_LIMIT = 50  # rows shown: timm alone has over a thousand architectures


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list model names (timm and torchvision) with sizes",
                       description="List model names --model accepts, with parameter counts (for a "
                       "1000-class head) and default input size. PATTERN is a shell pattern, or a "
                       "substring without wildcards, e.g. 'convnext*' or resnet.")
    p.add_argument("pattern", nargs="?", default=None, help="e.g. 'resnet*', efficientnet, 'tv:*'")
    p.add_argument("--pretrained", action="store_true",
                   help="only names with pretrained weights, timm's with their tag (resnet50.a1_in1k)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                   help=f"rows to show (default {DEFAULT_LIMIT}; 0: all, which builds each one)")
    p.add_argument("--json", action="store_true", help="one JSON object: names and their details")
    p.set_defaults(handler=_cmd_models)


def _cmd_models(args: argparse.Namespace) -> int:
    from ..models.catalog import describe, model_names

    names = model_names(args.pattern, args.pretrained)
    shown = names if args.limit <= 0 else names[:args.limit]
    rows = [describe(n) for n in shown]
    if args.json:
        print(json.dumps({"total": len(names), "shown": len(rows), "models": [r.as_dict() for r in rows]}))
        return 0
    if not names:
        print(f"no model matches {args.pattern!r}; try a shorter pattern, e.g. 'resnet'")
        return 0
    width = max(len(r.name) for r in rows)
    print(f"{'model':<{width}}  {'library':<11}  {'params':>8}  input")
    for r in rows:
        params = f"{r.params / 1e6:.1f}M" if r.params is not None else "-"
        size = f"{r.input_size}px" if r.input_size else "-"
        print(f"{r.name:<{width}}  {r.library:<11}  {params:>8}  {size}")
    if len(rows) < len(names):
        print(f"... {len(names) - len(rows)} more of {len(names)}: narrow PATTERN, or --limit 0 for all")
    return 0
