"""The one schema of a run folder: every plain-data file a run writes, its record type, its one
writer and its one reader.

A stage run folder holds config.yaml, split.npz (older runs: split.json), history.jsonl (EpochRecord per line),
best.safetensors with model.json (ModelCard) and confusion.json beside it, and last/ (the
resumable checkpoint, train/checkpoint.py). A pipeline run folder adds pipeline.json (Manifest of
StageEntry), history.json (all stages on one epoch axis), final.safetensors + model.json, and
stages/<name>/, baselines/<name>/. A comparison folder holds cells/<cell>/ run folders, each with
cell.json (CellMarker holding its CompareRow).

Adding a metric to the epoch record is one field in `EpochRecord` plus the code that computes it.
Writers replace files whole and atomically (io.write_*), so a reader never sees half a file;
readers are tolerant where a run may be interrupted (a torn JSON line is skipped) and strict where
a file is an input the user hands us (model.json).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal, TypedDict, TypeVar, cast, overload

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ._version import __version__
from .config.yaml_loader import parse_yaml
from .errors import ConfigError, WeightsError, shown
from .io import existing_dir, file_sha256, write_json, write_text, write_with
from .metrics import METRICS, card_metrics, is_finite, lower_is_better

log = logging.getLogger("stagewise")

CONFIG = "config.yaml"
SPLIT = "split.json"  # the split as written before split.npz; still read (split_file)
SPLIT_ARRAYS = "split.npz"  # the split a stage writes: paths blob + offsets + labels per split
HISTORY = "history.jsonl"
MODEL_CARD = "model.json"
CONFUSION = "confusion.json"
TEST = "test.json"
TEACHER = "teacher.json"  # a distilled stage's teacher (Teacher.record): what a resume checks
BEST = "best.safetensors"
LAST = "last"
CHECKPOINTS = "checkpoints"  # keep_last > 1: checkpoints/step-NNNNNNNNN/, the newest N saves
VAL_PREDICTIONS = "val_predictions.safetensors"  # the best weights' validation predictions
DONE = "done.json"  # written last, when a stage run has finished everything (--resume auto reads it)
MANIFEST = "pipeline.json"
PIPELINE_HISTORY = "history.json"
FINAL = "final.safetensors"
CELL_MARKER = "cell.json"
STAGES = "stages"  # a pipeline's stage run folders: stages/<name>/ (stage_dir)
BASELINES = "baselines"  # a pipeline's baseline run folders: baselines/<name>/ (baseline_dir)
CELLS = "cells"  # a comparison's cell run folders: cells/<cell>/ (cell_dir)
COMPARE = "compare.json"  # a comparison's table
LR_FIND_PLOT = "lr_find.png"  # beside lr_find.json
TRIALS = "trials"  # a search's trial run folders: trials/<number>/ (trial_dir)
TUNE_JOURNAL = "study.journal"  # a search's default Optuna storage (a journal file)
TUNE_TRIALS = "trials.json"  # a search's table of trials
TUNE_BEST = "best.yaml"  # the best trial's config as a pipeline: `stagewise run`
TUNE_BEST_STAGE = "best_stage.yaml"  # the same as a stage config: `stagewise train --config`
TUNE_PLOT = "tune.png"  # the objective per trial and the best so far
WANDB_RUN = "wandb_run.json"  # log_with: wandb: the W&B run a resume and the report reopen

MODEL_FORMAT = "stagewise.model/1"
MANIFEST_FORMAT = "stagewise.pipeline/1"


# ---- epoch records: history.jsonl ----

class EpochRecord(TypedDict, total=False):
    """One line of history.jsonl. Epoch 0 (optional) measures the starting weights."""

    epoch: int
    global_step: int
    image_size: int  # of the training images this epoch (progressive_resize); val is at full size
    randaugment_magnitude: float  # progressive learning's values for this epoch (config: progressive)
    mixup: float
    drop_rate: float
    train_loss: float
    train_top1: float
    val_loss: float
    val_top1: float
    val_top5: float
    val_images: int
    lr: dict[str, float]  # param group name -> LR at the end of the epoch
    trainable_params: int
    total_params: int
    groups_unfrozen: int
    groups_total: int
    epoch_seconds: float
    wall_seconds: float  # the whole epoch: training, validation, record and weights written
    images_per_sec: float
    bad_images: int  # training images that could not be decoded this epoch
    bad_val_images: int  # validation images left out of the metrics for the same reason
    skipped_steps: int
    # task: embed, leave-one-out over the validation identities (ranking.py); no val_top1/loss
    val_recall1: float | None
    val_recall5: float | None
    val_recall10: float | None
    val_map: float | None
    val_map_at_r: float | None
    val_threshold: float | None  # cosine distance keeping 95% of true matches (open-set use)
    val_identities: int
    train_distill_loss: float  # the soft (teacher) part of the loss, with a teacher
    event: str  # something that happened at the start of the epoch (unfreezing, start note)
    head_bypassed: bool  # epoch 0 measured the pretrained features, without the new embedding head


# The metrics of the best epoch that model.json keeps (the full record is in history.jsonl).
CARD_METRICS = card_metrics()


def write_history(run_dir: Path, records: list[EpochRecord]) -> None:
    write_text(run_dir / HISTORY, "".join(json.dumps(r) + "\n" for r in records))


def read_history(run_dir: Path) -> list[EpochRecord]:
    """The epoch records of history.jsonl ([] before the first epoch has ended).

    A torn last line (a crash while writing) and anything that is not an epoch record are
    skipped: a report or a resume never fails on them.
    """
    try:
        lines = (run_dir / HISTORY).read_text().splitlines()
    except OSError:
        return []
    records: list[EpochRecord] = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        epoch = item.get("epoch") if isinstance(item, dict) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            records.append(item)
    return records


# An epoch record as history.jsonl holds it, or as a report reads it (a plain dict).
_Record = TypeVar("_Record", bound=Mapping[str, Any])


def trained_epochs(records: Sequence[_Record]) -> list[_Record]:
    """Records of trained epochs (an `epochs: 0` stage has only its epoch-0 evaluation)."""
    return [r for r in records if int(r.get("epoch", 0)) >= 1]


@overload
def best_record(records: Sequence[EpochRecord], monitor: str = ...) -> EpochRecord: ...


@overload
def best_record(records: Sequence[dict[str, Any]], monitor: str = ...) -> dict[str, Any]: ...


def best_record(records: Sequence[Mapping[str, Any]], monitor: str = "val_top1") -> Mapping[str, Any]:
    """The epoch whose weights a stage kept as best (by `monitor`), or {} before any epoch."""
    # An epoch-0 record measures the starting weights, which stay best unless a trained epoch
    # beats them; one measured without its new embedding head is a reference only (no weights
    # file holds it), the best only of an untrained stage.
    candidates = [r for r in records if not r.get("head_bypassed")] if trained_epochs(records) else records
    scored = [r for r in candidates if is_finite(r.get(monitor))]
    if not scored:
        return {}
    # Ties go to the earliest epoch: the trainer saves weights on strict improvement only.
    sign = -1.0 if lower_is_better(monitor) else 1.0

    def rank(r: Mapping[str, Any]) -> tuple[float, int]:
        return sign * float(r[monitor]), -int(r.get("epoch", 0))

    return max(scored, key=rank)


def epoch_record(values: Mapping[str, Any]) -> EpochRecord:
    """An epoch record of measured values. A key the metric registry (metrics.py) lacks is a bug
    caught here: every consumer reads that table, so an unlisted metric would reach none."""
    unknown = sorted(set(values) - set(METRICS))
    if unknown:
        raise ValueError(f"epoch record keys missing from metrics.py's table: {', '.join(unknown)}")
    return cast(EpochRecord, dict(values))


# ---- model.json ----

@dataclass
class ModelCard:
    """model.json: everything needed to use the weights beside it without the training config."""

    architecture: str
    class_ids: list[str]
    preprocess: dict[str, Any]
    class_names: list[str] | None = None
    weights: str = BEST
    metrics: dict[str, Any] = field(default_factory=dict)
    strategy: str | None = None
    head: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    layout: str | None = None
    stage: str | None = None  # set on a pipeline's final model: the stage it came from
    teacher: dict[str, Any] | None = None  # a distilled model's teacher: source, sha256, val_top1
    head_layers: list[int] = field(default_factory=list)  # an MLP head's hidden sizes ([]: linear)
    head_activation: str = "relu"
    head_dropout: float = 0.0
    task: str = "classify"  # "embed": the weights map images to vectors; class_ids are the
    # training identities (the loss's class centres), not labels the model predicts
    embedding: dict[str, Any] = field(default_factory=dict)  # embed: EmbeddingSpec.as_dict()
    # Where the starting weights came from: "file: ...", "hf-cache: ...", "hub: ...", "handoff:
    # ...", "module: ..." (a network passed in) or "none: <why>" (random init)
    weights_from: str | None = None
    stagewise_version: str = __version__
    format: str = MODEL_FORMAT

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    @property
    def names(self) -> list[str]:
        return list(self.class_names or self.class_ids)

    def with_metrics(self, record: EpochRecord) -> ModelCard:
        """The same card carrying the kept metrics of `record` (the best epoch)."""
        values: Mapping[str, Any] = record
        kept = {k: values[k] for k in CARD_METRICS if k in values}
        return ModelCard(**{**asdict(self), "metrics": kept})

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["num_classes"] = self.num_classes
        return {k: v for k, v in data.items() if not (k in ("stage", "teacher") and v is None)}


_CARD_FIELDS = {f.name for f in fields(ModelCard)}
_CARD_REQUIRED = ("architecture", "class_ids", "preprocess")

# Bounds of model.json's numbers: what a real model has, with room; anything past them is a typo
# or a hostile file, refused before it sizes a network or an image transform. The sizes are the
# ones TrainConfig accepts for the same keys.
MAX_CLASSES = 1_000_000
MAX_HEAD_LAYERS = 16
MAX_HEAD_WIDTH = 65_536
IMAGE_SIZES = (16, 2048)
EMBEDDING_DIMS = (2, 8192)
MAX_CROP_PCT = 2.0

# What a key may hold, for the error message (pydantic's own names only the bound crossed).
_VALID = {
    "architecture": "a timm or torchvision model name (tv:NAME)",
    "class_ids": f"a list of 1 to {MAX_CLASSES:,} distinct class ids (strings)",
    "class_names": "a list of names, one per class id",
    "num_classes": "an integer, the length of class_ids",
    "preprocess.image_size": f"an integer from {IMAGE_SIZES[0]} to {IMAGE_SIZES[1]} (pixels)",
    "preprocess.mean": "3 numbers from 0 to 1",
    "preprocess.std": "3 numbers above 0, at most 1",
    "preprocess.crop_pct": f"a number above 0, at most {MAX_CROP_PCT} (timm's go up to 1.15)",
    "weights": "a file name inside the run folder, e.g. best.safetensors",
    "head_layers": f"a list of up to {MAX_HEAD_LAYERS} widths, each from 1 to {MAX_HEAD_WIDTH:,}",
    "head_dropout": "a number from 0 to below 1",
    "embedding.embedding_dim": f"an integer from {EMBEDDING_DIMS[0]} to {EMBEDDING_DIMS[1]}",
}


def _class_id(value: Any) -> Any:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise ValueError("a class id is a string")


ClassId = Annotated[str, BeforeValidator(_class_id), Field(max_length=1000)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveUnit = Annotated[float, Field(gt=0.0, le=1.0)]


class PreprocessSchema(BaseModel):
    """model.json's `preprocess` (resize and crop are derived from these, written for readers)."""

    model_config = ConfigDict(extra="allow")
    image_size: int = Field(ge=IMAGE_SIZES[0], le=IMAGE_SIZES[1])
    mean: tuple[Unit, Unit, Unit]
    std: tuple[PositiveUnit, PositiveUnit, PositiveUnit]
    interpolation: str = "bilinear"
    crop_pct: float = Field(0.875, gt=0.0, le=MAX_CROP_PCT)

    @field_validator("interpolation")
    @classmethod
    def _known_interpolation(cls, value: str) -> str:
        from .data.transforms import INTERPOLATIONS

        if value not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation; choose one of {', '.join(INTERPOLATIONS)}")
        return value


