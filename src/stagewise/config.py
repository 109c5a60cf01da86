"""Typed configuration: one stage of training (`TrainConfig`), validated once at the edge.

Every default lives here. The command line, YAML files and the Python API all build the same
model, so a key has one name and one meaning everywhere.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

Strategy = Literal["scratch", "probe", "finetune", "gradual"]
OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop", "adamw8bit"]
SchedulerName = Literal[
    "constant", "one_cycle", "cosine", "polynomial", "exponential", "step", "multistep", "plateau"
]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Augmentation = Literal["none", "light", "standard", "strong"]
HeadMode = Literal["match", "reset", "keep"]
DataFormat = Literal[
    "auto", "folder", "imagenette", "imagewoof", "tiny-imagenet", "imagenet", "csv", "cifar"
]
Monitor = Literal["val_top1", "val_top5", "val_loss"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(_Strict):
    """Everything one training stage needs. Unknown keys are errors, never ignored."""

    # data
    data: Path = Field(description="image folder: train/ and val/ (optional test/), or class folders")
    format: DataFormat = "auto"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="used when there is no val/ split")
    augmentation: Augmentation = "standard"
    num_workers: int | None = Field(None, ge=0, description="data loader workers; None: from cores")
    cache: Literal["none", "memory", "disk"] = "none"

    # model
    model: str = "resnet18"
    weights: str | None = Field(
        None, description="local .safetensors/.pth file, 'hub' for the model's own, or hf-hub:ID"
    )
    image_size: int | None = Field(None, ge=8, description="None: the model's pretrained size")
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    head: HeadMode | None = Field(None, description="None: match when class ids are known")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    head_layers: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="hidden sizes of an MLP before the classifier; [] = linear head"
    )
    head_activation: str = Field("relu", description="activation between the head's hidden layers")
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after each hidden head layer")

    # strategy
    strategy: Strategy = "finetune"
    freeze: list[str] = Field(default_factory=list, description="glob patterns of params to freeze")
    train_bn: bool = Field(False, description="keep BatchNorm of frozen parts training")
    freeze_bn_stats: bool = Field(
        False, description="all BatchNorm running statistics stay fixed, even where weights train"
    )
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)
    group_lrs: dict[str, float] = Field(
        default_factory=dict, description="explicit LR per param glob pattern, e.g. {'fc.*': 1e-3}"
    )
    freeze_epochs: int = Field(
        0, ge=0, description="finetune: train only the head for this many epochs first (fastai's fine_tune)"
    )
    unfreeze_every: int = Field(1, ge=1, description="gradual: epochs between unfreezing groups")
    unfreeze_at: list[int] | None = Field(
        None, description="gradual: epochs (1-based, as in history.jsonl) at which the next group down unfreezes"
    )

    # optimisation
    optimizer: OptimizerName = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    scheduler: SchedulerName = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    min_lr: float = Field(0.0, ge=0.0)
    step_epochs: float = Field(10.0, gt=0.0, description="step: epochs between decays")
    milestones: list[float] = Field(default_factory=lambda: [30.0, 60.0, 80.0])
    gamma: float = Field(0.1, gt=0.0, description="decay factor for step/multistep/exponential")
    power: float = Field(1.0, gt=0.0, description="polynomial schedule power")
    plateau_patience: int = Field(2, ge=0)
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(32, ge=1)
    precision: Precision = "auto"
    grad_clip: float | None = Field(None, gt=0.0)
    grad_accum: int = Field(1, ge=1)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    mixup: float = Field(0.0, ge=0.0, description="mixup alpha; 0 disables")
    cutmix: float = Field(0.0, ge=0.0, description="cutmix alpha; 0 disables")
    class_weights: Literal["balanced"] | list[float] | None = None
    ema: float | None = Field(None, gt=0.0, lt=1.0, description="EMA decay of the weights")
    early_stopping: int | None = Field(None, ge=1, description="patience in epochs")
    monitor: Monitor = "val_top1"
    target: float | None = Field(None, gt=0.0, le=1.0, description="stop at this val top-1")
    max_minutes: float | None = Field(None, gt=0.0)
    seed: int = 0
    channels_last: bool = False

    # output
    out: Path = Path("runs/train")
    report: bool = Field(True, description="write report.html/report.md/plots at the end of the stage")
    log_with: Literal["none", "tensorboard", "mlflow"] = "none"

    @field_validator("data", "out")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return Path(value).expanduser()

    @field_validator("out")
    @classmethod
    def _out_is_a_folder(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file; out must be a folder (the run folder to write)")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from .models.build import resolve_model_name

        return resolve_model_name(value)

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
        if self.unfreeze_at is not None and sorted(self.unfreeze_at) != self.unfreeze_at:
            raise ValueError("unfreeze_at must list epochs in increasing order")
        # Checked by value, not by whether the key was given: config.yaml dumps every default.
        if not self.head_layers and (self.head_dropout or self.head_activation != "relu"):
            raise ValueError("head_dropout and head_activation act between hidden head layers: set "
                             "head_layers (e.g. [512]), or use drop_rate for a linear head")
        return self

    def resolved(self) -> dict[str, Any]:
        """Plain data for config.yaml (paths as strings)."""
        return self.model_dump(mode="json")


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One readable message naming each bad key path, what was wrong and the valid choices."""
    lines = [f"{source}: invalid configuration"]
    for item in err.errors():
        path = _key_path(item["loc"])
        kind = item["type"]
        if kind == "extra_forbidden":
            valid = sorted(_fields_at(model, item["loc"][:-1]))
            hint = difflib.get_close_matches(str(item["loc"][-1]), valid, n=1)
            near = f" (did you mean '{hint[0]}'?)" if hint else ""
            lines.append(f"  - {path}: unknown key{near}; valid keys: {', '.join(valid)}")
        elif kind == "literal_error":
            given = item.get("input")
            lines.append(f"  - {path}: unknown value {given!r}; {item['msg'].lower()}")
        else:
            given = item.get("input")
            shown = f" (got {given!r})" if not isinstance(given, dict) and given is not None else ""
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"  - {path}: {msg}{shown}")
    return "\n".join(lines)


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("literal['balanced']", "list[float]", "function-after[_known_model(), str]"):
            continue
        else:
            out += f".{part}" if out else str(part)
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


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # PyYAML's own text points at "<unicode string>"; say the file, line and column instead.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
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
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set lr=0.01")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        target = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = target.get(part)
            if not isinstance(node, dict):
                node = {} if node is None else node
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {key}: '{part}' is not a mapping")
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
