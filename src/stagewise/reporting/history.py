"""Read a run folder (one stage, or a pipeline of stages) into one normalised structure.

Every stage's epochs are placed on one global axis: a stage that starts after `offset` epochs of
earlier stages has its epoch k at global epoch offset + k. Markers sit between epochs: a stage
boundary at offset + 0.5, an unfreeze event of epoch k (applied at its start) at offset + k - 0.5.
Files may be missing or half written (an interrupted run): whatever can be read is returned.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from ..errors import StagewiseError
from ..metrics import is_finite
from ..runfolder import (
    CONFIG,
    HISTORY,
    MANIFEST,
    PIPELINE_HISTORY,
    STAGES,
    best_record,
    read_config,
    read_confusion,
    read_history,
    read_json,
    read_test,
    stage_dir,
    trained_epochs,
    try_read_model_card,
)

log = logging.getLogger("stagewise")


class ReportError(StagewiseError):
    """The folder is not a stagewise run, or a report cannot be made from it."""


@dataclass
class StageRun:
    """One stage's records and artifacts, placed on the run's global epoch axis."""

    name: str
    run_dir: Path
    records: list[dict[str, Any]]
    offset: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    confusion: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None  # the pipeline's baseline run of this stage
    gain: dict[str, Any] | None = None  # the pipeline's transfer gain against that baseline
    head: dict[str, Any] | None = None

    @property
    def epochs_run(self) -> int:
        return max((int(r.get("epoch", 0)) for r in self.records), default=0)

    @property
    def trained(self) -> list[dict[str, Any]]:
        """Records of trained epochs (an `epochs: 0` stage has only an evaluation record)."""
        return trained_epochs(self.records)

    @property
    def best(self) -> dict[str, Any]:
        """The record the stage kept as best (by its monitor), or {} before any epoch."""
        return best_record(self.records, self.config.get("monitor", "val_top1"))

    @property
    def class_names(self) -> list[str]:
        names = self.model_info.get("class_names") or self.model_info.get("class_ids")
        if not names and self.confusion:
            names = self.confusion.get("class_ids")
        return [str(n) for n in names or []]

    @property
    def test_top1(self) -> float | None:
        """The best weights' top-1 on the test split (test.json), when the stage had one."""
        record = read_test(self.run_dir)
        if record is not None:
            return record.top1
        value = (self.model_info.get("metrics") or {}).get("test_top1")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def weights(self) -> Path | None:
        path = self.run_dir / str(self.model_info.get("weights", "best.safetensors"))
        return path if path.is_file() else None

    @property
    def events(self) -> list[tuple[float, str]]:
        """(global x, text) of unfreeze and other events recorded in the history."""
        return [(self.offset + int(r["epoch"]) - 0.5, str(r["event"])) for r in self.records
                if r.get("event") and int(r.get("epoch", 0)) >= 1]

    def global_records(self) -> list[dict[str, Any]]:
        """Records with `global_epoch` and `stage`; `x` is where a plot puts them: an epoch-0
        record (the starting weights, before training) sits on the stage's start boundary."""
        out = []
        for r in self.records:
            epoch = int(r.get("epoch", 0))
            x = self.offset + epoch if epoch >= 1 else self.offset + 0.5
            out.append({**r, "global_epoch": self.offset + epoch, "stage": self.name, "x": x})
        return out


@dataclass
class RunHistory:
    """A whole run: its stages in order and the model it ended with."""

    run_dir: Path
    kind: Literal["stage", "pipeline"]
    name: str
    stages: list[StageRun]
    final_info: dict[str, Any] = field(default_factory=dict)
    final_weights: Path | None = None

    @property
    def epochs(self) -> list[dict[str, Any]]:
        return [r for s in self.stages for r in s.global_records()]

    @property
    def boundaries(self) -> list[tuple[float, str]]:
        """(global x, name of the stage starting there) for every stage after the first."""
        return [(s.offset + 0.5, s.name) for s in self.stages[1:]]


