"""Optimizer and LR schedule factories: param groups from timm's layer grouping, torch underneath.

Param groups are built here rather than with `timm.optim.param_groups_layer_decay` because
gradual unfreezing, explicit per-pattern LRs and the per-group LR history all need to know which
layer each group belongs to, which timm's helper does not expose. Every parameter is in the
optimizer from the start: a frozen one has no gradient and torch's optimizers skip it, so
unfreezing never changes the optimizer's structure and a resumed run loads its state as saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as S

from ..config.schema import TrainConfig, optimizer_names
from ..errors import ConfigError
from ..metrics import lower_is_better
from .strategies import fine_layer_ids


def lr_factor(cfg: TrainConfig, processes: int) -> float:
    """What `lr_scale` multiplies the configured LRs by for a global batch of `processes` x
    batch_size x grad_accum images against `lr_reference_batch` (1.0 with `lr_scale: none`)."""
    ratio = processes * cfg.batch_size * cfg.grad_accum / cfg.lr_reference_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[cfg.lr_scale]


def scaled(cfg: TrainConfig, processes: int) -> TrainConfig:
    """`cfg` with lr and group_lrs multiplied by `lr_factor` (min_lr stays: it is a floor)."""
    factor = lr_factor(cfg, processes)
    if factor == 1.0:
        return cfg
    return cfg.model_copy(update={"lr": cfg.lr * factor,
                                  "group_lrs": {k: v * factor for k, v in cfg.group_lrs.items()}})


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Groups keyed by (layer, decay?, explicit LR), each with its `lr` and a readable `name`."""
    layer_of = fine_layer_ids(model)
    top = max(layer_of.values(), default=0)
    skip_wd = set(getattr(model, "no_weight_decay", lambda: set())())
    groups: dict[tuple, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        layer = layer_of.get(name, top)
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip_wd
        scale = cfg.layer_decay ** (top - layer) if cfg.layer_decay else 1.0
        explicit = next((lr for pat, lr in cfg.group_lrs.items() if fnmatch(name, pat)), None)
        lr = explicit if explicit is not None else cfg.lr * scale
        key = (layer, no_decay, explicit)
        if key not in groups:
            groups[key] = {
                "params": [], "param_names": [], "lr": lr, "layer": layer,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "name": f"layer{layer}{'' if explicit is None else '-explicit'}{'-no_wd' if no_decay else ''}",
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1], k[2] or 0.0))]


def create_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    name = cfg.optimizer
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, alpha=0.9, eps=1e-3)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError(
                "optimizer 'adamw8bit' needs bitsandbytes: pip install 'stagewise[bnb]' "
                "(or choose adamw)"
            ) from None
        return bnb.optim.AdamW8bit(groups, lr=cfg.lr)
    return _timm_optimizer(groups, cfg)


