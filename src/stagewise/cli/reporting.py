"""CLI commands `report`, `compare` and `lr-find`: parse, build plain settings, call the API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config.choices import Strategy, Task, choices_of
from ..defaults import COMPARE_MODELS, COMPARE_STRATEGIES, LR_FIND_OUT
from ..errors import ConfigError
from ..runfolder import LR_FIND, LR_FIND_PLOT
from .common import (
    add_output_flags,
    add_settings_flags,
    print_done,
    reporter_kind,
    require,
    settings,
)

# `train` flags that compare and lr-find take as shared settings (the grid's own axes excluded).
_GRID_KEYS = {"data", "model", "strategy", "optimizer", "scheduler", "weights", "out", "epochs"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write report.html, report.md and plots/ for a run folder",
                       description="Report of a stage run folder or a pipeline run folder.")
    p.add_argument("run", type=Path, help="run folder (stagewise train/run --out)")
    p.add_argument("--no-predictions", action="store_true",
                   help="do not load the model (skips the sample prediction grid)")
    p.set_defaults(handler=_cmd_report)
    _compare_parser(sub)
    _lr_find_parser(sub)


def _compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="train a grid of models x strategies and compare them",
                       description="Every cell trains with the same budget, seed and data split; "
                                   "finished cells are kept when the command is run again. Each "
                                   "list flag is an axis of the grid; without --models, a default "
                                   "set of architectures (docs/cli.md).")
    p.add_argument("--data", "--data-dir", required=True, help="image folder")
    p.add_argument("--models", default=",".join(COMPARE_MODELS),
                   help="comma-separated model names (default: " + ",".join(COMPARE_MODELS)
                   + ", a small set of families with ImageNet weights in timm)")
    p.add_argument("--strategies", default=",".join(COMPARE_STRATEGIES),
                   help=f"comma-separated: {','.join(choices_of(Strategy))}")
    p.add_argument("--optimizers", help="comma-separated optimizers (default: the config's)")
    p.add_argument("--schedulers", help="comma-separated schedulers (default: the config's)")
    p.add_argument("--layer-decays", help="comma-separated layer_decay values, e.g. 1.0,0.7: uniform "
                   "against discriminative LRs (default: the strategy's)")
    p.add_argument("--group-lrs", metavar="SPEC;SPEC", help="';'-separated group_lrs values, each "
                   "[LABEL:]PATTERN=LR,PATTERN=LR or none, e.g. 'none;head10x:fc.*=1e-2'")
    p.add_argument("--tasks", help=f"comma-separated: {','.join(choices_of(Task))} (a classifier's "
                   "features against metric-learned ones; needs --retrieval-data)")
    p.add_argument("--retrieval-data", help="identity folders no cell trains on: every cell's best "
                                            "weights search them (recall@1, mAP)")
    p.add_argument("--epochs", type=int, help="epochs per cell (default: --config's, else a stage's "
                   "default)")
    p.add_argument("--out", "--output-dir", type=Path, required=True,
                   help="comparison folder (cells/ inside)")
    p.add_argument("--weights", help="weights FILE for every model, or MODEL=FILE,MODEL=FILE")
    add_settings_flags(p, _GRID_KEYS)
    add_output_flags(p)
    p.set_defaults(handler=_cmd_compare)


def _lr_find_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: suggests an LR, plots the loss",
                       description="Exponential LR sweep over a few hundred steps at most; the "
                                   "model and data are set up as `train` would.")
    add_settings_flags(p, {"out"})
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of the sweep (max 1000)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="the sweep's first LR (default: 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="the sweep's last LR (default: 10)")
    p.add_argument("--out", type=Path, default=Path(LR_FIND_OUT),
                   help=f"folder for {LR_FIND} and {LR_FIND_PLOT}")
    add_output_flags(p)
    p.set_defaults(handler=_cmd_lr_find)


def _split(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _floats(text: str | None, flag: str) -> list[float] | None:
    try:
        return [float(x) for x in _split(text) or []] or None
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 1.0,0.7") from None


def _cmd_report(args: argparse.Namespace) -> int:
    from ..lock import refuse_if_running
    from ..reporting import write_report

    refuse_if_running(args.run, "report")  # a training's files change under a report
    print(write_report(args.run, predictions=not args.no_predictions))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..runs.comparison import compare, parse_group_lrs, parse_weights

    result = compare(args.data, _split(args.models) or [], _split(args.strategies) or [],
                     epochs=args.epochs, out=args.out, optimizers=_split(args.optimizers),
                     schedulers=_split(args.schedulers), weights=parse_weights(args.weights),
                     settings=settings(args, _GRID_KEYS), reporter=reporter_kind(args),
                     tasks=_split(args.tasks), retrieval_data=args.retrieval_data,
                     layer_decays=_floats(args.layer_decays, "--layer-decays"),
                     group_lrs=parse_group_lrs(args.group_lrs))
    if args.quiet:
        return 0
    if args.log_format == "json":
        print(json.dumps({"event": "compare", "html": str(result.html), "trained": result.trained,
                          "kept": result.skipped, "cells": result.rows}))
        return 0
    for row in result.rows:
        top1 = row.get("val_top1")
        shown = f"val top1 {top1:.4f}" if isinstance(top1, float) else f"val mAP {_num(row.get('val_map'))}"
        if "retrieval_map" in row:
            shown += (f", search R@1 {_num(row['retrieval_recall1'])} mAP {_num(row['retrieval_map'])}")
        print(f"{row['cell']}: {shown}, {row.get('seconds', 0):.1f}s")
    kept = f" ({len(result.skipped)} finished cell(s) kept)" if result.skipped else ""
    print(f"comparison: {result.html}{kept}")
    return 0


def _num(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def _cmd_lr_find(args: argparse.Namespace) -> int:
    from ..runs.lr_range import lr_find

    data = settings(args, {"out"})
    require(data, "data", "lr-find", "--data DIR")
    result = lr_find(data, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr, out=args.out,
                     reporter=reporter_kind(args))
    print_done(args, {"valley": result.valley, "steepest": result.steepest, "steps": len(result.lrs),
                      "trainable_params": result.trainable_params, "stopped": result.stopped,
                      "plot": str(args.out / LR_FIND_PLOT)},
               f"suggested LR: valley {_lr(result.valley)}, steepest {_lr(result.steepest)} "
               f"({len(result.lrs)} steps over {result.trainable_params:,} trainable parameters, "
               f"{result.stopped}); plot: {args.out / LR_FIND_PLOT}")
    return 0


def _lr(value: float | None) -> str:
    return f"{value:.2e}" if value is not None else "none (the loss never fell; widen the range)"
