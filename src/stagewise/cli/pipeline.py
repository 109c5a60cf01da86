"""CLI commands for pipelines: `run`, `demo`, `presets`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import StagewiseError
from .common import add_output_flags, pct, print_done, reporter_kind, signed

if TYPE_CHECKING:
    from ..runs import PipelineResult


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a pipeline of stages (no file: the built-in demo)",
                       description="Run a pipeline YAML. Without a file, runs the built-in demo.")
    p.add_argument("pipeline", nargs="?", type=Path, help="pipeline YAML (omit for the demo)")
    _common(p)
    p.add_argument("--stages", help="comma-separated subset of stages to run")
    p.set_defaults(handler=_cmd_run)

    d = sub.add_parser("demo", help="generate the synthetic curriculum and run the 3-stage demo")
    _common(d, default_out="runs/demo")
    d.set_defaults(handler=_cmd_demo)

    pr = sub.add_parser("presets", help="built-in pipelines: list, show, run")
    psub = pr.add_subparsers(dest="presets_cmd", required=True)
    psub.add_parser("list", help="list presets").set_defaults(handler=_cmd_presets_list)
    show = psub.add_parser("show", help="print a preset's YAML")
    show.add_argument("name")
    show.set_defaults(handler=_cmd_presets_show)
    prun = psub.add_parser("run", help="run a preset")
    prun.add_argument("name")
    _common(prun)
    prun.add_argument("--stages", help="comma-separated subset of stages to run")
    prun.set_defaults(handler=_cmd_presets_run)


def _common(p: argparse.ArgumentParser, default_out: str | None = None) -> None:
    p.add_argument("--out", type=Path, default=Path(default_out) if default_out else None,
                   help="pipeline run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="stages.NAME.KEY=V, defaults.KEY=V, or a variable NAME=V (repeatable)")
    add_output_flags(p)


def _stages(args: argparse.Namespace) -> list[str] | None:
    return [s.strip() for s in args.stages.split(",") if s.strip()] if getattr(args, "stages", None) else None


def _cmd_run(args: argparse.Namespace) -> int:
    # `run --resume --out RUN` alone continues the pipeline saved in RUN (and only that: a resume
    # never starts something else); `run` alone is the demo, which resumes by itself.
    if args.pipeline is None and not args.resume:
        return _cmd_demo(args)
    from ..runs.pipeline import run

    if args.out is None:
        raise StagewiseError("run needs --out RUN_FOLDER: with a pipeline file, the folder to run it "
                             "in; with --resume alone, the pipeline run to continue")
    result = run(args.pipeline, args.out, stages=_stages(args), resume=args.resume,
                 overrides=args.set, reporter=reporter_kind(args))
    print_summary(result, args)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..runs.demo import run_demo

    out = args.out or Path("runs/demo")
    result = run_demo(out, reporter=reporter_kind(args), overrides=args.set, stages=_stages(args))
    print_summary(result, args)
    return 0


def _cmd_presets_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..runs.presets import list_presets

    table = Table("preset", "description")
    for name, text in list_presets().items():
        table.add_row(name, text)
    Console().print(table)
    return 0


def _cmd_presets_show(args: argparse.Namespace) -> int:
    from ..runs.presets import preset_path

    print(preset_path(args.name).read_text(), end="")
    return 0


def _cmd_presets_run(args: argparse.Namespace) -> int:
    from ..runs.pipeline import run
    from ..runs.presets import load_preset

    out = args.out or Path("runs") / args.name
    result = run(load_preset(args.name), out, stages=_stages(args), resume=args.resume,
                 overrides=args.set, reporter=reporter_kind(args))
    print_summary(result, args)
    return 0


def print_summary(result: PipelineResult, args: argparse.Namespace) -> None:
    """A table of stages with best accuracy and the transfer gain against each baseline."""
    if not print_done(args, {"run_dir": str(result.run_dir), "stages": result.stages},
                      f"pipeline finished: {len(result.stages)} stage(s)"):
        return
    from rich.console import Console
    from rich.table import Table

    with_test = any(s.get("test_top1") is not None for s in result.stages.values())
    columns = ["stage", "classes", "ep", "1st ep", "best", *(["test"] if with_test else []),
               "head kept", "baseline", "gain"]
    table = Table(*columns, title="pipeline summary (val top-1; test: the best weights on the test split)"
                  if with_test else "pipeline summary (val top-1)")
    for name, s in result.stages.items():
        base = s.get("baseline") or {}
        gain = s.get("gain") or {}
        head = s.get("head") or {}
        status = "" if s.get("status") == "done" else f" ({s.get('status')})"
        # An embed stage is scored by the val mAP of its held-out identities (marked "mAP").
        key, mark = ("val_map", " mAP") if s.get("best_val_map") is not None else ("val_top1", "")
        table.add_row(
            name + status, str(s.get("classes", "-")), str(s.get("epochs_run", "-")),
            pct(s.get(f"first_epoch_{key}")) + mark, pct(s.get(f"best_{key}")) + mark,
            *([pct(s.get("test_top1"))] if with_test else []),
            f"{head.get('kept', 0)}/{head.get('total', '-')}" if head else "-",
            pct(base.get(f"best_{key}")), signed(gain.get("best")),
        )
    console = Console()
    console.print(table)
    console.print(f"run folder: {result.run_dir}")
    report = Path(result.run_dir) / "report.html"
    if report.exists():
        console.print(f"report: {report}")
