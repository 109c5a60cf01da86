"""`stagewise explain RUN IMAGES... --out DIR`: a Grad-CAM overlay per image (inference.explain)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import defaults


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="Grad-CAM overlays: where the model looked, per image",
                       description="Write one PNG per image: the model's input view with the Grad-CAM "
                       "heat map of its predicted class over it, captioned with the class and its "
                       "probability (also in the PNG's text fields and in explanations.csv). Needs "
                       "the grad-cam package: pip install \"stagewise[explain]\".")
    p.add_argument("model", type=Path, help="a run folder, pipeline run folder or .safetensors file "
                   "with model.json beside it")
    p.add_argument("inputs", nargs="+", metavar="IMAGE",
                   help="image files, folders (searched recursively) or globs")
    p.add_argument("--out", type=Path, default=Path(defaults.EXPLAIN_OUT),
                   help=f"folder for the overlays (default {defaults.EXPLAIN_OUT})")
    p.add_argument("--layer", default=None, help="the module whose activations are weighed, e.g. "
                   "layer4 or stages.3 (default: the last feature map before pooling)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward/backward pass")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    p.set_defaults(handler=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    from ..errors import StagewiseError
    from ..inference import load
    from ..inference.explain import explain, require_gradcam

    if args.batch_size < 1:
        raise StagewiseError("--batch-size must be at least 1")
    require_gradcam()  # before the model loads: the fix is an install
    clf = load(args.model, device=args.device)
    done, skipped = explain(clf, args.inputs, args.out, layer=args.layer, batch_size=args.batch_size)
    for path, why in skipped:
        print(f"warning: skipped {path}: {why}", file=sys.stderr)
    if not done:
        print(f"error: none of the {len(skipped)} input(s) could be read", file=sys.stderr)
        return 2
    if not args.quiet:
        for e in done:
            print(f"{e.overlay}  {e.name} {100 * e.probability:.1f}%  ({e.source})", file=sys.stderr)
        print(f"{len(done)} overlay(s) in {args.out} (explanations.csv lists them)", file=sys.stderr)
    return 0