def _timm_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The long tail (lamb, lion, adan, lars...) from timm's registry, given our own param groups:
    each group's lr and weight_decay (0 for norms/biases) win over the defaults passed here, so
    no-decay rules, per-group LRs and layer decay hold for every optimizer."""
    from timm.optim import create_optimizer_v2, list_optimizers

    if cfg.optimizer not in list_optimizers():
        raise ConfigError(f"unknown optimizer '{cfg.optimizer}'; choose one of {', '.join(optimizer_names())}")
    try:
        return create_optimizer_v2(groups, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum)
    except ImportError as exc:  # e.g. optimizers that need an optional package
        raise ConfigError(f"optimizer '{cfg.optimizer}' needs a package that is not installed ({exc})") from None


class Schedule:
    """An LR schedule stepped once per optimizer step, with optional linear warmup.

    `plateau` is the exception: it reacts to the monitored metric once per epoch (after warmup).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.cfg = cfg
        self.optimizer = optimizer
        spe = max(1, steps_per_epoch)
        total = max(1, cfg.epochs * spe)
        warm = min(total - 1, int(round(cfg.warmup_epochs * spe))) if cfg.warmup_epochs else 0
        # The cooldown tail comes off the main schedule's length, as in timm: the schedule still
        # ends at `epochs`, and decays to min_lr before the tail starts.
        cool = min(total - warm - 1, int(round(cfg.cooldown_epochs * spe))) if cfg.cooldown_epochs else 0
        self.plateau: S.ReduceLROnPlateau | None = None
        main = self._main(optimizer, cfg, spe, total - cool, warm)
        if cfg.scheduler == "one_cycle":
            self.sched = main
            return
        parts, milestones = [main], []
        if warm > 0:
            parts.insert(0, S.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warm))
            milestones.append(warm)
        if cool > 0:
            parts.append(self._cooldown(optimizer, cfg.min_lr))
            milestones.append(total - cool)
        self.sched = S.SequentialLR(optimizer, parts, milestones=milestones) if milestones else main

    @staticmethod
    def _cooldown(opt: torch.optim.Optimizer, min_lr: float) -> S.LambdaLR:
        """Constant min_lr for every group: LambdaLR scales each group's initial LR to it."""
        factors = [min_lr / g["initial_lr"] for g in opt.param_groups]
        return S.LambdaLR(opt, [_constant(f) for f in factors])

    def _main(self, opt, cfg: TrainConfig, spe: int, total: int, warm: int):
        rest = max(1, total - warm)
        name = cfg.scheduler
        if name == "constant":
            return S.LambdaLR(opt, lambda _: 1.0)
        if name == "cosine" and cfg.restarts:
            # N restarts: N+1 equal cycles, each annealing from the group's LR to min_lr.
            return S.CosineAnnealingWarmRestarts(opt, T_0=max(1, rest // (cfg.restarts + 1)),
                                                 eta_min=cfg.min_lr)
        if name == "cosine":
            return S.CosineAnnealingLR(opt, T_max=rest, eta_min=cfg.min_lr)
        if name == "polynomial":
            return S.PolynomialLR(opt, total_iters=rest, power=cfg.power)
        if name == "exponential":
            return S.ExponentialLR(opt, gamma=cfg.gamma ** (1.0 / spe))
        if name == "step":
            return S.StepLR(opt, step_size=max(1, int(round(cfg.step_epochs * spe))), gamma=cfg.gamma)
        if name == "multistep":
            ms = sorted(max(1, int(round(m * spe)) - warm) for m in cfg.milestones)
            return S.MultiStepLR(opt, milestones=ms, gamma=cfg.gamma)
        if name == "one_cycle":
            pct = cfg.one_cycle_pct_start or (
                cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs and cfg.epochs else 0.25)
            return S.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total + 1,
                                pct_start=min(0.9, max(1e-3, pct)), cycle_momentum=False)
        # plateau, the one name left: `scheduler` is a SchedulerName, checked when the config loads.
        self.plateau = S.ReduceLROnPlateau(opt, mode="min" if lower_is_better(cfg.monitor) else "max",
                                           factor=cfg.gamma, patience=cfg.plateau_patience)
        # Per-step scheduler that keeps the group's current LR (chainable): LambdaLR would
        # reset it to the base LR on the next step and undo every plateau reduction.
        return S.ConstantLR(opt, factor=1.0, total_iters=0)

    def step(self) -> None:
        self.sched.step()

    def epoch_end(self, metric: float | None) -> None:
        if self.plateau is not None and metric is not None and math.isfinite(metric):
            self.plateau.step(metric)

    def state_dict(self) -> dict[str, Any]:
        return {"sched": self.sched.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sched.load_state_dict(state["sched"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


def _constant(factor: float) -> Callable[[int], float]:
    return lambda _step: factor


def group_lrs(optimizer: torch.optim.Optimizer, groups: list[list[str]] | None = None) -> dict[str, float]:
    """LR per layer group (decay and no-decay halves of a layer share one LR).

    With `groups` (the strategy's coarse groups, whose count the epoch record's groups_total
    is), one entry per such group, `layer{k}`: the highest LR among its parameters (layer_decay
    gives the finer layers inside a group slightly different ones)."""
    out: dict[str, float] = {}
    for i, g in enumerate(optimizer.param_groups):
        out.setdefault(g.get("name", str(i)).removesuffix("-no_wd"), float(g["lr"]))
    if not groups:
        return out
    lr_of = {n: float(g["lr"]) for g in optimizer.param_groups for n in g.get("param_names", ())}
    coarse = {f"layer{k}": max(lr_of[n] for n in names if n in lr_of)
              for k, names in enumerate(groups) if any(n in lr_of for n in names)}
    return coarse or out  # parameters named otherwise (a head trained on cached features)
