"""Typed configuration: one stage of training (`TrainConfig`), validated once at the edge.

Every default lives here. The command line, YAML files and the Python API all build the same
model, so a key has one name and one meaning everywhere.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from . import defaults
from .errors import ConfigError, clip, shown

Strategy = Literal["scratch", "probe", "finetune", "gradual"]
# The hand-written optimizers (training/optim.py); any other name of timm's optimizer registry
# (timm.optim.list_optimizers(): lamb, lion, adan, lars, sgdp, adabelief, adafactor...) is built
# by timm from the same param groups.
OWN_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adamw8bit")
# Registry names that stagewise's training step cannot drive: adahessian needs a second-order
# backward; fused*/bnb* need apex/bitsandbytes CUDA kernels (adamw8bit covers the common case).
_UNSUPPORTED_OPTIMIZERS = ("adahessian",)
_UNSUPPORTED_PREFIXES = ("fused", "bnb")
SchedulerName = Literal[
    "constant", "one_cycle", "cosine", "polynomial", "exponential", "step", "multistep", "plateau"
]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Augmentation = Literal["none", "light", "standard", "strong"]
HeadMode = Literal["match", "reset", "keep"]
DataFormat = Literal[
    "auto", "folder", "imagenette", "imagewoof", "tiny-imagenet", "imagenet", "csv", "cifar"
]
Monitor = Literal["val_top1", "val_top5", "val_loss", "val_recall1", "val_recall5", "val_map", "val_map_at_r"]
Task = Literal["classify", "embed"]
# What each task's validation measures: a monitor from the other task's list is refused.
TASK_MONITORS = {"classify": ("val_top1", "val_top5", "val_loss"),
                 "embed": ("val_map", "val_map_at_r", "val_recall1", "val_recall5")}
MetricLoss = Literal["arcface", "subcenter_arcface", "cosface", "triplet", "supcon", "contrastive",
                     "multi_similarity"]
Miner = Literal["auto", "none", "multi_similarity", "triplet_margin", "batch_hard", "pair_margin",
                "batch_easy_hard"]
LossArg = float | int | bool | Annotated[str, Field(max_length=100)]


MAX_CONFIG_BYTES = 2**20
MAX_DEPTH = 20  # nesting levels in a config file; a pipeline needs 4
MAX_LISTED = 50  # problems listed in one error message
MAX_PER_KEY = 3  # of those, about one key (e.g. the items of one list)
# Errors whose message lists every valid choice (transform names, optimizer names): not clipped
# like other messages, which may echo a long input. Their user-given part is clipped where raised.
CHOICE_ERROR = "unknown_choice"
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}

# Upper bounds catch typos and hostile files (`lr: 1e30`, `image_size: 100000`) before a run
# allocates anything; each is far beyond any real use. Why each bound: docs/decisions.md.
MAX_EPOCHS = 10_000
MAX_LR = 10.0
LearningRate = Annotated[float, Field(gt=0.0, le=MAX_LR)]
EpochNumber = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]
EpochPoint = Annotated[float, Field(ge=0.0, le=MAX_EPOCHS)]
ClassWeight = Annotated[float, Field(ge=0.0, le=1000.0)]
Mean = Annotated[float, Field(ge=0.0, le=1.0)]
Std = Annotated[float, Field(gt=0.0, le=1.0)]

# Said after the valid range, where the bound is not self-explanatory.
_WHY = {
    "image_size": "memory grows with the square of the size; 2048 px already needs ~80x the "
                  "activations of 224 px per image",
    "batch_size": "larger batches do not fit in memory; use grad_accum for a larger effective batch",
    "num_workers": "each worker is a process holding its own copy of the dataset",
    "mean": "normalisation is on the 0..1 pixel scale (e.g. 0.485), not 0..255",
    "std": "normalisation is on the 0..1 pixel scale (e.g. 0.229), not 0..255",
    "seed": "numpy seeds are 32-bit",
    "gamma": "the learning rate is multiplied by gamma; 1 or more would never decay it",
}


# Defaults that depend on the strategy, filled in before validation for each key the config does
# not give, so config.yaml holds the value the stage used (the field defaults below are only the
# fallback of an invalid strategy). Measured on three small photo sets against a plain timm
# script: docs/benchmarks.md "Recipes on real photo sets"; why each: docs/decisions.md.
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    # One layer on frozen features: a higher LR, and no augmentation, so `cache: auto` computes
    # the features once (exact).
    "probe": {"lr": 3e-3, "augmentation": "none", "freeze_epochs": 0, "layer_decay": None},
    # fastai's fine_tune: the head alone for an epoch at the probe's LR, then everything, each
    # layer below the head at 0.8x the LR of the one above; light crops for small sets.
    "finetune": {"lr": 3e-3, "augmentation": "light", "freeze_epochs": 1, "layer_decay": 0.8},
    "gradual": {"lr": 1e-3, "augmentation": "standard", "freeze_epochs": 0, "layer_decay": None},
    "scratch": {"lr": 1e-3, "augmentation": "standard", "freeze_epochs": 0, "layer_decay": None},
}
# A probe's "none" would refuse these (they add to a preset): given any, the preset stays standard.
_AUGMENTATION_ADDITIONS = ("augment", "auto_augment", "re_prob")


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf`/`.nan` are valid YAML floats and would pass every gt/le bound.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ProgressiveResize(_Strict):
    """`progressive_resize: {start: 0.5, finish: 0.75}`."""

    start: float = Field(0.5, gt=0.0, le=1.0, description="fraction of image_size at the first epoch")
    finish: float = Field(0.75, ge=0.0, le=1.0, description="fraction of the epochs by which the "
                          "full size is reached")


class Distill(_Strict):
    """`distill: {alpha: 0.5, temperature: 4.0}`: learn from `teacher:`'s soft targets (Hinton et al.)."""

    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the soft (teacher) loss; "
                         "1 - alpha weighs the usual loss on the labels")
    temperature: float = Field(4.0, gt=0.0, le=100.0, description="softens both distributions; "
                               "the soft loss is scaled by its square")
    cache: bool = Field(True, description="without augmentation, compute the teacher's logits "
                        "once per training image and reuse them every epoch (exact)")


