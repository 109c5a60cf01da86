"""CLI command `push`: export a run for the Hugging Face Hub and upload it. No logic."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .deferred import defer

MODEL_HELP = ("run folder or pipeline run folder (exported first), or a folder written by "
              "`export --format hf` (uploaded as it is)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="publish a trained model on the Hugging Face Hub",
                       description="Exports RUN as a timm folder (config.json, model.safetensors, "
                       "README.md model card, model.json; see `export --format hf`) and uploads it "
                       "to the model repo REPO_ID, created if missing. The token is huggingface_hub's: "
                       "HF_TOKEN or `hf auth login`. Load it back with "
                       "timm.create_model('hf-hub:REPO_ID', pretrained=True) or "
                       "stagewise.load('hf-hub:REPO_ID').")
    defer(p, _arguments)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, metavar="RUN", help=MODEL_HELP)
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub model repo: your-name/model-name")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing "
                   "repo keeps its visibility)")
    p.add_argument("--dry-run", action="store_true",
                   help="export and list the files that would be uploaded, without any network")
    p.add_argument("--out", type=Path, default=None,
                   help="where the export folder is written (default: RUN/hf)")
    p.add_argument("--license", default=None,
                   help="the license in the card's metadata: a Hub license id such as apache-2.0, "
                   "mit, cc-by-4.0 or other (default: none stated)")
    p.add_argument("--message", default=None, help="the commit message (default: 'Upload NAME (stagewise)')")
    p.set_defaults(handler=_cmd_push)


def _cmd_push(args: argparse.Namespace) -> int:
    from ..inference import load
    from ..inference.hf_export import export_hf
    from ..inference.hub import CONFIG_JSON, WEIGHTS, check_repo_id, push

    check_repo_id(args.repo_id)  # before exporting anything
    folder: Path = args.model
    if not ((folder / CONFIG_JSON).is_file() and (folder / WEIGHTS).is_file()):
        result = export_hf(load(folder, device="cpu"), args.out, repo_id=args.repo_id,
                           license=args.license)
        folder = result.path
        print(f"exported {folder} (timm parity: max |logit difference| {result.max_abs_diff:.2e})")
    elif args.license or args.out:
        print(f"note: {folder} is an export already and is uploaded as it is; --license and --out "
              "apply when push exports a run folder", file=sys.stderr)
    pushed = push(folder, args.repo_id, private=args.private, dry_run=args.dry_run,
                  commit_message=args.message)
    verb = "would upload" if pushed.dry_run else "uploaded"
    print(f"{verb} to {pushed.repo_id}{' (private)' if pushed.private else ''}:")
    for name, size in pushed.files:
        print(f"  {name}  {size:,} bytes")
    if pushed.url:
        print(f"commit: {pushed.url}")
    return 0
