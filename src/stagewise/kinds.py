"""The kinds of stage, each a small typed object chosen by name in one registry: tasks (what the
head computes, how a stage is scored) and strategies (what trains in each epoch, whether some
parameters can go unused under DDP, the default recipe).

No module branches on a strategy's or a task's name: it asks the object (`strategy(name)`,
`task(name)`). Adding a strategy is one class and one registry entry here (plus its tests);
`StrategyName`/`TaskName` list the names for the config schema, and tests/test_kinds.py checks
they match the registries. Pure Python: the CLI and config validation import it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from .metrics import monitors

StrategyName = Literal["scratch", "probe", "finetune", "gradual"]
TaskName = Literal["classify", "embed"]
# Where a stage's starting weights come from: nowhere (random init), a foreign pretrained file or
# hub (transfer), or an earlier stage of the same pipeline (handoff).
WeightSource = Literal["none", "transfer", "handoff"]


@dataclass(frozen=True)
class Unfreezing:
    """The config keys that say when layer groups start training."""

    freeze_epochs: int = 0  # epochs that train the head alone first (finetune)
    every: int = 1  # gradual: one more group every `every` epochs
    at: tuple[int, ...] | None = None  # gradual: or at these (1-based) epochs


@dataclass(frozen=True)
class Strategy:
    """What trains when. Subclasses override `trainable_groups` (and `may_leave_unused`)."""

    name: str
    summary: str  # what trains, in a few words (help texts, docs)
    # Defaults of this strategy, filled in for each key a config leaves out, so config.yaml holds
    # the value the stage used. Measured: docs/benchmarks.md "Recipes on real photo sets"; why each:
    # docs/decisions.md.
    defaults: Mapping[str, Any]
    uses_weights: bool = True  # starts from weights: from random init it is a mistake worth a warning
    head_only: bool = False  # the backbone never trains: its features can be computed once

    def trainable_groups(self, epoch: int, n_groups: int, plan: Unfreezing) -> int:
        """How many coarse layer groups, counted from the head, train in 0-based `epoch`."""
        return n_groups

    def may_leave_unused(self, plan: Unfreezing) -> bool:
        """Whether some epoch trains only part of the network: DDP must then be told that
        parameters may get no gradient (`find_unused_parameters`)."""
        return False


class _Probe(Strategy):
    def trainable_groups(self, epoch: int, n_groups: int, plan: Unfreezing) -> int:
        return 1

    def may_leave_unused(self, plan: Unfreezing) -> bool:
        return True


class _Finetune(Strategy):
    def trainable_groups(self, epoch: int, n_groups: int, plan: Unfreezing) -> int:
        return 1 if epoch < plan.freeze_epochs else n_groups

    def may_leave_unused(self, plan: Unfreezing) -> bool:
        return plan.freeze_epochs > 0


class _Gradual(Strategy):
    def trainable_groups(self, epoch: int, n_groups: int, plan: Unfreezing) -> int:
        # `at` counts epochs as history.jsonl does (1-based): at=[3] trains epoch 3 with one more
        # group, as every=2 does.
        steps = sum(1 for e in plan.at if e <= epoch + 1) if plan.at is not None else epoch // plan.every
        return min(n_groups, 1 + steps)

    def may_leave_unused(self, plan: Unfreezing) -> bool:
        return True


def _recipe(**values: Any) -> Mapping[str, Any]:
    return MappingProxyType(values)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("scratch", "everything, from random init", uses_weights=False,
             defaults=_recipe(lr=1e-3, augmentation="standard", freeze_epochs=0, layer_decay=None)),
    # One layer on frozen features: a higher LR, and no augmentation, so `cache: auto` computes
    # the features once (exact).
    _Probe("probe", "the classifier only; the backbone frozen, its BatchNorm in eval mode",
           head_only=True,
           defaults=_recipe(lr=3e-3, augmentation="none", freeze_epochs=0, layer_decay=None)),
    # fastai's fine_tune: the head alone for an epoch at the probe's LR, then everything, each
    # layer below the head at 0.8x the LR of the one above; light crops for small sets.
    _Finetune("finetune", "everything (the head alone for freeze_epochs first)",
              defaults=_recipe(lr=3e-3, augmentation="light", freeze_epochs=1, layer_decay=0.8)),
    _Gradual("gradual", "the head first, then one more layer group every unfreeze_every epochs",
             defaults=_recipe(lr=1e-3, augmentation="standard", freeze_epochs=0, layer_decay=None)),
)}


@dataclass(frozen=True)
class Task:
    """What a stage's head computes and how the stage is scored."""

    name: str
    head: Literal["classifier", "embedding"]
    score: str  # the metric a pipeline summary and compare rank this task's stages by
    default_monitor: str  # `monitor` when the config names none
    label: str  # how the score is named in summaries
    # Epoch 0 (the starting weights) is always measured, not only when a matched head kept rows:
    # an embed stage's point is its gain over the pretrained features.
    measures_start: bool = False

    @property
    def embeds(self) -> bool:
        """The head maps images to vectors (identities, retrieval), not to class scores."""
        return self.head == "embedding"

    @property
    def monitors(self) -> tuple[str, ...]:
        """The metrics a stage of this task measures and may monitor."""
        return monitors(self.name)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("classify", "classifier", score="val_top1", default_monitor="val_top1", label="top1"),
    # mAP ranks every true match, recall@1 only the first: the better default for retrieval.
    Task("embed", "embedding", score="val_map", default_monitor="val_map", label="mAP",
         measures_start=True),
)}