class TrainConfig(_Strict):
    """Everything one training stage needs. Unknown keys are errors, never ignored."""

    # data
    data: Path = Field(description="image folder: train/ and val/ (optional test/), or class folders")
    format: DataFormat = "auto"
    val_fraction: float = Field(defaults.VAL_FRACTION, gt=0.0, lt=1.0, description="used when there is no val/ split")
    split: list[float] | None = Field(
        None, description="[train, val] or [train, val, test] fractions of a folder of class "
        "folders (no train/val/test folders), held out per class; replaces val_fraction")
    augmentation: Augmentation = Field("standard", description="default by strategy "
                                       "(STRATEGY_DEFAULTS): none (probe), light (finetune), standard")
    augment: list[str | dict[str, dict[str, Any] | None]] = Field(
        default_factory=list, max_length=64,
        description="torchvision v2 transforms by name with arguments, e.g. [{RandomResizedCrop: "
        "{scale: [0.5, 1.0]}}, RandomHorizontalFlip]; replaces the augmentation preset")
    auto_augment: str | None = Field(None, max_length=200, description="timm's auto-augment policy on "
                                     "top of the preset, e.g. rand-m9-mstd0.5 (timm recipes)")
    re_prob: float | None = Field(None, ge=0.0, le=1.0, description="timm's random-erasing "
                                  "probability on top of the preset")
    num_workers: int | None = Field(None, ge=0, le=256, description="data loader workers; None: from cores")
    cache: Literal["auto", "none", "memory", "disk", "features"] = Field(
        "auto", description="memory/disk: decoded images; features: a probe's backbone features "
        "(computed once); auto: features for a probe without augmentation (exact), else none")
    feature_views: int = Field(0, ge=0, le=64, description="cache: features with augmentation: "
                               "precompute K augmented views and cycle through them; 0: the "
                               "un-augmented view")

    # model
    model: str = "resnet18"
    weights: str | None = Field(
        None, description="local .safetensors/.pth file, 'hub' for the model's own, or hf-hub:ID"
    )
    image_size: int | None = Field(None, ge=16, le=2048, description="None: the model's pretrained size")
    mean: tuple[Mean, Mean, Mean] | None = None
    std: tuple[Std, Std, Std] | None = None
    head: HeadMode | None = Field(None, description="None: match when class ids are known")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    # Bounded like embedding_dim: `[1000000000]` would try to allocate hundreds of GB.
    head_layers: list[Annotated[int, Field(ge=1, le=16384)]] = Field(
        default_factory=list, max_length=16,
        description="hidden sizes of an MLP before the classifier; [] = linear head"
    )
    head_activation: str = Field("relu", description="activation between the head's hidden layers")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after each hidden head layer")
    task: Task = Field("classify", description="classify: a classifier; embed: an embedding head "
                       "trained with a metric loss, for retrieval of identities unseen in training")
    embedding_dim: int = Field(defaults.EMBEDDING_DIM, ge=2, le=8192, description="embed: vector size")
    metric_loss: MetricLoss = Field("arcface", description="embed: pytorch-metric-learning loss")
    loss_args: dict[str, LossArg] = Field(default_factory=dict, max_length=20, description="embed: "
                                          "arguments of the loss, e.g. {margin: 28.6, scale: 64}")
    miner: Miner = Field("auto", description="embed: pair/triplet miner; auto: the loss's usual one")
    miner_args: dict[str, LossArg] = Field(default_factory=dict, max_length=20)
    m_per_class: int | None = Field(None, ge=2, le=1024, description="embed: batches made of groups "
                                    "of m images of one identity (pair and triplet losses need positives)")

    # strategy
    strategy: Strategy = "finetune"
    freeze: list[str] = Field(default_factory=list, description="glob patterns of params to freeze")
    train_bn: bool = Field(False, description="keep BatchNorm of frozen parts training")
    freeze_bn_stats: bool = Field(
        False, description="all BatchNorm running statistics stay fixed, even where weights train"
    )
    layer_decay: float | None = Field(None, gt=0.0, le=1.0, description="each layer group below the "
                                      "head at this times the LR of the one above; default by strategy "
                                      "(STRATEGY_DEFAULTS): 0.8 for finetune")
    group_lrs: dict[str, LearningRate] = Field(
        default_factory=dict, description="explicit LR per param glob pattern, e.g. {'fc.*': 1e-3}"
    )
    freeze_epochs: int = Field(
        0, ge=0, le=MAX_EPOCHS,
        description="finetune: train only the head for this many epochs first (fastai's fine_tune); "
        "default by strategy (STRATEGY_DEFAULTS): 1 for finetune",
    )
    unfreeze_every: int = Field(1, ge=1, le=MAX_EPOCHS, description="gradual: epochs between unfreezing groups")
    unfreeze_at: list[EpochNumber] | None = Field(
        None, description="gradual: epochs (1-based, as in history.jsonl) at which the next group down unfreezes"
    )

    # optimisation
    optimizer: str = Field("adamw", max_length=100, description=f"{', '.join(OWN_OPTIMIZERS)}, or any "
                           "name in timm.optim.list_optimizers() (lamb, lion, adan, lars...)")
    lr: LearningRate = Field(1e-3, description="default by strategy (STRATEGY_DEFAULTS): 3e-3 "
                             "for probe and finetune, 1e-3 for gradual and scratch")
    weight_decay: float = Field(0.05, ge=0.0, le=1.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    scheduler: SchedulerName = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0, le=MAX_EPOCHS)
    restarts: int = Field(0, ge=0, le=1000, description="cosine: warm restarts (N+1 equal cycles)")
    cooldown_epochs: float = Field(0.0, ge=0.0, le=MAX_EPOCHS, description="constant min_lr for the "
                                   "last epochs, after the schedule")
    min_lr: float = Field(0.0, ge=0.0, le=MAX_LR)
    step_epochs: float = Field(10.0, gt=0.0, le=MAX_EPOCHS, description="step: epochs between decays")
    milestones: list[EpochPoint] = Field(default_factory=lambda: [30.0, 60.0, 80.0])
    gamma: float = Field(0.1, gt=0.0, lt=1.0, description="decay factor for step/multistep/exponential/plateau")
    power: float = Field(1.0, gt=0.0, le=10.0, description="polynomial schedule power")
    plateau_patience: int = Field(2, ge=0, le=MAX_EPOCHS)
    epochs: int = Field(10, ge=0, le=MAX_EPOCHS)
    batch_size: int = Field(32, ge=1, le=4096)
    precision: Precision = "auto"
    grad_clip: float | None = Field(None, gt=0.0, le=1000.0)
    grad_accum: int = Field(1, ge=1, le=1024)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    mixup: float = Field(0.0, ge=0.0, le=10.0, description="mixup alpha; 0 disables")
    cutmix: float = Field(0.0, ge=0.0, le=10.0, description="cutmix alpha; 0 disables")
    class_weights: Literal["balanced"] | list[ClassWeight] | None = None
    ema: float | None = Field(None, gt=0.0, lt=1.0, description="EMA decay of the weights")
    early_stopping: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="patience in epochs")
    monitor: Monitor = "val_top1"
    target: float | None = Field(None, gt=0.0, le=1.0, description="stop at this val top-1")
    max_minutes: float | None = Field(None, gt=0.0, le=1e6)
    seed: int = Field(defaults.SEED, ge=0, le=2**32 - 1)
    channels_last: bool = False
    progressive_resize: ProgressiveResize | None = Field(
        None, description="train at start x image_size first, growing linearly to the full size "
        "by `finish` of the epochs (evaluation stays at the full size)")
    sync_bn: bool = Field(False, description="with several processes, BatchNorm statistics over the "
                          "global batch (SyncBatchNorm; CUDA only); off: per-process statistics")
    checkpoint_every: int | None = Field(None, ge=1, le=10**9, description="also save last/ every N "
                                         "optimizer steps (a crash loses at most N steps)")

    # distillation
    teacher: str | None = Field(
        None, max_length=4096, description="a run folder, pipeline stage folder (in a pipeline: an "
        "earlier stage's name) or weights file with model.json beside it, whose logits teach this stage")
    distill: Distill | None = Field(None, description="how the teacher's soft targets are weighed; "
                                    "None with a teacher: the defaults")

    # output
    out: Path = Path(defaults.TRAIN_OUT)
    report: bool = Field(True, description="write report.html/report.md/plots at the end of the stage")
    log_with: Literal["none", "tensorboard", "mlflow"] = "none"

    @model_validator(mode="before")
    @classmethod
    def _strategy_defaults(cls, data: Any) -> Any:
        """Fill the keys of STRATEGY_DEFAULTS[strategy] that `data` leaves out (given ones win)."""
        if not isinstance(data, dict):
            return data
        strategy = data.get("strategy", cls.model_fields["strategy"].default)
        fill = dict(STRATEGY_DEFAULTS.get(strategy, {})) if isinstance(strategy, str) else {}
        if any(data.get(k) for k in _AUGMENTATION_ADDITIONS) and fill.get("augmentation") == "none":
            fill["augmentation"] = "standard"
        return {**fill, **data}

    @field_validator("data", "out")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return Path(value).expanduser()

    @field_validator("out")
    @classmethod
    def _out_is_a_folder(cls, value: Path) -> Path:
        # os.path, not Path: a path too long for the OS is not there, rather than a crash.
        if os.path.exists(value) and not os.path.isdir(value):
            raise ValueError(f"{value} is a file; out must be a folder (the run folder to write)")
        return value

    @field_validator("split")
    @classmethod
    def _split_fractions(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if len(value) not in (2, 3) or any(not 0.0 < f < 1.0 for f in value):
            raise ValueError(f"split: expected 2 or 3 fractions between 0 and 1 ([train, val] or "
                             f"[train, val, test], e.g. [0.7, 0.15, 0.15]), got {value}")
        # A tolerance: 0.7 + 0.15 + 0.15 is not exactly 1.0 in floating point.
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"split: the fractions must sum to 1, {value} sums to {sum(value):g}")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from .models.build import resolve_model_name

        return resolve_model_name(value)

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        value = value.strip().lower()
        valid = optimizer_names()
        if value not in valid:
            hint = difflib.get_close_matches(value, valid, n=1)
            near = f" (did you mean '{hint[0]}'?)" if hint else ""
            # Worded as pydantic's Literal errors, like every other choice key.
            raise PydanticCustomError(CHOICE_ERROR, f"unknown value {clip(value, 80)!r}{near}; "
                                      f"choose one of {', '.join(map(repr, valid))}")
        return value

    @field_validator("augment")
    @classmethod
    def _known_transforms(cls, value: list[Any]) -> list[Any]:
        from .data.augment import check_steps

        try:
            check_steps(value)
        except ValueError as exc:
            raise PydanticCustomError(CHOICE_ERROR, str(exc)) from None
        return value

    @field_validator("auto_augment")
    @classmethod
    def _known_policy(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from timm.data import create_transform

        try:  # timm parses the policy string while building; building once at 32 px costs ~ms
            create_transform(32, is_training=True, auto_augment=value)
        except (AssertionError, ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"auto_augment {value!r} is not a timm policy ({exc}); e.g. "
                             "rand-m9-mstd0.5, rand-m7-n2, augmix-m5-w4-d2, original, v0") from None
        return value

    @field_validator("head_activation")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        from .models.head import ACTIVATIONS

        if value not in ACTIVATIONS:
            raise ValueError(f"unknown activation {value!r}; choose one of {', '.join(ACTIVATIONS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if (self.mixup or self.cutmix) and self.class_weights is not None:
            raise ValueError("class_weights cannot be combined with mixup/cutmix; drop one of them")
        if self.strategy == "scratch" and self.weights:
            raise ValueError("strategy 'scratch' starts from random weights; remove 'weights'")
        self._consistent_augmentation()
        self._augment_runs()
        self._consistent_distill()
        # By value (config.yaml holds every default): a changed val_fraction beside split would
        # be silently ignored, so the two are refused together.
        if self.split is not None and self.val_fraction != defaults.VAL_FRACTION:
            raise ValueError(f"split and val_fraction both set the validation share; split "
                             f"{self.split} replaces val_fraction, so remove val_fraction")
        if self.restarts and self.scheduler != "cosine":
            raise ValueError(f"restarts: warm restarts are a cosine schedule's; scheduler is {self.scheduler!r}")
        if self.cooldown_epochs and self.scheduler in ("one_cycle", "plateau"):
            raise ValueError(f"cooldown_epochs: scheduler {self.scheduler!r} sets its own end; use cosine, "
                             "step, polynomial...")
        if self.unfreeze_at is not None and sorted(self.unfreeze_at) != self.unfreeze_at:
            raise ValueError("unfreeze_at must list epochs in increasing order")
        # Checked by value, not by whether the key was given: config.yaml dumps every default.
        if not self.head_layers and (self.head_dropout or self.head_activation != "relu"):
            raise ValueError("head_dropout and head_activation act between hidden head layers: set "
                             "head_layers (e.g. [512]), or use drop_rate for a linear head")
        self._consistent_task()
        return self

    def _consistent_task(self) -> None:
        from .models.embedding import METRIC_LOSSES, MINERS, check_args, check_loss

        valid = TASK_MONITORS[self.task]
        if self.monitor not in valid:
            if "monitor" in self.model_fields_set:
                raise ValueError(f"monitor {self.monitor!r} is not measured by task {self.task!r}; "
                                 f"choose one of {', '.join(valid)}")
            # Not set by the user: the task's own default (mAP ranks every true match, recall@1
            # only the first). Set in __dict__: an assignment would re-run these validators.
            self.__dict__["monitor"] = valid[0]
        if self.task == "classify":
            return
        clash = [k for k in ("mixup", "cutmix", "label_smoothing", "class_weights", "teacher")
                 if getattr(self, k)]
        if clash:
            raise ValueError(f"{', '.join(clash)}: classification settings; task: embed trains with a "
                             "metric loss on identity labels, so remove them")
        if self.split is not None:
            raise ValueError("split: task: embed holds out whole identities for validation "
                             "(val_fraction of them, or a val/ folder); remove split")
        if self.target is not None:
            raise ValueError("target: a val top-1 to stop at; task: embed has none (use early_stopping)")
        kind = METRIC_LOSSES[self.metric_loss]
        check_args("losses", kind.pml, self.loss_args, "loss_args")
        if self.loss_args:  # the defaults are known to train
            check_loss(self.metric_loss, self.loss_args, self.embedding_dim)
        if self.miner not in ("auto", "none"):
            if kind.classes:
                raise ValueError(f"miner: {self.metric_loss} compares each image with class centres, "
                                 "not pairs; use miner: none (or a pair loss such as triplet)")
            check_args("miners", MINERS[self.miner], self.miner_args, "miner_args")
        elif self.miner_args and self.miner == "none":
            raise ValueError("miner_args: there is no miner (miner: none)")
        if self.m_per_class and self.batch_size % self.m_per_class:
            raise ValueError(f"m_per_class {self.m_per_class} must divide batch_size {self.batch_size} "
                             "(each batch holds whole groups of one identity)")
        if self.m_per_class and self.batch_size < 2 * self.m_per_class:
            raise ValueError(f"m_per_class {self.m_per_class} with batch_size {self.batch_size}: each "
                             "batch would hold one identity, with nothing to tell it from, and a pair "
                             "loss would train nothing; use batch_size >= 2 x m_per_class")

    def _augment_runs(self) -> None:
        """The augment: list, run once at the stage's image size(s) (data.augment.try_steps)."""
        if not self.augment:
            return
        from .data.augment import try_steps

        size = self.image_size or 224
        sizes = {size}
        if self.progressive_resize is not None:
            sizes.add(max(16, int(size * self.progressive_resize.start)))
        try:
            for each in sorted(sizes):
                try_steps(self.augment, each)
        except ValueError as exc:
            raise PydanticCustomError(CHOICE_ERROR, f"augment: {exc}") from None

    def _consistent_augmentation(self) -> None:
        if self.augment and (self.auto_augment or self.re_prob is not None):
            raise ValueError("auto_augment/re_prob tune timm's preset, but an augment: list replaces it; "
                             "list RandAugment/TrivialAugmentWide/RandomErasing in augment: instead")
        if self.augmentation == "none" and (self.auto_augment or self.re_prob):
            raise ValueError("auto_augment/re_prob add to an augmentation preset; augmentation is 'none'")

    def _consistent_distill(self) -> None:
        if self.distill is not None and not self.teacher:
            raise ValueError("distill: weighs a teacher's soft targets; set teacher: (a run folder "
                             "or weights file), or remove distill:")
        if self.teacher and self.cache == "features":
            raise ValueError("cache: features trains a head on backbone features, but the teacher "
                             "needs the images; use cache: auto, none, memory or disk with teacher:")

    def as_scratch(self) -> TrainConfig:
        """The same stage trained from random weights: what "scratch" means, in one place."""
        return self.model_copy(update={"weights": None, "strategy": "scratch"})

    def resolved(self) -> dict[str, Any]:
        """Plain data for config.yaml (paths as strings)."""
        return self.model_dump(mode="json")


def optimizer_names() -> list[str]:
    """Every optimizer name `optimizer:` accepts: the hand-written ones and timm's registry."""
    from timm.optim import list_optimizers

    timm_names = [n for n in list_optimizers() if n not in _UNSUPPORTED_OPTIMIZERS
                  and not n.startswith(_UNSUPPORTED_PREFIXES)]
    return sorted(set(OWN_OPTIMIZERS) | set(timm_names))


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One readable message naming each bad key path, what was wrong and the valid choices."""
    return f"{source}: invalid configuration\n" + listing(validation_problems(err, model))


def validation_problems(err: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per error, at most MAX_PER_KEY per top-level key: a long list of bad items must
    not push the other keys' problems out of the message."""
    lines: list[str] = []
    per_key: Counter[Any] = Counter()
    for item in err.errors():
        key = item["loc"][0] if item["loc"] else None
        per_key[key] += 1
        if per_key[key] <= MAX_PER_KEY:
            lines.append(_problem_line(item, model))
    for key, n in per_key.items():
        if n > MAX_PER_KEY:
            lines.append(f"{_key_path((key,) if key is not None else ())}: {n - MAX_PER_KEY} more problem(s) "
                         "like those above")
    return lines


def _problem_line(item: ErrorDetails, model: type[BaseModel]) -> str:
    """The key path, what was wrong, and the valid choices or range."""
    path = _key_path(item["loc"])
    kind = item["type"]
    given = item.get("input")
    valid_range = _valid_range(model, item["loc"], path) if kind in _BOUND_ERRORS else ""
    if kind == "extra_forbidden":
        valid = sorted(_fields_at(model, item["loc"][:-1]))
        hint = difflib.get_close_matches(str(item["loc"][-1])[:100], valid, n=1)
        near = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{path}: unknown key{near}; valid keys: {', '.join(valid)}"
    if kind == "literal_error":
        return f"{path}: unknown value {shown(given)}; {item['msg'].lower()}"
    if valid_range:
        problem = "not a finite number" if kind == "finite_number" else "out of range"
        return f"{path}: {shown(given)} is {problem}; valid: {valid_range}"
    msg = item["msg"].removeprefix("Value error, ")
    if not item["loc"] and re.split(r"[:. \[]", msg, maxsplit=1)[0] in model.model_fields:
        return clip(msg, 3000)  # a whole-config check that names its key itself
    if kind == CHOICE_ERROR:
        return f"{path}: {clip(msg, 3000)}"
    shown_value = f" (got {shown(given)})" if not isinstance(given, dict) and given is not None else ""
    return f"{path}: {clip(item['msg'].removeprefix('Value error, '), 300)}{shown_value}"


def listing(problems: list[str]) -> str:
    """Indented lines, one per problem, at most MAX_LISTED of them: the first few say what to fix."""
    lines = [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def _valid_range(model: type[BaseModel], loc: tuple[Any, ...], path: str) -> str:
    """'16 <= image_size <= 2048' (and why) for a field with numeric bounds, else ''."""
    field = model.model_fields.get(loc[0]) if loc and isinstance(loc[0], str) else None
    if field is None:
        return ""
    bounds = field.metadata or _inner_bounds(field.annotation)
    low = next((f"{b.gt} < " for b in bounds if isinstance(b, annotated_types.Gt)), "") or next(
        (f"{b.ge} <= " for b in bounds if isinstance(b, annotated_types.Ge)), "")
    high = next((f" < {b.lt}" for b in bounds if isinstance(b, annotated_types.Lt)), "") or next(
        (f" <= {b.le}" for b in bounds if isinstance(b, annotated_types.Le)), "")
    if not (low or high):
        return ""
    why = f" ({_WHY[loc[0]]})" if loc[0] in _WHY else ""
    return f"{low}{path}{high}{why}"


def _inner_bounds(annotation: Any) -> list[Any]:
    """The bounds of the first constrained type inside e.g. `list[EpochPoint] | None`."""
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Annotated:
            return [b for m in arg.__metadata__ for b in getattr(m, "metadata", [m])]
        if found := _inner_bounds(arg):
            return found
    return []


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("literal['balanced']", "list[constrained-float]"):
            continue  # pydantic's name of a union member, not a key
        else:
            part = clip(str(part), 80)
            out += f".{part}" if out else part
    return out or "(top level)"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> set[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return set(current.model_fields)
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        current = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            # list[Stage] and similar: look one level inside
            for a in args:
                inner = getattr(a, "__args__", ())
                current = next((i for i in inner if isinstance(i, type) and issubclass(i, BaseModel)), None)
                if current:
                    break
    return set(current.model_fields) if current else set()


class _ConfigLoader(yaml.SafeLoader):
    """Safe loading that refuses anchors/aliases and deep nesting while composing, before any
    value is built, so a hostile file costs no more than reading it."""

    _depth = 0  # nodes being composed, one inside the other

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise yaml.composer.ComposerError(
                None, None, f"found {sign}{clip(anchor, 40)}: anchors and aliases are not allowed in "
                "config files (a few bytes can expand to gigabytes); write the value out, or share it "
                "with a pipeline's vars: or defaults:", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels; a config needs a few", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str | bytes, source: str) -> Any:
    """Parse one YAML document safely; raise ConfigError naming `source` on any problem."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; a configuration is a few "
                          "KB, so this is likely not a config file")
    try:
        return _construct(_ConfigLoader(text), source)
    except yaml.reader.ReaderError as exc:  # not UTF-8, or a control character: likely not text
        raise ConfigError(f"{source}: not valid YAML at position {exc.position}: "
                          f"#x{exc.character:02x}: {exc.reason}") from None
    except (yaml.YAMLError, ValueError) as exc:
        # PyYAML's own text points at "<unicode string>"; say the source, line and column instead.
        # ValueError: an explicit tag on a bad scalar, e.g. `!!int ten`.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: not valid YAML{where}: {clip(problem, 400)}") from None


def _construct(loader: _ConfigLoader, source: str) -> Any:
    try:
        node = loader.get_single_node()
        duplicates = _duplicate_keys(loader, node) if node is not None else []
        if duplicates:
            raise ConfigError(f"{source}: duplicate keys (each key may appear once in a mapping; "
                              f"keep one):\n" + listing(duplicates))
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node, path: str = "") -> list[str]:
    """'key.path: given at line 3 and again at line 7' for each key given twice in one mapping
    (PyYAML would keep the last silently)."""
    found: list[str] = []
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(loader, item, f"{path}[{i}]")
    elif isinstance(node, yaml.MappingNode):
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            # Compare constructed keys, so `1` and `0x1` count as the same key, as in the dict.
            key = loader.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else key_node
            label = f"{path}.{clip(str(key), 80)}" if path else clip(str(key), 80)
            line = key_node.start_mark.line + 1
            if key in first_line:
                found.append(f"{label}: given at line {first_line[key]} and again at line {line}")
            first_line.setdefault(key, line)
            found += _duplicate_keys(loader, value_node, label)
    return found


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        with open(path, "rb") as f:
            # Read one byte past the cap, never the whole of a huge file (or of /dev/zero).
            text = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` / `a.b.c=value` strings; values are parsed as YAML scalars."""
    result = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {shown(item)}: expected key=value, e.g. --set lr=0.01")
        key, raw = item.split("=", 1)
        value = parse_yaml(raw, f"--set {clip(key, 80)}") if raw.strip() else None
        target = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = target.get(part)
            if not isinstance(node, dict):
                node = {} if node is None else node
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {clip(key, 80)}: '{clip(part, 80)}' is not a mapping")
                target[part] = node = dict(node)
            else:
                target[part] = node = dict(node)
            target = node
        target[parts[-1]] = value
    return result


def build_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate plain data into a TrainConfig or raise ConfigError with every problem listed."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, TrainConfig)) from None