class EmbeddingSchema(BaseModel):
    """model.json's `embedding` (an embed run's EmbeddingSpec.as_dict())."""

    model_config = ConfigDict(extra="allow")
    embedding_dim: int | None = Field(None, ge=EMBEDDING_DIMS[0], le=EMBEDDING_DIMS[1])


class CardSchema(BaseModel):
    """model.json as read: every key ModelCard holds, typed and bounded. Unknown keys are ignored
    (a newer stagewise may add some); `num_classes` is derived, and checked when present."""

    model_config = ConfigDict(extra="ignore")
    architecture: str = Field(min_length=1, max_length=300)
    class_ids: list[ClassId] = Field(min_length=1, max_length=MAX_CLASSES)
    class_names: list[ClassId] | None = Field(None, max_length=MAX_CLASSES)
    num_classes: int | None = None
    preprocess: PreprocessSchema
    weights: str = Field(BEST, min_length=1, max_length=255)
    metrics: dict[str, Any] = Field(default_factory=dict)
    strategy: str | None = None
    head: dict[str, Any] = Field(default_factory=dict)
    data: str | None = None
    layout: str | None = None
    stage: str | None = None
    teacher: dict[str, Any] | None = None
    head_layers: list[Annotated[int, Field(ge=1, le=MAX_HEAD_WIDTH)]] = Field(
        default_factory=list, max_length=MAX_HEAD_LAYERS)
    head_activation: str = "relu"
    head_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    task: Literal["classify", "embed"] = "classify"
    embedding: EmbeddingSchema = Field(default_factory=EmbeddingSchema)
    weights_from: str | None = Field(None, max_length=2000)
    stagewise_version: str = ""
    format: str = MODEL_FORMAT

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        from .models.build import resolve_model_name

        resolve_model_name(value)  # raises ValueError naming close matches
        return value

    @field_validator("head_activation")
    @classmethod
    def _known_activation(cls, value: str) -> str:
        from .models.head import check_activation

        return check_activation(value)

    @field_validator("weights")
    @classmethod
    def _inside_the_folder(cls, value: str) -> str:
        # Weights are read from beside model.json only: a card cannot point a loader at a file
        # elsewhere (another run's weights, or any file the reader can open).
        posix, windows = PurePosixPath(value), PureWindowsPath(value)
        if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in windows.parts:
            raise ValueError("points outside the run folder (weights are read from beside model.json)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CardSchema:
        n = len(self.class_ids)
        if len(set(self.class_ids)) != n:
            raise ValueError("class_ids: the same class id is listed twice")
        if self.num_classes is not None and self.num_classes != n:
            raise ValueError(f"num_classes is {self.num_classes} but class_ids lists {n} classes")
        if self.class_names is not None and len(self.class_names) != n:
            raise ValueError(f"class_names has {len(self.class_names)} entries, class_ids {n}")
        return self


def card_problems(err: ValidationError, limit: int = 5) -> list[str]:
    """One line per problem: the key, what is wrong, the value given, and what is valid."""
    out = []
    for e in err.errors()[:limit]:
        key = ".".join(str(p) for p in e["loc"] if not isinstance(p, int))
        msg = str(e["msg"]).removeprefix("Value error, ")
        valid = _VALID.get(key)
        got = "" if e["type"] == "missing" or not key else f" (got {shown(e.get('input'), 80)})"
        out.append(f"{key or 'model.json'}: {msg}{got}" + (f"; valid: {valid}" if valid else ""))
    return out


def write_teacher(folder: Path, record: dict[str, Any]) -> None:
    write_json(folder / TEACHER, record)


def read_teacher(folder: Path) -> dict[str, Any] | None:
    """teacher.json of a distilled stage, or None (no teacher, or a run from before it was written)."""
    data = read_json(folder / TEACHER)
    return data if isinstance(data, dict) else None


def write_model_card(folder: Path, card: ModelCard) -> None:
    write_json(folder / MODEL_CARD, card.as_dict())


def read_model_card(path: Path) -> ModelCard:
    """model.json (a file, or the folder holding it), checked against `CardSchema`: it is an input
    a user may hand us, and its numbers size the network and the image transforms."""
    path = path / MODEL_CARD if path.is_dir() else path
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    fmt = str(meta.get("format", ""))
    if fmt and not fmt.startswith("stagewise.model/"):
        raise WeightsError(f"{path}: format '{fmt[:80]}' is not a stagewise model (stagewise.model/N)")
    missing = [k for k in _CARD_REQUIRED if k not in meta]
    if missing:
        raise WeightsError(f"{path}: missing key(s) {', '.join(missing)}; re-export the model "
                           "with a current stagewise")
    try:
        CardSchema.model_validate(meta)
    except ValidationError as err:
        raise WeightsError(f"{path}: " + "; ".join(card_problems(err)) + "; correct the value(s) "
                           "or re-export the model with a current stagewise") from None
    ids = [str(c) for c in meta["class_ids"]]
    names = meta.get("class_names")
    known = {k: v for k, v in meta.items() if k in _CARD_FIELDS}
    known.update(class_ids=ids, class_names=[str(n) for n in names] if names is not None else None)
    return ModelCard(**known)


def try_read_model_card(path: Path) -> ModelCard | None:
    """model.json for a report: None (with a log line) when it is missing or unusable."""
    target = path / MODEL_CARD if path.is_dir() else path
    if not target.is_file():
        return None
    try:
        return read_model_card(target)
    except WeightsError as exc:
        log.warning("report: %s", exc)
        return None


# ---- confusion.json ----

@dataclass
class Confusion:
    """The best epoch's confusion matrix: rows are the true class, columns the predicted one."""

    class_ids: list[str]
    epoch: int
    matrix: list[list[int]]


def write_confusion(run_dir: Path, confusion: Confusion) -> None:
    write_json(run_dir / CONFUSION, asdict(confusion))


def read_confusion(run_dir: Path) -> Confusion | None:
    data = read_json(run_dir / CONFUSION)
    if not isinstance(data, dict) or not isinstance(data.get("matrix"), list):
        return None
    m = data["matrix"]
    if not m or any(not isinstance(row, list) or len(row) != len(m) for row in m):
        return None
    ids = data.get("class_ids") or [str(i) for i in range(len(m))]
    return Confusion(class_ids=[str(c) for c in ids], epoch=int(data.get("epoch", 0)), matrix=m)


@dataclass
class HeldOutRecord:
    """test.json: the best weights measured once on the test split after the last epoch. Apart
    from the validation metrics on purpose: nothing chooses an epoch or a setting by it."""

    top1: float
    top5: float
    loss: float
    images: int
    per_class: dict[str, float]  # class id -> accuracy, for the classes the test split holds
    bad_images: int = 0
    epoch: int | None = None  # the epoch of the best weights that were measured


def write_test(run_dir: Path, record: HeldOutRecord) -> None:
    write_json(run_dir / TEST, asdict(record))


def read_test(run_dir: Path) -> HeldOutRecord | None:
    """test.json, or None when missing or not a record this version writes."""
    data = read_json(run_dir / TEST)
    if not isinstance(data, dict):
        return None
    try:
        return HeldOutRecord(**data)
    except TypeError:
        return None


# ---- val_predictions.safetensors ----

def write_val_predictions(run_dir: Path, index: Any, pred: Any, confidence: Any, weights: Path) -> None:
    """The validation pass of the weights in `weights` (just written): per val sample index, the
    predicted class and its softmax probability, so a report draws its grid without running the
    model again. The weights' sha256 ties them: a report uses them only for those weights."""
    from safetensors.torch import save_file

    tensors = {"index": index.long().contiguous(), "pred": pred.long().contiguous(),
               "confidence": confidence.float().contiguous()}
    meta = {"weights_sha256": file_sha256(weights)}
    write_with(run_dir / VAL_PREDICTIONS, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_val_predictions(run_dir: Path, weights: Path) -> dict[int, tuple[int, float]] | None:
    """{val sample index: (predicted class, confidence)} saved for exactly the weights in
    `weights`; None when there are none, or they belong to other weights."""
    from safetensors import safe_open

    path = run_dir / VAL_PREDICTIONS
    try:
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("weights_sha256") != file_sha256(weights):
                return None
            index, pred, conf = (f.get_tensor(k).tolist() for k in ("index", "pred", "confidence"))
    except (OSError, KeyError, ValueError, RuntimeError):  # missing or not ours: run the model
        return None
    return {int(i): (int(p), float(c)) for i, p, c in zip(index, pred, conf, strict=True)}


# ---- done.json ----

def write_done(run_dir: Path, stopped: str, best: Mapping[str, Any]) -> None:
    """The mark of a stage run that finished everything (its epochs, test split, report): why it
    stopped and its best record. Written last, so its presence means nothing is left to do."""
    write_json(run_dir / DONE, {"stopped": stopped, "best": dict(best)})


def read_done(run_dir: Path) -> dict[str, Any] | None:
    """done.json, or None when the run has not finished (or the file is not ours)."""
    data = read_json(run_dir / DONE)
    ok = isinstance(data, dict) and isinstance(data.get("stopped"), str) and isinstance(data.get("best"), dict)
    return data if ok else None


# ---- config.yaml ----

def write_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    write_text(run_dir / CONFIG, yaml.safe_dump(resolved, sort_keys=False))


def read_config(run_dir: Path) -> dict[str, Any]:
    """The saved config as plain data, for reports ({} when missing or unreadable). A run folder
    may come from someone else: it is parsed by the same guarded loader as any config file.
    A resume validates it apart (config.load_yaml + TrainConfig)."""
    try:
        data = parse_yaml((run_dir / CONFIG).read_bytes(), str(run_dir / CONFIG))
    except (OSError, ConfigError):
        return {}
    return data if isinstance(data, dict) else {}


def holds_run(folder: Path) -> bool:
    """Whether `folder` is a stage run folder (its config has been written)."""
    return (folder / CONFIG).is_file()


# Keys every resolved stage config has (TrainConfig.resolved): together, no other tool's config.
_STAGE_CONFIG_KEYS = frozenset({"data", "model", "strategy", "epochs", "image_size", "out",
                                "checkpoint_every", "monitor"})


def split_file(folder: Path) -> Path | None:
    """The split a run recorded (data.folder.load_split reads both formats), None without one."""
    for name in (SPLIT_ARRAYS, SPLIT):
        if (folder / name).is_file():
            return folder / name
    return None


def read_split(folder: Path) -> dict[str, Any]:
    """The recorded split as plain data, whichever format holds it: {"root", "class_ids",
    "splits": {name: [root-relative path, ...]}} (builds a string per file: for tools and tests,
    not for the training path)."""
    path = split_file(folder)
    if path is None:
        raise FileNotFoundError(f"{folder}: no {SPLIT_ARRAYS} or {SPLIT}")
    if path.suffix != ".npz":
        return json.loads(path.read_text())
    import numpy as np

    from .data.table import PathTable

    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        splits = {name: PathTable(meta["root"], z[f"{name}.blob"], z[f"{name}.offsets"]).strings()
                  for name in meta["splits"]}
    return {"root": meta["root"], "class_ids": meta["class_ids"], "splits": splits}


def proves_stage_run(folder: Path) -> bool:
    """Whether the files of `folder`, read, are a stage run's (not merely named like one): its
    config.yaml is a resolved stage config, or its split.npz (split.json) is a split that stagewise wrote.
    For folders whose lock file does not record their kind (lock.py)."""
    config = read_config(folder)
    if config.keys() >= _STAGE_CONFIG_KEYS:
        return True
    try:
        split = read_split(folder)
    except (OSError, ValueError, KeyError):
        return False
    return isinstance(split, dict) and isinstance(split.get("splits"), dict) and "class_ids" in split


def proves_pipeline_run(folder: Path) -> bool:
    """Whether `folder` holds a pipeline manifest that stagewise wrote (its format tag)."""
    manifest = _quiet_json(folder / MANIFEST)
    return isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT


def proves_compare_run(folder: Path) -> bool:
    """Whether `folder` holds a comparison: a cell folder with its marker (cells/NAME/cell.json)."""
    cells = folder / "cells"
    return cells.is_dir() and any(isinstance(_quiet_json(c / CELL_MARKER), dict)
                                  for c in cells.iterdir() if c.is_dir())


def _quiet_json(path: Path) -> Any:
    """The parsed file or None; silent, since the file may well be the user's own."""
    try:
        return json.loads(path.read_bytes()[:50_000_000])
    except (OSError, ValueError):
        return None


def holds_nothing_trained(folder: Path) -> bool:
    """Whether a run in `folder` stopped before it saved anything worth keeping: no checkpoint,
    no best weights, no trained epoch (say, NaN loss in its first epoch). Such a run may be
    started afresh, with other settings, instead of needing --resume."""
    return (holds_run(folder) and existing_dir(folder / LAST) is None
            and not (folder / BEST).exists() and not trained_epochs(read_history(folder)))


# ---- pipeline.json ----

class StageSummary(TypedDict, total=False):
    """What a finished stage (or its baseline) reached, as the manifest keeps it."""

    task: str
    score: str  # the metric the stage is scored by: its task's (kinds.Task.score)
    best_score: float | None  # that metric at the best epoch
    first_epoch_score: float | None
    best_val_top1: float | None  # classification stages (None for an embed stage)
    best_epoch: int | None
    test_top1: float | None  # the best weights on the test split, when the stage has one
    first_epoch_val_top1: float | None
    epochs_run: int
    seconds: float  # training steps only (epoch_seconds summed)
    wall_seconds: float  # the epochs' wall time summed: training, validation, writes
    best_wall_seconds: float | None  # wall time until the end of the best epoch
    stopped: str
    head: dict[str, Any]
    classes: int


class BaselineEntry(StageSummary, total=False):
    kind: str  # scratch | pretrained
    run_dir: str  # relative to the pipeline folder
    curve: list[float]  # the score (val top-1, or an embed stage's val mAP) per trained epoch


class Gain(TypedDict, total=False):
    """A stage against its baseline: the score's gain, and whether the handoff paid in time."""

    first_epoch: float | None
    best: float
    epochs_to_baseline_best: int | None
    seconds_to_baseline_best: float | None  # this stage's own training steps until then
    baseline_seconds: float | None
    baseline_s: float | None  # the baseline's wall time
    baseline_best_s: float | None  # the baseline's wall time until its best epoch
    # Wall time until this stage matched the baseline's best, counting the earlier stages whose
    # weights it started from; None when it never did.
    time_to_baseline_best_s: float | None
    pays: bool  # matched the baseline's best in less wall time than the baseline needed for it


def gain_verdict(gain: Mapping[str, Any]) -> str:
    """Whether a handoff paid, in words: the wall time to the baseline's best, the earlier stages
    it started from included, against the baseline's own."""
    to_best, base = gain.get("time_to_baseline_best_s"), gain.get("baseline_best_s")
    if not is_finite(base):
        return "no verdict (the baseline's time is unknown)"
    if not is_finite(to_best):
        return f"does not pay: never reached the baseline's best (baseline: {base:.0f}s)"
    word = "pays" if gain.get("pays") else "does not pay"
    return f"{word}: baseline's best in {to_best:.0f}s with earlier stages, baseline {base:.0f}s"


class StageEntry(StageSummary, total=False):
    status: str  # pending | running | done | skipped
    parent: str | None
    init: str
    started: float
    finished: float
    how: str  # where the stage's starting weights came from, in words
    baseline: BaselineEntry
    gain: Gain
    artifacts: dict[str, str]  # path relative to the pipeline folder -> sha256


class Manifest(TypedDict):
    format: str
    name: str
    pipeline: Any  # the resolved pipeline (variables substituted, overrides applied)
    overrides: list[str]  # the --set overrides it was started with (a resume reapplies them)
    order: list[str]
    stages: dict[str, StageEntry]


def write_manifest(out: Path, manifest: Manifest) -> None:
    write_json(out / MANIFEST, manifest)


def read_manifest(out: Path) -> Manifest | None:
    """pipeline.json, or None when there is none; ValueError when it is not a manifest."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise ValueError("not a pipeline manifest (no 'stages' mapping)")
    return data  # type: ignore[return-value]


def stage_dir(out: Path, name: str) -> Path:
    """A pipeline stage's run folder; `stage_dir(Path(), name)` is the path relative to `out`."""
    return out / STAGES / name


def baseline_dir(out: Path, name: str) -> Path:
    return out / BASELINES / name


def trial_dir(out: Path, number: int) -> Path:
    """A search trial's run folder (a stage or a pipeline run)."""
    return out / TRIALS / str(number)


def cell_dir(out: Path, name: str) -> Path:
    """A comparison cell's run folder; `cell_dir(Path(), name)` is the path relative to `out`."""
    return out / CELLS / name


# ---- comparison cells: cell.json ----

class CompareRow(TypedDict, total=False):
    """One line of a comparison table, from a cell's run folder."""

    cell: str
    model: str
    strategy: str
    optimizer: str | None
    scheduler: str | None
    layer_decay: float | None  # the cell's resolved layer_decay (an axis of the grid, or its default)
    group_lrs: str | None  # the label of the cell's group_lrs value (compare --group-lrs)
    task: str  # classify or embed
    val_map: float | None  # an embed cell's own validation identities
    train_top1: float | None
    val_top1: float | None
    val_top5: float | None
    best_epoch: int | None
    test_top1: float | None
    seconds: float  # wall time of the trained epochs (training, validation, feature extraction)
    trainable_params: int | None
    total_params: int | None
    trainable_pct: float | None
    size_mb: float | None
    images_per_sec: float | None
    epochs_run: int
    curve: list[list[Any]]  # [elapsed seconds, val top-1, epoch] per trained epoch
    # compare --retrieval-data: the best weights searching identities no cell trained on
    retrieval_map: float | None
    retrieval_recall1: float | None
    retrieval_map_at_r: float | None
    split: str | None  # fingerprint of the train/val split
    run_dir: str


class CellMarker(TypedDict):
    config: dict[str, Any]
    stopped: str
    row: CompareRow


def write_cell_marker(cell_dir: Path, marker: CellMarker) -> None:
    write_json(cell_dir / CELL_MARKER, marker)


def read_cell_marker(cell_dir: Path) -> CellMarker | None:
    data = read_json(cell_dir / CELL_MARKER)
    # JSON that write_cell_marker wrote: a dict with the row is taken as the marker it was.
    if isinstance(data, dict) and isinstance(data.get("row"), dict):
        return cast(CellMarker, data)
    return None


# ---- lr_find.json ----

@dataclass
class LRFindResult:
    """The LR range test: the LR and loss of every step, and the suggested LRs."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    steepest: float | None
    valley: float | None
    stopped: str  # "completed" | "diverged" | "non-finite loss"
    trainable_params: int | None = None  # what the sweep trained (the stage's first epoch)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


LR_FIND = "lr_find.json"


def write_lr_find(folder: Path, result: LRFindResult) -> None:
    write_json(folder / LR_FIND, result.as_dict())


# ---- outputs of the commands that use a run: never over the run's own files ----

# What a run folder holds that an output file must never replace: a written embeddings file or
# index sidecar named `model.json` makes the run unloadable; one named after its weights replaces
# them. (Sub-folders stages/, baselines/, cells/ are run folders themselves, checked as such.)
RUN_FILES = frozenset({CONFIG, SPLIT, SPLIT_ARRAYS, HISTORY, MODEL_CARD, CONFUSION, TEST, TEACHER, BEST, LAST,
                       f"{LAST}.old", MANIFEST, PIPELINE_HISTORY, FINAL, CELL_MARKER, LR_FIND,
                       "report.md", "report.html", WANDB_RUN})
_RUN_MARKERS = (MODEL_CARD, MANIFEST, CELL_MARKER)


def check_outputs(paths: list[Path], example: str) -> None:
    """Refuse output files that are folders or would replace a file of a run folder.

    The one guard of every command that writes beside a model (embed, index, evaluate, export):
    each file it will write is checked before any work starts, and again by the writer. `example`
    is a file name to suggest instead (the command's usual output name).
    """
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder; name the file to write, e.g. {path / example}")
        resolved = path.resolve()
        for folder in resolved.parents:
            if not _is_run_folder(folder):
                continue
            part = resolved.relative_to(folder).parts[0]
            if part in RUN_FILES or part == _card_weights(folder):
                raise ConfigError(f"{path}: would overwrite {folder / part}, a file of the run folder "
                                  f"{folder} (the run would no longer load); write elsewhere, e.g. "
                                  f"{folder / example}")


def _is_run_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _RUN_MARKERS) or (
        (folder / CONFIG).is_file() and (folder / HISTORY).is_file())


def _card_weights(folder: Path) -> str | None:
    """The first path part of the weights model.json names (tolerant: any value, or none)."""
    card = read_json(folder / MODEL_CARD) if (folder / MODEL_CARD).is_file() else None
    weights = card.get("weights") if isinstance(card, dict) else None
    return PurePosixPath(weights).parts[0] if isinstance(weights, str) and weights else None


# ---- tolerant reading ----

def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or torn (a report never fails on it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if path.exists():
            log.warning("could not read %s (%s)", path, exc)
        return None
