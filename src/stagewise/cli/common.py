"""What several commands share: the training flags, output flags, and the end-of-run summary.

Commands import the library inside their handlers: `stagewise --help` should not pay for torch.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Literal

from ..config.choices import (
    OWN_OPTIMIZERS,
    Augmentation,
    LogWith,
    Precision,
    SchedulerName,
    Strategy,
    choices_of,
)
from ..config.overrides import apply_overrides
from ..config.yaml_loader import load_yaml
from ..errors import StagewiseError


def _names(literal: object) -> str:
    """'a | b | c': a key's valid names, from the type the schema validates against."""
    return " | ".join(choices_of(literal))


# CLI flag -> config key, for the flags of `train` that map one to one.
TRAIN_FLAGS: dict[str, tuple[str, type, str]] = {
    "data": ("data", str, "image folder (train/ and val/, or class folders)"),
    "model": ("model", str, "timm (or torchvision) model name, e.g. resnet18"),
    "weights": ("weights", str, "starting weights: auto (default: the model's pretrained ones when "
                "found, else random init), a .safetensors/.pth file, 'hub', hf-hub:ID or none"),
    "strategy": ("strategy", str, _names(Strategy)),
    "epochs": ("epochs", int, "epochs to train"),
    "lr": ("lr", float, "base learning rate"),
    "batch-size": ("batch_size", int, "images per batch"),
    "image-size": ("image_size", int, "input size in pixels (default: the model's)"),
    "optimizer": ("optimizer", str, f"{' | '.join(OWN_OPTIMIZERS)}, or a timm optimizer "
                  "(lamb, lion, adan, lars, ...: timm.optim.list_optimizers())"),
    "scheduler": ("scheduler", str, _names(SchedulerName)),
    "precision": ("precision", str, _names(Precision)),
    "augmentation": ("augmentation", str, _names(Augmentation)),
    "num-workers": ("num_workers", int, "data loader workers"),
    "seed": ("seed", int, "random seed"),
    "train-subset": ("train_subset", str, "train on a seeded, stratified subset: N images or K/class"),
    "val-subset": ("val_subset", str, "validate on a subset, as --train-subset"),
    "out": ("out", str, "run folder to write"),
    "log-with": ("log_with", str, _names(LogWith)),
    "teacher": ("teacher", str, "distil from this run folder or model file (--set distill.alpha=0.7 "
                "--set distill.temperature=4 tune it)"),
}

# Spellings other tools' tutorials use, accepted so their commands run as written (same dest, so
# the canonical flag's parsing and precedence apply unchanged).
FLAG_ALIASES: dict[str, str] = {"data": "data-dir", "out": "output-dir", "lr": "learning-rate"}


def add_output_flags(p: argparse.ArgumentParser) -> None:
    """--quiet and --log-format, shared by every command that trains."""
    p.add_argument("--quiet", action="store_true", help="print only warnings and errors")
    p.add_argument("--log-format", choices=["rich", "json"], default="rich",
                   help="rich progress for people, JSON lines for scripts")


def add_resume_flag(p: argparse.ArgumentParser) -> None:
    """--resume (continue the run in --out) and --resume auto (continue it if there is one, else
    start it: what a requeued cluster job passes every time)."""
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="auto",
                   help="continue the run in --out; `--resume auto`: continue it if --out holds "
                   "one, else start it (for requeued jobs; a finished run exits 0)")


def resume_mode(args: argparse.Namespace) -> bool | Literal["auto"]:
    """True, False or "auto" from --resume; any other value is refused."""
    value = args.resume
    if value == "auto":
        return "auto"
    if isinstance(value, bool):
        return value
    raise StagewiseError(f"--resume takes no value, or 'auto' (got {value!r})")


def reporter_kind(args: argparse.Namespace) -> str:
    """The progress style `make_reporter` takes, from --quiet and --log-format."""
    return "quiet" if args.quiet else args.log_format


def add_settings_flags(p: argparse.ArgumentParser, skip: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """The `train` flags (minus `skip`), --config and --set: any config key, three ways."""
    for flag, (key, typ, text) in TRAIN_FLAGS.items():
        if key not in skip:
            alias = [f"--{FLAG_ALIASES[flag]}"] if flag in FLAG_ALIASES else []
            p.add_argument(f"--{flag}", *alias, type=typ, default=None, help=text)
    if "strategy" not in skip:
        p.add_argument("--freeze-backbone", dest="strategy", action="store_const", const="probe",
                       help="same as --strategy probe: train only the head")
    p.add_argument("--config", type=Path, help="YAML file with any config keys")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set layer_decay=0.7 (repeatable)")


def settings(args: argparse.Namespace, skip: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    """Config keys from --config, then the flags, then --set (later ones win)."""
    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    for flag, (key, _t, _h) in TRAIN_FLAGS.items():
        value = getattr(args, flag.replace("-", "_"), None)
        if key not in skip and value is not None:
            data[key] = value
    return apply_overrides(data, args.set)


def require(data: dict[str, Any], key: str, command: str, flag: str) -> None:
    if key not in data:
        raise StagewiseError(f"{command} needs {flag} (or '{key}:' in --config)")


def print_done(args: argparse.Namespace, payload: dict[str, Any], line: str) -> bool:
    """The end of a command for scripts (one JSON object) or people (`line`); nothing if --quiet.
    Returns whether a person is reading (so a caller may add a table)."""
    # Under torchrun every rank runs the command: rank 0 alone says it is done.
    if args.quiet or int(os.environ.get("RANK", "0")) != 0:
        return False
    if args.log_format == "json":
        print(json.dumps({"event": "done", **payload}, default=str))
        return False
    print(line)
    return True


def pct(v: float | None) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "-"


def signed(v: float | None) -> str:
    return f"{100 * v:+.1f}" if isinstance(v, (int, float)) else "-"
