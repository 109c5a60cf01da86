"""Typed configuration: one stage of training (`TrainConfig`), validated once at the edge.

Every default of a stage key lives here (or in `defaults.py` where several layers need it). The
command line, YAML files and the Python API all build the same model, so a key has one name and
one meaning everywhere.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .. import defaults
from ..errors import REQUEUE_EXIT, ConfigError, clip
from ..kinds import STRATEGIES, TASKS, WeightSource, default_strategy, recipe
from ..kinds import task as task_of
from ..metrics import monitors
from .aliases import ALIASES, NOTES, apply_aliases
from .choices import (
    OWN_OPTIMIZERS,
    Augmentation,
    CacheMode,
    DataFormat,
    DecoderName,
    HeadMode,
    LogWith,
    LRScale,
    MetricLoss,
    Miner,
    Precision,
    RequeueSignal,
    SchedulerName,
    Source,
    Strategy,
    Task,
    VerifyMode,
)
from .errors_format import CHOICE_ERROR, format_validation_error
from .tutorial import Subset, fill_from_augment

LossArg = float | int | bool | Annotated[str, Field(max_length=100)]

# Registry names that stagewise's training step cannot drive: adahessian needs a second-order
# backward; fused*/bnb* need apex/bitsandbytes CUDA kernels (adamw8bit covers the common case).
_UNSUPPORTED_OPTIMIZERS = ("adahessian",)
_UNSUPPORTED_PREFIXES = ("fused", "bnb")

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

# Said after the valid range, where the bound is not self-explanatory (errors_format reads it
# as TrainConfig.bound_reasons).
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


ImageSize = Annotated[int, Field(ge=16, le=2048)]
Magnitude = Annotated[float, Field(ge=0.0, le=10.0)]  # timm's RandAugment scale
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
DropRate = Annotated[float, Field(ge=0.0, lt=1.0)]


class Progressive(_Strict):
    """`progressive: {stages: 4, image_size: [128, 224], randaugment_magnitude: [5, 15],
    mixup: [0, 0.2], drop_rate: [0.1, 0.3]}`: EfficientNetV2's progressive learning. The epochs
    fall into `stages` equal sub-stages; each knob given goes linearly from its first value (the
    first sub-stage) to its last (the last one). Evaluation stays at the stage's image_size."""

    stages: int = Field(4, ge=2, le=100, description="sub-stages (at most the stage's epochs)")
    image_size: tuple[ImageSize, ImageSize] | None = Field(None, description="training image size, first and last")
    randaugment_magnitude: tuple[Magnitude, Magnitude] | None = Field(
        None, description="timm RandAugment magnitude (0-10, 10: full strength), first and last")
    mixup: tuple[Fraction, Fraction] | None = Field(None, description="mixup alpha, first and last")
    drop_rate: tuple[DropRate, DropRate] | None = Field(
        None, description="dropout before the classifier (timm's drop_rate), first and last")

    def ranges(self) -> dict[str, tuple[float, float]]:
        """The knobs given, each with its (first, last) values."""
        return {k: v for k in ("image_size", "randaugment_magnitude", "mixup", "drop_rate")
                if (v := getattr(self, k)) is not None}


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

    bound_reasons: ClassVar[dict[str, str]] = _WHY
    # errors_format: an unknown key is matched against these spellings too, and the ~80 keys are
    # not listed in the message (too many to read) but named where to find them.
    aliases: ClassVar[dict[str, str]] = {
        k: "kept in notes" if a.canonical == NOTES else f"an alias of {a.canonical}"
        for k, a in ALIASES.items()}
    key_list_hint: ClassVar[str] = "every key with its default: stagewise keys; aliases: docs/cli.md"

    # data
    data: Path = Field(description="image folder: train/ and val/ (optional test/), or class folders")
    format: DataFormat = Field("auto", description="dataset layout; auto: detected (stagewise data inspect shows which)")
    verify: VerifyMode = Field(
        defaults.VERIFY, description="what indexing opens, once per folder change (the index is "
        "saved): none, header, decode (1/8-scale decode of every image), auto (header up to "
        f"{defaults.VERIFY_AUTO_LIMIT} files, none above); the val split is decoded unless none")
    val_fraction: float = Field(defaults.VAL_FRACTION, gt=0.0, lt=1.0, description="used when there is no val/ split")
    split: list[float] | None = Field(
        None, description="[train, val] or [train, val, test] fractions of a folder of class "
        "folders (no train/val/test folders), held out per class; replaces val_fraction")
    train_subset: Subset | None = Field(
        None, description="train on a seeded, stratified subset: N images, 'K/class' or {per_class: K}")
    val_subset: Subset | None = Field(None, description="validate on a subset, as train_subset")
    augmentation: Augmentation = Field("standard", description="default by strategy "
                                       "(kinds.recipe): none (probe), light (finetune), standard")
    augment: list[str | dict[str, dict[str, Any] | None]] = Field(  # pasted calls: config.tutorial
        default_factory=list, max_length=64,
        description="torchvision v2 transforms by name with arguments, e.g. [{RandomResizedCrop: "
        "{scale: [0.5, 1.0]}}, RandomHorizontalFlip], or pasted torchvision calls "
        "(RandomResizedCrop(224), ToTensor(), Normalize(mean=[...], std=[...])); replaces the "
        "augmentation preset")
    auto_augment: str | None = Field(None, max_length=200, description="timm's auto-augment policy on "
                                     "top of the preset, e.g. rand-m9-mstd0.5 (timm recipes)")
    re_prob: float | None = Field(None, ge=0.0, le=1.0, description="timm's random-erasing "
                                  "probability on top of the preset")
    num_workers: int | None = Field(None, ge=0, le=256, description="data loader workers; None: from cores")
    cache: CacheMode = Field(
        "auto", description="memory/disk: decoded images; features: a probe's backbone features "
        "(computed once); auto: features for a probe without augmentation (exact), else none")
    decoder: DecoderName = Field(
        "auto", description="how the loader decodes files: pil (full size), pil-draft (JPEGs at a "
        "reduced scale, never under 2x the resize side), torchvision; auto: pil-draft for training, "
        "pil for validation (docs/shards.md)")
    feature_views: int = Field(0, ge=0, le=64, description="cache: features with augmentation: "
                               "precompute K augmented views and cycle through them; 0: the "
                               "un-augmented view")

    # model
    model: str = Field("resnet18", description="timm model name (or tv:NAME for torchvision); stagewise models lists them")
    weights: str | None = Field(
        "auto", description="auto: the model's pretrained weights when they can be had (local "
        "file, Hugging Face cache, hub when online), else random init, said and recorded; a "
        ".safetensors/.pth file, 'hub', hf-hub:ID; none (or null): random init"
    )
    weights_auto: str | None = Field(
        None, description="filled in: what weights: auto found (file/hf-cache/torch-cache/hub, or "
        "none and why); model.json repeats it as weights_from")
    image_size: int | None = Field(None, ge=16, le=2048, description="None: the model's pretrained size")
    mean: tuple[Mean, Mean, Mean] | None = Field(None, description="input normalisation mean (0..1 scale); None: the model's pretrained config")
    std: tuple[Std, Std, Std] | None = Field(None, description="input normalisation std (0..1 scale); None: the model's pretrained config")
    head: HeadMode | None = Field(None, description="None: match when class ids are known")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0,
        description="dropout before the classifier (timm's drop_rate)")
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0,
        description="stochastic depth rate (timm's drop_path_rate)")
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
    miner_args: dict[str, LossArg] = Field(default_factory=dict, max_length=20,
        description="embed: arguments of the miner")
    m_per_class: int | None = Field(None, ge=2, le=1024, description="embed: batches made of groups "
                                    "of m images of one identity (pair and triplet losses need positives)")

    # strategy
    strategy: Strategy = Field("finetune", description="default: scratch from random init, else finetune")
    weights_source: Source | None = Field(
        None, description="where the starting weights come from: none (random init), transfer (a "
        "pretrained file or hub) or handoff (an earlier pipeline stage); filled in, it picks the "
        "default recipe (kinds.recipe)")
    freeze: list[str] = Field(default_factory=list, description="glob patterns of params to freeze")
    train_bn: bool = Field(False, description="keep BatchNorm of frozen parts training")
    freeze_bn_stats: bool = Field(
        False, description="all BatchNorm running statistics stay fixed, even where weights train"
    )
    layer_decay: float | None = Field(None, gt=0.0, le=1.0, description="each layer group below the "
                                      "head at this times the LR of the one above; default by strategy "
                                      "(kinds.recipe): 0.8 for finetune")
    group_lrs: dict[str, LearningRate] = Field(
        default_factory=dict, description="explicit LR per param glob pattern, e.g. {'fc.*': 1e-3}"
    )
    freeze_epochs: int = Field(
        0, ge=0, le=MAX_EPOCHS,
        description="finetune: train only the head for this many epochs first (fastai's fine_tune); "
        "default by strategy (kinds.recipe): 1 for finetune",
    )
    unfreeze_every: int = Field(1, ge=1, le=MAX_EPOCHS, description="gradual: epochs between unfreezing groups")
    unfreeze_at: list[EpochNumber] | None = Field(
        None, description="gradual: epochs (1-based, as in history.jsonl) at which the next group down unfreezes"
    )

    # optimisation
    optimizer: str = Field("adamw", max_length=100, description=f"{', '.join(OWN_OPTIMIZERS)}, or any "
                           "name in timm.optim.list_optimizers() (lamb, lion, adan, lars...)")
    lr: LearningRate = Field(1e-3, description="default by strategy (kinds.recipe): 3e-3 "
                             "for probe and finetune, 1e-3 for gradual and scratch")
    lr_scale: LRScale = Field("none", description="scale lr (and group_lrs) by the global batch "
                              "(processes x batch_size x grad_accum) over lr_reference_batch: "
                              "linear (Goyal et al.), sqrt, or none")
    lr_reference_batch: int = Field(256, ge=1, le=2**20, description="the global batch lr is given for")
    weight_decay: float = Field(0.05, ge=0.0, le=1.0, description="default by optimizer "
                                "(kinds.recipe): 1e-4 for SGD-like, 0.05 for AdamW, 0 for Adam")
    momentum: float = Field(0.9, ge=0.0, lt=1.0,
        description="SGD/RMSprop momentum")
    nesterov: bool = Field(False, description="SGD: Nesterov momentum")
    scheduler: SchedulerName = Field("cosine", description="LR schedule over the stage's steps")
    warmup_epochs: float = Field(0.0, ge=0.0, le=MAX_EPOCHS,
        description="linear warmup from 1% of lr (fractions allowed); one_cycle: sets its pct_start")
    one_cycle_pct_start: float | None = Field(
        None, gt=0.0, lt=1.0, description="one_cycle: fraction of the steps spent rising to lr "
        "(torch's pct_start); None: warmup_epochs / epochs, else 0.25")
    restarts: int = Field(0, ge=0, le=1000, description="cosine: warm restarts (N+1 equal cycles)")
    cooldown_epochs: float = Field(0.0, ge=0.0, le=MAX_EPOCHS, description="constant min_lr for the "
                                   "last epochs, after the schedule")
    min_lr: float = Field(0.0, ge=0.0, le=MAX_LR,
        description="the LR the schedule decays to (cosine) and the cooldown holds")
    step_epochs: float = Field(10.0, gt=0.0, le=MAX_EPOCHS, description="step: epochs between decays")
    milestones: list[EpochPoint] = Field(default_factory=lambda: [30.0, 60.0, 80.0],
        description="multistep: epochs at which the LR is multiplied by gamma")
    gamma: float = Field(0.1, gt=0.0, lt=1.0, description="decay factor for step/multistep/exponential/plateau")
    power: float = Field(1.0, gt=0.0, le=10.0, description="polynomial schedule power")
    plateau_patience: int = Field(2, ge=0, le=MAX_EPOCHS,
        description="plateau: epochs without improvement of the monitor before decaying")
    epochs: int = Field(10, ge=0, le=MAX_EPOCHS,
        description="epochs of the stage")
    batch_size: int = Field(32, ge=1, le=4096,
        description="images per batch per process")
    precision: Precision = Field("auto", description="auto: bf16/fp16 on CUDA, fp32 on CPU")
    grad_clip: float | None = Field(None, gt=0.0, le=1000.0,
        description="clip the gradient norm to this; None: no clipping")
    grad_accum: int = Field(1, ge=1, le=1024,
        description="batches accumulated per optimizer step")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0,
        description="cross-entropy label smoothing")
    mixup: float = Field(0.0, ge=0.0, le=10.0, description="mixup alpha; 0 disables")
    cutmix: float = Field(0.0, ge=0.0, le=10.0, description="cutmix alpha; 0 disables")
    class_weights: Literal["balanced"] | list[ClassWeight] | None = Field(None, description="loss weight per class id, or balanced (inverse frequency)")
    ema: float | None = Field(None, gt=0.0, lt=1.0, description="EMA decay of the weights")
    early_stopping: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="patience in epochs")
    monitor: str = Field("val_top1", max_length=100, description="the metric that picks the best "
                         "epoch (metrics.py's table); default: the task's own (val_top1, val_map)")
    target: float | None = Field(None, gt=0.0, le=1.0, description="stop at this val top-1")
    max_minutes: float | None = Field(None, gt=0.0, le=1e6,
        description="stop after this much training time (checked after each epoch)")
    seed: int = Field(defaults.SEED, ge=0, le=2**32 - 1,
        description="random seed (weights init, split, augmentation, batches)")
    channels_last: bool = Field(False, description="NHWC memory format (faster convolutions on recent GPUs)")
    progressive_resize: ProgressiveResize | None = Field(
        None, description="train at start x image_size first, growing linearly to the full size "
        "by `finish` of the epochs (evaluation stays at the full size)")
    progressive: Progressive | None = Field(
        None, description="progressive learning: image size and regularisation grow together over "
        "sub-stages of the epochs (EfficientNetV2), e.g. {stages: 4, image_size: [128, 224], "
        "randaugment_magnitude: [5, 15], mixup: [0, 0.2], drop_rate: [0.1, 0.3]}")
    sync_bn: bool = Field(False, description="with several processes, BatchNorm statistics over the "
                          "global batch (SyncBatchNorm; CUDA only); off: per-process statistics")
    checkpoint_every: int | None = Field(None, ge=1, le=10**9, description="also save last/ every N "
                                         "optimizer steps (a crash loses at most N steps)")
    keep_last: int = Field(1, ge=1, le=1000, description="checkpoints kept on disk: last/ always; "
                           "with N > 1 also checkpoints/step-*/ of the N most recent saves (hard links)")
    requeue_signal: RequeueSignal = Field(
        "SIGUSR1", description="this signal saves a checkpoint at the next step and exits with code "
        f"{REQUEUE_EXIT} so a cluster job script can requeue the run (none: not caught)")

    # distillation
    teacher: str | None = Field(
        None, max_length=4096, description="a run folder, pipeline stage folder (in a pipeline: an "
        "earlier stage's name) or weights file with model.json beside it, whose logits teach this stage")
    distill: Distill | None = Field(None, description="how the teacher's soft targets are weighed; "
                                    "None with a teacher: the defaults")

    # output
    out: Path = Field(Path(defaults.TRAIN_OUT), description="the run folder to write")
    report: bool = Field(True, description="write report.html/report.md/plots at the end of the stage")
    log_with: LogWith = Field("none", description="experiment tracker that gets every epoch's metrics")
    wandb_log_model: bool = Field(False, description="log_with: wandb: upload the final weights and "
                                  "model.json as a W&B model artifact at the end of the run")
    notes: dict[str, Any] = Field(default_factory=dict, max_length=50, description="free notes kept "
                                  "in config.yaml (description:, dataset:, classes: land here); no "
                                  "effect on training")

    @model_validator(mode="before")
    @classmethod
    def _defaults_by_choice(cls, data: Any) -> Any:
        """Fill the defaults that depend on other keys, for each key `data` leaves out (given ones
        win, and config.yaml records the values used): where the weights come from, the strategy
        that fits it, the recipe of that strategy in that context and optimizer (kinds.recipe),
        and the task's own monitor."""
        if not isinstance(data, dict):
            return data
        data = apply_aliases(data)  # first: the recipe below reads the canonical keys
        data = _resolve_weights(data)
        given = data.get("weights_source") or ("transfer" if data.get("weights") else "none")
        fill: dict[str, Any] = {"weights_source": given}
        # An unknown source is left to the field's validation, which lists the valid ones.
        source: WeightSource = "transfer" if given == "transfer" else "handoff" if given == "handoff" else "none"
        strategy = data.get("strategy", default_strategy(source))
        fill["strategy"] = strategy
        optimizer = data.get("optimizer", cls.model_fields["optimizer"].default)
        if isinstance(strategy, str):
            fill.update(recipe(strategy, source, optimizer if isinstance(optimizer, str) else None))
        if any(data.get(k) for k in _AUGMENTATION_ADDITIONS) and fill.get("augmentation") == "none":
            fill["augmentation"] = "standard"
        task = data.get("task", cls.model_fields["task"].default)
        if isinstance(task, str) and task in TASKS:
            fill["monitor"] = TASKS[task].default_monitor
        return {**fill, **data}

    @model_validator(mode="before")
    @classmethod
    def _pasted_augment(cls, data: Any) -> Any:
        """A pasted torchvision list sets mean/std (Normalize) and image_size (its last crop)."""
        return fill_from_augment(data) if isinstance(data, dict) else data

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
        from ..models.build import resolve_model_name

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

    @field_validator("augment", mode="before")
    @classmethod
    def _readable_calls(cls, value: Any) -> Any:
        from ..data.pasted import canonical_steps

        try:  # already canonical when the model validator read it; here to report its error
            return canonical_steps(value)
        except ValueError as exc:
            raise PydanticCustomError(CHOICE_ERROR, str(exc)) from None

    @field_validator("augment")
    @classmethod
    def _known_transforms(cls, value: list[Any]) -> list[Any]:
        from ..data.augment import check_steps

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
        from ..models.head import check_activation

        return check_activation(value)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if (self.mixup or self.cutmix) and self.class_weights is not None:
            raise ValueError("class_weights cannot be combined with mixup/cutmix; drop one of them")
        if not STRATEGIES[self.strategy].uses_weights and self.weights:
            raise ValueError(f"strategy {self.strategy!r} starts from random weights; remove 'weights'")
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
        if self.one_cycle_pct_start is not None and self.scheduler != "one_cycle":
            raise ValueError(f"one_cycle_pct_start: shapes the one_cycle schedule; scheduler is "
                             f"{self.scheduler!r} (use warmup_epochs for a warmup)")
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
        from ..models.embedding import METRIC_LOSSES, MINERS, check_args, check_loss

        valid = task_of(self.task).monitors
        if self.monitor not in valid:  # given by the user: the default is the task's own
            known = f"is not measured by task {self.task!r}" if self.monitor in monitors() else "is unknown"
            raise ValueError(f"monitor {self.monitor!r} {known}; choose one of {', '.join(valid)}")
        if not task_of(self.task).embeds:
            return
        clash = [k for k in ("mixup", "cutmix", "label_smoothing", "class_weights", "teacher")
                 if getattr(self, k)]
        if self.progressive is not None and self.progressive.mixup is not None:
            clash.append("progressive.mixup")
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
        from ..data.augment import try_steps

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
        self._consistent_progressive()

    def _consistent_progressive(self) -> None:
        p = self.progressive
        if p is None:
            return
        if not p.ranges():
            raise ValueError("progressive: give at least one of image_size, randaugment_magnitude, "
                             "mixup, drop_rate as [first, last]")
        if self.progressive_resize is not None:
            raise ValueError("progressive_resize and progressive both set the training image size; "
                             "use progressive.image_size alone")
        if p.stages > self.epochs:
            raise ValueError(f"progressive.stages {p.stages} is more than the stage's {self.epochs} "
                             "epochs; each sub-stage needs at least one epoch")
        if p.randaugment_magnitude is not None and (self.augment or self.auto_augment
                                                     or self.augmentation == "none"):
            raise ValueError("progressive.randaugment_magnitude sets timm's RandAugment on the "
                             "augmentation preset: it needs augmentation light/standard/strong and "
                             "no augment: list or auto_augment")
        if p.mixup is not None and self.class_weights is not None:
            raise ValueError("progressive.mixup cannot be combined with class_weights; drop one")

    def _consistent_distill(self) -> None:
        if self.distill is not None and not self.teacher:
            raise ValueError("distill: weighs a teacher's soft targets; set teacher: (a run folder "
                             "or weights file), or remove distill:")
        if self.teacher and self.cache == "features":
            raise ValueError("cache: features trains a head on backbone features, but the teacher "
                             "needs the images; use cache: auto, none, memory or disk with teacher:")

    def as_scratch(self) -> TrainConfig:
        """The same stage trained from random weights: what "scratch" means, in one place."""
        return self.model_copy(update={"weights": None, "strategy": "scratch", "weights_source": "none",
                                       "weights_auto": None})

    def resolved(self) -> dict[str, Any]:
        """Plain data for config.yaml (paths as strings)."""
        return self.model_dump(mode="json")


