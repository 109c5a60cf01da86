"""`stagewise run ... --dry-run`: what every stage of a pipeline would run with, before hours
are spent: the resolved config of each stage (its recipe filled in), where its weights come
from, the LR after batch scaling, the global batch, estimated steps, and the problems it would
hit (a missing folder is listed here, not fatal).

Nothing is trained, written or locked; the data folders are only counted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.images import is_image_file
from .plan import PipelinePlan, StagePlan, load_pipeline

# Counting stops here: an estimate of steps needs the order of magnitude, not every file of a
# 1.28M-image tree on a network file system.
MAX_COUNTED = 200_000
_TRAIN_DIRS = ("train", "ILSVRC/Data/CLS-LOC/train")


def dry_run(pipeline: str | Path | dict[str, Any], overrides: Sequence[str] = (),
            out: Path | None = None, stages: Sequence[str] | None = None,
            processes: int | None = None) -> list[dict[str, Any]]:
    """One dict per stage: the keys of that stage's config.yaml, plus `name`, `weights_from`,
    `lr_used`, `global_batch`, `train_images` (estimated), `steps` (estimated optimizer steps)
    and `problems` (what would stop it)."""
    plan = load_pipeline(pipeline, list(overrides), out, check_data=False)
    world = processes or int(os.environ.get("WORLD_SIZE", "1"))
    chosen = [s for s in plan.stages if not stages or s.name in stages]
    return [_describe(plan, s, world, stages) for s in chosen]


def _describe(plan: PipelinePlan, stage: StagePlan, world: int, stages: Sequence[str] | None) -> dict[str, Any]:
    from ..training.optim import lr_factor

    cfg = stage.config
    row: dict[str, Any] = {"name": stage.name, **cfg.resolved()}
    parent = stage.parent(plan.order)
    row["weights_from"] = (f"stage '{parent}'" if parent else
                           str(cfg.weights) if cfg.weights else "random init")
    row["lr_used"] = cfg.lr * lr_factor(cfg, world)
    row["global_batch"] = world * cfg.batch_size * cfg.grad_accum
    images, exact = _train_images(Path(cfg.data), cfg.val_fraction)
    row["train_images"] = images
    per_epoch = math.ceil(images / row["global_batch"]) if images else None
    row["steps"] = per_epoch * cfg.epochs if per_epoch is not None else None
    row["steps_exact"] = exact
    row["problems"] = _problems(plan, stage, stages)
    return row


def _train_images(root: Path, val_fraction: float) -> tuple[int | None, bool]:
    """Training images under `root` (its train/ folder, or its share of a folder of class
    folders), and whether that is a full count; None when there is no folder."""
    if not root.is_dir():
        return None, False
    train = next((root / d for d in _TRAIN_DIRS if (root / d).is_dir()), None)
    count = 0
    for _dirpath, _dirs, files in os.walk(train or root):
        count += sum(1 for f in files if is_image_file(Path(f)))
        if count >= MAX_COUNTED:
            break
    share = count if train is not None else round(count * (1 - val_fraction))
    return share, count < MAX_COUNTED and train is not None


def _problems(plan: PipelinePlan, stage: StagePlan, stages: Sequence[str] | None) -> list[str]:
    cfg, found = stage.config, []
    if not Path(cfg.data).is_dir():
        found.append(f"data: folder not found: {cfg.data}")
    if cfg.weights and str(cfg.weights) != "hub" and ":" not in str(cfg.weights) \
            and not Path(str(cfg.weights)).exists():
        found.append(f"weights: file not found: {cfg.weights}")
    parent = stage.parent(plan.order)
    if stages and parent is not None and parent not in stages:
        found.append(f"starts from stage '{parent}', which --stages skips (it must have run before)")
    return found