def read_run(run_dir: str | Path) -> RunHistory:
    """Read a single-stage run folder or a pipeline run folder.

    Raises ReportError only when `run_dir` is not a run folder at all; partial runs are read
    as far as they go.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run folder not found: {run_dir}")
    if (run_dir / PIPELINE_HISTORY).is_file() or (run_dir / MANIFEST).is_file() \
            or (run_dir / STAGES).is_dir():
        return _read_pipeline(run_dir)
    if (run_dir / CONFIG).is_file() or (run_dir / HISTORY).is_file():
        stage = read_stage(run_dir, run_dir.name)
        return RunHistory(run_dir=run_dir, kind="stage", name=run_dir.name, stages=[stage],
                          final_info=stage.model_info, final_weights=stage.weights)
    raise ReportError(
        f"{run_dir}: not a stagewise run folder (no config.yaml, history.jsonl, history.json or "
        "stages/); pass the --out folder of `stagewise train` or `stagewise run`"
    )


def read_stage(run_dir: Path, name: str, offset: int = 0) -> StageRun:
    """One stage folder: config.yaml, history.jsonl, model.json, confusion.json."""
    card = try_read_model_card(run_dir)
    confusion = read_confusion(run_dir)
    # Epoch records are plain dicts: the report reads them by any key, as it does the pipeline's copy.
    records = cast(list[dict[str, Any]], list(read_history(run_dir)))
    return StageRun(name=name, run_dir=run_dir, records=records,
                    offset=offset, config=read_config(run_dir),
                    model_info=card.as_dict() if card else {},
                    confusion=asdict(confusion) if confusion else None)


def _read_pipeline(run_dir: Path) -> RunHistory:
    summary = _as_dict(read_json(run_dir / PIPELINE_HISTORY))
    manifest = _as_dict(read_json(run_dir / MANIFEST))
    listed = [s for s in _as_list(summary.get("stages")) if isinstance(s, dict) and s.get("name")]
    stages: list[StageRun] = []
    offset = 0
    for entry in listed:
        folder = _stage_dir(run_dir, str(entry["name"]), entry.get("run_dir"))
        if isinstance(entry.get("first_epoch"), int):
            offset = max(0, entry["first_epoch"] - 1)
        stage = read_stage(folder, str(entry["name"]), offset)
        if not stage.records:  # the stage folder is gone or unreadable: use the pipeline's copy
            stage.records = [_strip(r) for r in summary.get("epochs", []) if isinstance(r, dict)
                             and r.get("stage") == stage.name and isinstance(r.get("epoch"), int)]
        stage.baseline, stage.gain, stage.head = (
            entry.get(k) if isinstance(entry.get(k), dict) else None for k in ("baseline", "gain", "head"))
        stage.config = stage.config or {"strategy": entry.get("strategy")}
        stages.append(stage)
        offset += stage.epochs_run
    known = {s.name for s in stages}
    for folder in _unlisted_stage_dirs(run_dir, manifest, known):
        stage = read_stage(folder, folder.name, offset)
        stages.append(stage)
        offset += stage.epochs_run
    card = try_read_model_card(run_dir)
    final_info = card.as_dict() if card else {}
    final = run_dir / str(final_info.get("weights", "final.safetensors"))
    final_weights: Path | None = final
    if not final.is_file():  # not finished yet: the last stage with weights stands in
        last = next((s for s in reversed(stages) if s.weights is not None), None)
        final_info = last.model_info if last else {}
        final_weights = last.weights if last else None
    name = str(manifest.get("name") or run_dir.name)
    return RunHistory(run_dir=run_dir, kind="pipeline", name=name, stages=stages,
                      final_info=final_info, final_weights=final_weights)


def _stage_dir(run_dir: Path, name: str, given: Any) -> Path:
    if given:
        p = Path(str(given))
        for candidate in (p, run_dir / p):
            if candidate.is_dir():
                return candidate
    return stage_dir(run_dir, name)


def _unlisted_stage_dirs(run_dir: Path, manifest: dict[str, Any], known: set[str]) -> list[Path]:
    """Stage folders not yet in history.json (the running stage), in the pipeline's order."""
    root = run_dir / STAGES
    if not root.is_dir():
        return []
    found = {p.name: p for p in root.iterdir() if p.is_dir() and p.name not in known
             and ((p / CONFIG).is_file() or (p / HISTORY).is_file())}
    stages = manifest.get("stages")
    # pipeline.json names the stage order, else its stages mapping or list gives it
    planned = _as_list(manifest.get("order")) or (list(stages) if isinstance(stages, dict) else
                                                  [s.get("name") if isinstance(s, dict) else s
                                                   for s in _as_list(stages)])
    order = [n for n in planned if n in found]
    rest = sorted((n for n in found if n not in order), key=lambda n: _mtime(found[n]))
    return [found[n] for n in order + rest]


def _mtime(folder: Path) -> float:
    cfg = folder / CONFIG
    return cfg.stat().st_mtime if cfg.is_file() else folder.stat().st_mtime


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("global_epoch", "stage")}


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def baseline_top1(baseline: dict[str, Any] | None) -> float | None:
    """The best val top-1 of a stage's baseline, as the pipeline manifest records it."""
    value: Any = (baseline or {}).get("best_val_top1")  # a JSON value, a number when recorded
    return float(value) if is_finite(value) else None
