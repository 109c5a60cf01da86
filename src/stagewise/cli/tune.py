"""`stagewise tune`: a hyperparameter search (Optuna) over any keys of a stage or a pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config.choices import TunePruner, TuneSampler, choices_of
from ..config.yaml_loader import load_yaml
from ..defaults import TUNE_OUT
from ..errors import ConfigError
from .common import (
    TRAIN_FLAGS,
    add_output_flags,
    add_settings_flags,
    print_done,
    reporter_kind,
    settings,
)

_EXAMPLE = """example SPACE.yaml (any stage keys, or a pipeline with stages:):
  data: data/pets
  model: resnet18
  epochs: 8
  tune:
    lr: {log_uniform: [1.0e-4, 1.0e-2]}
    strategy: [probe, finetune]
    weight_decay: {uniform: [0.0, 0.1]}
    epochs: {int: [2, 8]}
several workers (processes or machines) share one study with --storage and --study."""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="search hyperparameters (Optuna): each trial a normal run, pruned by epochs",
        description="Search the keys listed under tune: in --config (a stage config or a pipeline) "
        "with Optuna. Each trial is a run folder in OUT/trials/<number>/, scored by its monitor (a "
        "pipeline: its last stage's); OUT/best.yaml holds the best config, ready to run.",
        epilog=_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_flags(p, skip={"out"})
    p.add_argument("--out", type=Path, default=Path(TUNE_OUT),
                   help=f"the search folder: trials/, the study's journal, best.yaml, the report "
                   f"(default {TUNE_OUT})")
    p.add_argument("--trials", type=int, default=10, metavar="N",
                   help="trials this worker runs to the end or prunes (default 10; 0: only write "
                   "the summary of the study)")
    p.add_argument("--storage", metavar="URL",
                   help="the study's storage shared by workers: an RDB URL (postgresql://..., "
                   "mysql://..., sqlite:///file.db) or an Optuna journal file on a shared filesystem "
                   "(default: OUT/study.journal)")
    p.add_argument("--study", default="stagewise", metavar="NAME",
                   help="the study's name in the storage; workers with the same storage and name "
                   "share it (default: stagewise)")
    p.add_argument("--sampler", choices=choices_of(TuneSampler), default="auto",
                   help="auto: every parameter set once in random order when the space is finite, "
                   "else TPE; tpe, random, brute (finite spaces)")
    p.add_argument("--sampler-seed", type=int, default=None, metavar="N",
                   help="seed of the sampler (default: none; workers sharing a study should not share one)")
    p.add_argument("--pruner", choices=choices_of(TunePruner), default="median",
                   help="stop trials behind the others after an epoch: median (default), hyperband, none")
    p.add_argument("--prune-after", type=int, default=1, metavar="EPOCHS",
                   help="epochs every trial trains before it may be pruned (default 1)")
    add_output_flags(p)
    p.set_defaults(handler=_cmd_tune)


def _target(args: argparse.Namespace) -> Any:
    """The base config and its space: a pipeline file takes --set as `stagewise run` does, a stage
    config takes the `train` flags and --set as `stagewise train` does."""
    from ..config.search_space import parse_space
    from ..runs.tune_target import tune_target

    source = str(args.config) if args.config else "command line"
    raw = load_yaml(args.config) if args.config else {}
    if isinstance(raw.get("stages"), list):
        given = [f"--{f}" for f in TRAIN_FLAGS if f != "out" and getattr(args, f.replace("-", "_"), None) is not None]
        if given:
            raise ConfigError(f"{source} is a pipeline: {', '.join(given)} would not say which stage; "
                              "use --set defaults.KEY=VALUE (every stage) or --set stages.NAME.KEY=VALUE")
        space = parse_space(raw.pop("tune", None), source)
        return tune_target(raw, space, source, list(args.set))
    data = settings(args, skip={"out"})
    space = parse_space(data.pop("tune", None), source)
    if "data" not in data:
        raise ConfigError("tune needs --data DIR (or 'data:' in --config)")
    return tune_target(data, space, source, [])


def _cmd_tune(args: argparse.Namespace) -> int:
    from ..runfolder import TUNE_BEST
    from ..runs.tune import tune

    if args.trials < 0 or args.prune_after < 0:
        raise ConfigError("--trials and --prune-after take a number >= 0")
    result = tune(_target(args), args.out, trials=args.trials, storage=args.storage, study=args.study,
                  sampler=args.sampler, pruner=args.pruner, prune_after=args.prune_after,
                  seed=args.sampler_seed, reporter=reporter_kind(args))
    best = result.best
    shown = (f"best trial {best['number']}: {best['value']:.4f} ({best['params']}); config "
             f"{result.out / TUNE_BEST}" if best else "no complete trial yet")
    print_done(args, {"out": str(result.out), "study": result.study, "finished": result.finished,
                      "stopped": result.stopped, "best": best,
                      "report": str(result.summary) if result.summary else None},
               f"tune: {result.finished} trial(s) here ({result.stopped}); {shown}"
               + (f"; report {result.summary}" if result.summary else ""))
    return 0