# ---- recipes by context ----

# A handoff's weights already suit this kind of data and its head keeps the rows of the classes
# the stages share: fastai's head-only warm-up and the layer decay that protects foreign
# features from a fresh head both cost here. Measured on the demo (docs/benchmarks.md): with them
# the textures stage ends at 43.8% best val top-1, without them 66.7% (scratch baseline 26.2%).
_HANDOFF = MappingProxyType({"freeze_epochs": 0, "layer_decay": None})

# Weight decay by optimizer family: decoupled (AdamW-like) decay is a fraction of the weights per
# step and wants ~0.05; SGD's L2 term is added to the gradient and wants 1e-4..5e-4 (torchvision's
# and timm's ImageNet recipes use 1e-4 and 5e-5..1e-4). Any other name keeps the field default.
_SGD_LIKE = ("sgd", "nesterov", "momentum", "sgdp", "lars", "larc", "nlars", "nlarc", "rmsprop")
_WEIGHT_DECAY = {**dict.fromkeys(_SGD_LIKE, 1e-4), "adam": 0.0, "adamw": 0.05, "adamw8bit": 0.05}


def default_strategy(source: WeightSource) -> str:
    """The strategy a stage gets when it names none: from random init only scratch makes sense."""
    return "scratch" if source == "none" else "finetune"


def recipe(strategy_name: str, source: WeightSource, optimizer: str | None) -> dict[str, Any]:
    """The defaults of a stage that names `strategy_name`, starting from `source`'s weights, with
    `optimizer`: the strategy's own (measured for transfer), adjusted for a handoff, plus the
    optimizer's weight decay. The config fills each key it is not given (config/schema.py)."""
    found = STRATEGIES.get(strategy_name)
    values = dict(found.defaults) if found is not None else {}
    if source == "handoff" and found is not None and found.uses_weights:
        values.update(_HANDOFF)
    if optimizer is not None and optimizer.lower() in _WEIGHT_DECAY:
        values["weight_decay"] = _WEIGHT_DECAY[optimizer.lower()]
    return values


def embeds(name: object) -> bool:
    """Whether the task a file names (config.yaml, model.json, a compare row) embeds; a missing
    or unknown name is a classifier's, as files written before tasks existed are."""
    return isinstance(name, str) and name in TASKS and TASKS[name].embeds


def strategy(name: str) -> Strategy:
    """The strategy called `name`; a ValueError listing the valid names otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None


def task(name: str) -> Task:
    """The task called `name`; a ValueError listing the valid names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None
