"""What is trainable when: scratch, probe, finetune, gradual unfreezing, explicit freezing, BN.

A frozen part must be frozen twice over: its parameters get no gradient, and its BatchNorm layers
stay in eval mode so their running statistics do not drift while the head trains (unless
`train_bn` asks for fastai's behaviour, where BatchNorm keeps training everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..kinds import Unfreezing
from ..kinds import strategy as strategy_of
from ..models.groups import fallback_groups, group_matcher
from ..models.head import head_param_names


def coarse_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names in coarse layer groups (timm's, or ours for torchvision), stem first, head last.

    The head is every head parameter, an MLP head's hidden layers included.
    """
    from timm.models import group_parameters

    head = head_param_names(model)
    matcher = group_matcher(model, coarse=True)
    if matcher is not None:
        grouped = group_parameters(model, matcher)
        groups = [list(v) for _, v in sorted(grouped.items())]
    else:  # a module of no known family (models/groups.py says how it is split)
        groups = fallback_groups(model, set(head))
    skip = set(head)
    groups = [[n for n in g if n not in skip] for g in groups]
    groups = [g for g in groups if g]
    groups.append(head)
    return groups


def fine_layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer index (fine grouping) for layer-wise LR decay; the head on top."""
    from timm.models import group_parameters

    matcher = group_matcher(model, coarse=False)
    if matcher is None:
        return {n: i for i, g in enumerate(coarse_groups(model)) for n in g}
    grouped = group_parameters(model, matcher)
    ids = {n: layer for layer, names in grouped.items() for n in names}
    head = set(head_param_names(model))
    # timm often puts the classifier in a last group of its own already; counting from the other
    # layers keeps the ids gap-free, so the layer under the head gets exactly lr * layer_decay.
    top = max((v for n, v in ids.items() if n not in head), default=-1) + 1
    for n in head:
        ids[n] = top
    return ids


@dataclass
class Trainable:
    """The outcome of applying a strategy at one epoch."""

    groups_unfrozen: int
    groups_total: int
    trainable_params: int
    total_params: int


def apply_strategy(
    model: nn.Module,
    strategy: str,
    epoch: int,
    freeze: list[str] | tuple[str, ...] = (),
    train_bn: bool = False,
    unfreeze_every: int = 1,
    unfreeze_at: list[int] | None = None,
    freeze_epochs: int = 0,
) -> Trainable:
    """Set `requires_grad` on every parameter for `epoch`; call `set_train_mode` after `.train()`."""
    groups = coarse_groups(model)
    plan = Unfreezing(freeze_epochs, unfreeze_every, tuple(unfreeze_at) if unfreeze_at is not None else None)
    k = strategy_of(strategy).trainable_groups(epoch, len(groups), plan)
    trainable = {n for g in groups[len(groups) - k :] for n in g}
    bn_params = _bn_param_names(model) if train_bn else set()
    for name, p in model.named_parameters():
        on = name in trainable or name in bn_params
        if any(fnmatch(name, pat) for pat in freeze):
            on = False
        p.requires_grad_(on)
    total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Trainable(groups_unfrozen=k, groups_total=len(groups), trainable_params=n_train,
                     total_params=total)


def set_train_mode(model: nn.Module, train_bn: bool = False, freeze_bn_stats: bool = False) -> None:
    """`model.train()`, then BatchNorm layers whose parameters are all frozen go back to eval.

    `freeze_bn_stats` puts every BatchNorm in eval mode, trainable or not: its weights still
    learn, but its running statistics stay those of the pretrained data. Fine-tuning on a few
    hundred heavily augmented images otherwise drags the statistics away from what the
    validation images look like.
    """
    model.train()
    if train_bn and not freeze_bn_stats:
        return
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            params = list(module.parameters(recurse=False))
            if freeze_bn_stats or (params and not any(p.requires_grad for p in params)):
                module.eval()


def _bn_param_names(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            for p_name, _ in module.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names
