"""The one schema of a run folder: every plain-data file a run writes, its record type, its one
writer and its one reader.

A stage run folder holds config.yaml, split.json, history.jsonl (EpochRecord per line),
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
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypedDict

import yaml

from ._version import __version__
from .config import parse_yaml
from .errors import ConfigError, WeightsError
from .io import existing_dir, write_json, write_text

log = logging.getLogger("stagewise")

CONFIG = "config.yaml"
SPLIT = "split.json"
HISTORY = "history.jsonl"
MODEL_CARD = "model.json"
CONFUSION = "confusion.json"
TEST = "test.json"
TEACHER = "teacher.json"  # a distilled stage's teacher (Teacher.record): what a resume checks
BEST = "best.safetensors"
LAST = "last"
MANIFEST = "pipeline.json"
PIPELINE_HISTORY = "history.json"
FINAL = "final.safetensors"
CELL_MARKER = "cell.json"

MODEL_FORMAT = "stagewise.model/1"
MANIFEST_FORMAT = "stagewise.pipeline/1"


# ---- epoch records: history.jsonl ----

class EpochRecord(TypedDict, total=False):
    """One line of history.jsonl. Epoch 0 (optional) measures the starting weights."""

    epoch: int
    global_step: int
    image_size: int  # of the training images this epoch (progressive_resize); val is at full size
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


# The metrics of the best epoch that model.json keeps (the full record is in history.jsonl).
CARD_METRICS = ("epoch", "val_top1", "val_top5", "val_loss", "train_top1", "train_loss",
                "val_recall1", "val_recall5", "val_recall10", "val_map", "val_map_at_r", "val_threshold")


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


def trained_epochs(records: list[EpochRecord]) -> list[EpochRecord]:
    """Records of trained epochs (an `epochs: 0` stage has only its epoch-0 evaluation)."""
    return [r for r in records if int(r.get("epoch", 0)) >= 1]


def best_record(records: list[EpochRecord], monitor: str = "val_top1") -> EpochRecord:
    """The epoch whose weights a stage kept as best (by `monitor`), or {} before any epoch."""
    # An epoch-0 record measures the starting weights; it is the best only of an untrained stage.
    scored = [r for r in (trained_epochs(records) or records) if is_finite(r.get(monitor))]
    if not scored:
        return {}
    # Ties go to the earliest epoch: the trainer saves weights on strict improvement only.
    if monitor == "val_loss":
        return min(scored, key=lambda r: (r[monitor], int(r.get("epoch", 0))))
    return max(scored, key=lambda r: (r[monitor], -int(r.get("epoch", 0))))


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
        kept = {k: record[k] for k in CARD_METRICS if k in record}  # type: ignore[literal-required]
        return ModelCard(**{**asdict(self), "metrics": kept})

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["num_classes"] = self.num_classes
        return {k: v for k, v in data.items() if not (k in ("stage", "teacher") and v is None)}


_CARD_FIELDS = {f.name for f in fields(ModelCard)}
_CARD_REQUIRED = ("architecture", "class_ids", "preprocess")


def write_teacher(folder: Path, record: dict[str, Any]) -> None:
    write_json(folder / TEACHER, record)


def read_teacher(folder: Path) -> dict[str, Any] | None:
    """teacher.json of a distilled stage, or None (no teacher, or a run from before it was written)."""
    data = read_json(folder / TEACHER)
    return data if isinstance(data, dict) else None


def write_model_card(folder: Path, card: ModelCard) -> None:
    write_json(folder / MODEL_CARD, card.as_dict())


def read_model_card(path: Path) -> ModelCard:
    """model.json (a file, or the folder holding it), checked: it is an input a user may hand us."""
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
    ids = [str(c) for c in meta["class_ids"]]
    if "num_classes" in meta and len(ids) != int(meta["num_classes"]):
        raise WeightsError(f"{path}: num_classes is {meta['num_classes']} but class_ids lists "
                           f"{len(ids)} classes")
    names = meta.get("class_names")
    if names is not None and len(names) != len(ids):
        raise WeightsError(f"{path}: class_names has {len(names)} entries, class_ids {len(ids)}")
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


def proves_stage_run(folder: Path) -> bool:
    """Whether the files of `folder`, read, are a stage run's (not merely named like one): its
    config.yaml is a resolved stage config, or its split.json is a split that stagewise wrote.
    For folders whose lock file does not record their kind (lock.py)."""
    config = read_config(folder)
    if config.keys() >= _STAGE_CONFIG_KEYS:
        return True
    split = _quiet_json(folder / SPLIT)
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

    best_val_top1: float | None
    best_epoch: int | None
    test_top1: float | None  # the best weights on the test split, when the stage has one
    first_epoch_val_top1: float | None
    epochs_run: int
    seconds: float
    stopped: str
    head: dict[str, Any]
    classes: int


class BaselineEntry(StageSummary, total=False):
    kind: str  # scratch | pretrained
    run_dir: str  # relative to the pipeline folder
    curve: list[float]  # val top-1 per trained epoch


class Gain(TypedDict, total=False):
    first_epoch: float | None
    best: float
    epochs_to_baseline_best: int | None
    seconds_to_baseline_best: float | None
    baseline_seconds: float | None


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
    return out / "stages" / name


def baseline_dir(out: Path, name: str) -> Path:
    return out / "baselines" / name


# ---- comparison cells: cell.json ----

class CompareRow(TypedDict, total=False):
    """One line of a comparison table, from a cell's run folder."""

    cell: str
    model: str
    strategy: str
    optimizer: str | None
    scheduler: str | None
    task: str  # classify or embed
    val_map: float | None  # an embed cell's own validation identities
    train_top1: float | None
    val_top1: float | None
    val_top5: float | None
    best_epoch: int | None
    test_top1: float | None
    seconds: float
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
    return data if isinstance(data, dict) and isinstance(data.get("row"), dict) else None


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


# ---- tolerant reading ----

def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or torn (a report never fails on it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if path.exists():
            log.warning("could not read %s (%s)", path, exc)
        return None