def _resolve_weights(data: dict[str, Any]) -> dict[str, Any]:
    """`weights: none` is random init; `weights: auto` (the default) becomes what models/auto.py
    finds for the model, recorded in `weights_auto`, unless the stage cannot use pretrained
    weights: a scratch stage, an earlier stage's handoff or a source said to be none."""
    weights = data.get("weights", "auto")
    if isinstance(weights, str) and weights.strip().lower() == "none":
        return {**data, "weights": None}
    if weights != "auto":
        return data
    model = data.get("model", TrainConfig.model_fields["model"].default)
    if (data.get("strategy") == "scratch" or data.get("weights_source") in ("none", "handoff")
            or not isinstance(model, str)):
        return {**data, "weights": None, "weights_auto": None}  # nothing looked for, nothing to say
    from ..models.auto import resolve_auto

    try:
        found = resolve_auto(model.strip())
    except (RuntimeError, ValueError):  # an unknown name: the model field's check names it
        return {**data, "weights": None, "weights_auto": None}
    return {**data, "weights": found.weights, "weights_auto": found.found}


def optimizer_names() -> list[str]:
    """Every optimizer name `optimizer:` accepts: the hand-written ones and timm's registry."""
    from timm.optim import list_optimizers

    timm_names = [n for n in map(str, list_optimizers()) if n not in _UNSUPPORTED_OPTIMIZERS
                  and not n.startswith(_UNSUPPORTED_PREFIXES)]
    return sorted(set(OWN_OPTIMIZERS) | set(timm_names))


def build_config(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate plain data into a TrainConfig or raise ConfigError with every problem listed."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, TrainConfig)) from None
