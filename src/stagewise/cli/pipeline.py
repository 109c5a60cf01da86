"""CLI commands for pipelines: `run`, `demo`, `presets`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..defaults import DEMO_OUT, PRESETS_OUT
from ..errors import StagewiseError
from ..kinds import task
from .common import (
    add_output_flags,
    add_resume_flag,
    pct,
    print_done,
    reporter_kind,
    resume_mode,
    signed,
)

if TYPE_CHECKING:
    from ..runs import PipelineResult


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a pipeline of stages (no file: the built-in demo)",
                       description="Run a pipeline YAML or a built-in preset (stagewise presets "
                       "list). Without either, runs the built-in demo.")
    p.add_argument("pipeline", nargs="?", type=Path,
                   help="pipeline YAML, or a preset's name (omit for the demo)")
    _common(p)
    p.add_argument("--stages", help="comma-separated subset of stages to run")
    p.add_argument("--dry-run", action="store_true",
                   help="print what every stage would run with (resolved recipe, weights source, "
                   "LR after scaling, global batch, estimated steps) and the problems it would "
                   "hit; train nothing")
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="with --dry-run: the processes the run will use (default: WORLD_SIZE or 1)")
    p.set_defaults(handler=_cmd_run)

    d = sub.add_parser("demo", help="generate the synthetic curriculum and run the 3-stage demo")
    _common(d, default_out=DEMO_OUT)
    d.set_defaults(handler=_cmd_demo)

    pr = sub.add_parser("presets", help="built-in pipelines: list, show, run")
    psub = pr.add_subparsers(dest="presets_cmd", required=True)
    psub.add_parser("list", help="list presets").set_defaults(handler=_cmd_presets_list)
    show = psub.add_parser("show", help="print a preset's YAML")
    show.add_argument("name", help="a preset (stagewise presets list)")
    show.set_defaults(handler=_cmd_presets_show)
    prun = psub.add_parser("run", help="run a preset")
    prun.add_argument("name", help="a preset (stagewise presets list)")
    _common(prun)
    prun.add_argument("--stages", help="comma-separated subset of stages to run")
    prun.set_defaults(handler=_cmd_presets_run)


def _common(p: argparse.ArgumentParser, default_out: str | None = None) -> None:
    p.add_argument("--out", type=Path, default=Path(default_out) if default_out else None,
                   help="pipeline run folder")
    add_resume_flag(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="stages.NAME.KEY=V, defaults.KEY=V, or a variable NAME=V (repeatable)")
    add_output_flags(p)


def _stages(args: argparse.Namespace) -> list[str] | None:
    return [s.strip() for s in args.stages.split(",") if s.strip()] if getattr(args, "stages", None) else None


def _cmd_run(args: argparse.Namespace) -> int:
    if args.resume not in (True, False, "auto") and args.pipeline is None:
        args.pipeline, args.resume = Path(args.resume), True  # `run --resume FILE`: the file
    args.resume = resume_mode(args)
    # `run --resume --out RUN` alone continues the pipeline saved in RUN (and only that: a resume
    # never starts something else); `run` alone is the demo, which resumes by itself.
    if args.pipeline is None and not args.resume and not args.dry_run:
        return _cmd_demo(args)
    spec, out = _pipeline_source(args)
    if args.dry_run:
        return _dry_run(spec, args)
    from ..runs.pipeline import run

    if out is None:
        raise StagewiseError("run needs --out RUN_FOLDER: with a pipeline file, the folder to run it "
                             "in; with --resume alone, the pipeline run to continue")
    result = run(spec, out, stages=_stages(args), resume=args.resume,
                 overrides=args.set, reporter=reporter_kind(args))
    print_summary(result, args)
    return 0


def _pipeline_source(args: argparse.Namespace) -> tuple[Any, Path | None]:
    """What `run`'s argument names: a YAML file, else a preset (with its default folder), else
    (none) the demo's preset; and the run folder."""
    from ..runs.presets import is_preset, load_preset

    given = args.pipeline
    if given is None:
        return (None if args.resume else load_preset("demo")), args.out
    if not given.exists() and is_preset(str(given)):
        return load_preset(str(given)), args.out or Path(PRESETS_OUT) / str(given)
    return given, args.out


