"""`stagewise train`: one stage."""

from __future__ import annotations

import argparse

from ..kinds import task
from .common import (
    add_output_flags,
    add_resume_flag,
    add_settings_flags,
    print_done,
    reporter_kind,
    require,
    resume_mode,
    settings,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one stage on an image folder",
                       description="Train one stage. Flags override --config; --set overrides both.")
    add_settings_flags(p)
    add_resume_flag(p)
    add_output_flags(p)
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..runs import train

    data = settings(args)
    resume = resume_mode(args)
    if resume is True:
        require(data, "out", "--resume", "--out RUN_FOLDER (the run to continue)")
        result = train(resume=True, reporter=reporter_kind(args), **data)
    else:
        require(data, "data", "train", "--data DIR")
        from ..config import build_config

        # Validated here so that a problem names the file it comes from (not "config:").
        source = f"{args.config}" if args.config else "command line"
        result = train(build_config(data, source=source), resume=resume, reporter=reporter_kind(args))
    best = result.best
    scored = task(result.task)
    key, name = scored.score, scored.label
    value = best.get(key)
    shown = f"{value:.4f}" if isinstance(value, float) else "-"
    test = f", test top1 {result.test.top1:.4f}" if result.test is not None else ""
    print_done(args, {"run_dir": str(result.run_dir), "stopped": result.stopped, "best": best,
                      "test_top1": result.test.top1 if result.test is not None else None,
                      "complete": result.complete},
               f"{'run complete, nothing to do' if result.complete else 'done'} ({result.stopped}): best val {name} {shown} at epoch {best.get('epoch', '-')}"
               f"{test}; run folder {result.run_dir}")
    return 0