def _dry_run(spec: Any, args: argparse.Namespace) -> int:
    from ..runs.dry_run import dry_run

    if spec is None:
        raise StagewiseError("--dry-run needs a pipeline file or a preset name")
    rows = dry_run(spec, args.set, args.out, _stages(args), args.processes)
    if args.log_format == "json":
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("stage", "strategy", "weights from", "optimizer", "lr used", "wd", "schedule",
                  "freeze ep", "layer decay", "size", "epochs", "global batch", "est. steps",
                  title="dry run: what each stage would run with")
    for r in rows:
        table.add_row(r["name"], r["strategy"], r["weights_from"], r["optimizer"], f"{r['lr_used']:.3g}",
                      f"{r['weight_decay']:g}", f"{r['scheduler']} (warmup {r['warmup_epochs']:g})",
                      str(r["freeze_epochs"]), str(r["layer_decay"] or "-"), str(r["image_size"] or "model's"),
                      str(r["epochs"]), str(r["global_batch"]),
                      "-" if r["steps"] is None else f"{'' if r['steps_exact'] else '~'}{r['steps']:,}")
    console = Console(width=None if sys.stdout.isatty() else 200)  # a pipe or file: no wrapping
    console.print(table)
    for r in rows:
        for problem in r["problems"]:
            console.print(f"[{r['name']}] would fail: {problem}", style="yellow", markup=False)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..runs.demo import run_demo

    out = args.out or Path(DEMO_OUT)
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

    out = args.out or Path(PRESETS_OUT) / args.name
    result = run(load_preset(args.name), out, stages=_stages(args), resume=resume_mode(args),
                 overrides=args.set, reporter=reporter_kind(args))
    print_summary(result, args)
    return 0


def print_summary(result: PipelineResult, args: argparse.Namespace) -> None:
    """A table of stages with best accuracy and the transfer gain against each baseline."""
    if not print_done(args, {"run_dir": str(result.run_dir), "stages": result.stages,
                             "complete": result.complete},
                      f"pipeline {'complete, nothing to do' if result.complete else 'finished'}: "
                      f"{len(result.stages)} stage(s)"):
        return
    from rich.console import Console
    from rich.table import Table

    from ..runfolder import gain_verdict

    with_test = any(s.get("test_top1") is not None for s in result.stages.values())
    columns = ["stage", "classes", "ep", "1st ep", "best", *(["test"] if with_test else []),
               "head kept", "baseline", "gain", "verdict"]
    table = Table(*columns, title="pipeline summary (val top-1; test: the best weights on the test split)"
                  if with_test else "pipeline summary (val top-1)")
    for name, s in result.stages.items():
        base = s.get("baseline") or {}
        gain = s.get("gain") or {}
        head = s.get("head") or {}
        status = "" if s.get("status") == "done" else f" ({s.get('status')})"
        # A stage is scored by its task's metric; other than top-1 (an embed stage's val mAP of
        # held-out identities) it is marked.
        scored = task(s.get("task", "classify"))
        mark = "" if scored.score == "val_top1" else f" {scored.label}"
        table.add_row(
            name + status, str(s.get("classes", "-")), str(s.get("epochs_run", "-")),
            pct(s.get("first_epoch_score", s.get("first_epoch_val_top1"))) + mark,
            pct(s.get("best_score", s.get("best_val_top1"))) + mark,
            *([pct(s.get("test_top1"))] if with_test else []),
            f"{head.get('kept', 0)}/{head.get('total', '-')}" if head else "-",
            pct(base.get("best_score", base.get("best_val_top1"))), signed(gain.get("best")),
            gain_verdict(gain) if gain else "-",
        )
    console = Console()
    console.print(table)
    console.print(f"run folder: {result.run_dir}")
    report = Path(result.run_dir) / "report.html"
    if report.exists():
        console.print(f"report: {report}")
