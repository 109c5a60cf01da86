"""The report of a run: RUN/report.html (self-contained), RUN/report.md and RUN/plots/*.png.

`write_report` is called by the trainer at the end of every stage, so it must never break a
run: each part of the report is drawn on its own, and a part that fails (a torn file, a data
folder that moved) becomes a note in the report instead of an exception.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from ..data import AugmentPlan, Preprocess, Samples
from ..io import write_text
from ..kinds import embeds
from ..runfolder import gain_verdict, read_val_predictions
from . import plots
from .document import (
    Block,
    Code,
    Document,
    Image,
    Section,
    Table,
    Text,
    fmt_count,
    fmt_pct,
    fmt_seconds,
    fmt_signed_pct,
)
from .gradcam import gradcam_top_losses, top_losses
from .history import ReportError, RunHistory, StageRun, baseline_top1, read_run
from .html import render_html
from .markdown import render_markdown
from .retrieval_report import is_embed, retrieval_curves, retrieval_examples
from .samples import (
    Predicted,
    augmentation_views,
    load_model,
    pick_examples,
    predict,
    preserved_rng,
    split_samples,
    spread,
    thumbnail,
)

log = logging.getLogger("stagewise")

MAX_PREDICTED = 256  # validation images run through the model for the sample grid


def write_report(run_dir: str | Path, *, predictions: bool = True) -> Path:
    """Write report.html, report.md and plots/ into `run_dir`; returns the report.html path.

    Works on a single-stage run folder and on a pipeline run folder, finished or not. Raises
    ReportError (a StagewiseError) only when `run_dir` is not a run folder at all.
    `predictions=False` skips loading the model (no sample-prediction grid).

    Example:
        >>> write_report("runs/pets")  # doctest: +SKIP
        PosixPath('runs/pets/report.html')
    """
    run_dir = Path(run_dir)
    history = read_run(run_dir)
    with preserved_rng():  # building a model for the predictions draws random initial weights
        doc = build_document(history, run_dir / "plots", predictions=predictions)
    write_text(run_dir / "report.md", render_markdown(doc, run_dir))
    html = run_dir / "report.html"
    write_text(html, render_html(doc))
    return html


def build_document(history: RunHistory, plot_dir: Path, predictions: bool = True) -> Document:
    """All sections of the report; the figures are written to `plot_dir` on the way."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    kind = "pipeline" if history.kind == "pipeline" else "training run"
    epochs = sum(s.epochs_run for s in history.stages)
    doc = Document(title=f"stagewise report: {history.name}",
                   subtitle=f"{kind} in {history.run_dir} · {len(history.stages)} stage(s), "
                            f"{epochs} epoch(s) recorded")
    parts: list[tuple[str, Callable[[], list[Block]]]] = [
        ("Summary", lambda: _summary(history)),
        ("Training curves", lambda: _curves(history, plot_dir)),
        ("Learning rate", lambda: _lr(history, plot_dir)),
    ]
    if any(is_embed(s) for s in history.stages):
        parts.append(("Retrieval", lambda: retrieval_curves(history, plot_dir)))
    for stage in history.stages:
        if is_embed(stage):  # identities never trained on: no confusion matrix, a search instead
            if predictions:
                parts.append((_titled("Retrieval examples", stage, history),
                              partial(retrieval_examples, stage, plot_dir, _slug(stage, history))))
            continue
        parts.append((_titled("Confusion matrix", stage, history),
                      partial(_confusion, stage, history, plot_dir)))
        parts.append((_titled("Per-class accuracy", stage, history),
                      partial(_per_class, stage, history, plot_dir)))
    if predictions and not embeds(history.final_info.get("task")):
        parts.append(("Sample predictions", lambda: _predictions(history, plot_dir)))
    parts.append(("Augmentation preview", lambda: _augmentation(history, plot_dir)))
    parts.append(("Configuration", lambda: _configs(history)))
    for title, make in parts:
        doc.sections.append(Section(title, _guarded(title, make)))
    return doc


def _guarded(title: str, make: Callable[[], list[Block]]) -> list[Block]:
    try:
        return make()
    except Exception as exc:  # a report of what exists beats no report: say what failed
        log.warning("report: %s could not be made: %s", title.lower(), exc)
        return [Text(f"{title} could not be made: {type(exc).__name__}: {exc}", note=True)]


def _titled(what: str, stage: StageRun, history: RunHistory) -> str:
    return f"{what}: {stage.name}" if history.kind == "pipeline" else what


def _slug(stage: StageRun, history: RunHistory) -> str:
    if history.kind != "pipeline":
        return ""
    return "-" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", stage.name) or "stage")


def _summary(history: RunHistory) -> list[Block]:
    columns = ["stage", "dataset", "classes", "image size", "strategy", "optimizer", "scheduler",
               "epochs", "best val top-1", "best val top-5", "best epoch", "time", "images/s",
               "trainable / total params", "transfer gain"]
    rows = [_summary_row(s) for s in history.stages]
    tests = [s.test_top1 for s in history.stages]
    if any(t is not None for t in tests):  # a column only where some stage has a test split
        at = columns.index("best val top-1") + 1
        columns.insert(at, "test top-1")
        for row, top1 in zip(rows, tests, strict=True):
            row.insert(at, fmt_pct(top1))
    blocks: list[Block] = [Table(columns, rows)]
    blocks += [Text(line) for s in history.stages if (line := _teacher_line(s))]
    if any(s.baseline for s in history.stages):
        blocks.append(_transfer_table(history))
    if not any(s.records for s in history.stages):
        blocks.append(Text("No epoch has finished yet; this report shows what exists so far.", note=True))
    return blocks


def _teacher_line(stage: StageRun) -> str:
    """What a distilled stage learned from, and that teacher's own val top-1 (its aim)."""
    teacher = stage.model_info.get("teacher")
    if not isinstance(teacher, dict):
        return ""
    return (f"Stage '{stage.name}' was distilled from {teacher.get('source')} "
            f"({teacher.get('architecture')}, {teacher.get('image_size')}px; its val top-1 "
            f"{fmt_pct(teacher.get('val_top1'))}).")


def _summary_row(stage: StageRun) -> list[str]:
    cfg, best, trained = stage.config, stage.best, stage.trained
    size = (stage.model_info.get("preprocess") or {}).get("image_size") or cfg.get("image_size")
    last = trained[-1] if trained else {}
    speeds = [r["images_per_sec"] for r in trained if isinstance(r.get("images_per_sec"), (int, float))]
    params = "-"
    if last.get("total_params"):
        share = last.get("trainable_params", 0) / last["total_params"]
        params = (f"{fmt_count(last.get('trainable_params'))} / {fmt_count(last['total_params'])} "
                  f"({fmt_pct(share, 0 if share >= 0.01 or share == 0 else 2)})")
    base = baseline_top1(stage.baseline)
    gain = fmt_signed_pct(best["val_top1"] - base) if base is not None and "val_top1" in best else "-"
    return [stage.name, Path(str(cfg.get("data", "-"))).name, str(len(stage.class_names) or "-"),
            f"{size}px" if size else "-", str(cfg.get("strategy") or "-"),
            str(cfg.get("optimizer", "-")), str(cfg.get("scheduler", "-")),
            f"{stage.epochs_run}/{cfg.get('epochs', '?')}", fmt_pct(best.get("val_top1")),
            fmt_pct(best.get("val_top5")), str(best.get("epoch", "-")),
            fmt_seconds(sum(r.get("epoch_seconds", 0.0) for r in trained)) if trained else "-",
            f"{sum(speeds) / len(speeds):.0f}" if speeds else "-", params, gain]


def _transfer_table(history: RunHistory) -> Table:
    """Each stage against its baseline run (same data and budget, other starting weights)."""
    rows = []
    for s in history.stages:
        if not s.baseline:
            continue
        gain, base = s.gain or {}, baseline_top1(s.baseline)
        best = s.best.get("val_top1")
        reached = gain.get("epochs_to_baseline_best")
        rows.append([s.name, str(s.baseline.get("kind", "-")), fmt_pct(base), fmt_pct(best),
                     fmt_signed_pct(best - base) if base is not None and best is not None else "-",
                     fmt_signed_pct(gain.get("first_epoch")),
                     f"epoch {reached}" if reached else "-" if "epochs_to_baseline_best" not in gain
                     else "not reached", gain_verdict(gain) if gain else "-"])
    return Table(["stage", "baseline", "baseline best top-1", "stage best top-1", "gain (best)",
                  "gain (first epoch)", "baseline's best reached at", "verdict (wall time)"], rows,
                 caption="Transfer gain: each stage against its baseline run (same data and budget, "
                         "other starting weights)")


def _curves(history: RunHistory, plot_dir: Path) -> list[Block]:
    path = plots.save_figure(plots.plot_curves(history), plot_dir / "curves.png")
    blocks: list[Block] = [Image(path, "Loss and accuracy per epoch. Solid vertical lines: stage "
                                       "boundaries; dotted purple lines: unfreeze events.")]
    # A marker at x sits half an epoch before the epoch it applies from.
    events = [[f"{x + 0.5:g}", f"stage '{name}' starts"] for x, name in history.boundaries]
    events += [[f"{x + 0.5:g}", f"{s.name}: {text}"] for s in history.stages for x, text in s.events]
    if events:
        events.sort(key=lambda row: float(row[0]))
        blocks.append(Table(["from epoch", "what"], events, caption="Markers on the curves"))
    return blocks


def _lr(history: RunHistory, plot_dir: Path) -> list[Block]:
    path = plots.save_figure(plots.plot_lr(history), plot_dir / "lr.png")
    return [Image(path, "Learning rate of each parameter group at the end of every epoch.")]


def _confusion(stage: StageRun, history: RunHistory, plot_dir: Path) -> list[Block]:
    if not stage.confusion:
        return [Text("No confusion matrix yet (written when the best epoch is saved).", note=True)]
    matrix, names = stage.confusion["matrix"], _names(stage)
    blocks: list[Block] = []
    epoch = stage.confusion.get("epoch")
    if len(matrix) <= plots.MAX_CONFUSION_CLASSES:
        fig = plots.plot_confusion(matrix, names, title=f"{stage.name}, epoch {epoch}")
        path = plots.save_figure(fig, plot_dir / f"confusion{_slug(stage, history)}.png")
        blocks.append(Image(path, f"Rows: true class, normalised to 1; best epoch ({epoch})."))
    else:
        blocks.append(Text(f"{len(matrix)} classes: too many for a readable matrix; the most "
                           "frequent confusions are listed instead."))
    pairs = plots.top_confused(matrix, names, k=15 if len(matrix) > plots.MAX_CONFUSION_CLASSES else 10)
    if pairs:
        rows = [[t, p, str(c), fmt_pct(r)] for t, p, c, r in pairs]
        blocks.append(Table(["true", "predicted as", "images", "share of true class"], rows,
                            caption="Most confused pairs"))
    return blocks


def _per_class(stage: StageRun, history: RunHistory, plot_dir: Path) -> list[Block]:
    if not stage.confusion:
        return [Text("No per-class accuracy yet.", note=True)]
    matrix, names = stage.confusion["matrix"], _names(stage)
    fig = plots.plot_per_class(matrix, names, title=f"{stage.name}: per-class accuracy")
    path = plots.save_figure(fig, plot_dir / f"per-class{_slug(stage, history)}.png")
    return [Image(path, "Validation accuracy of each class at the best epoch (from its confusion "
                        "matrix), worst first.")]


def _names(stage: StageRun) -> list[str]:
    n = len(stage.confusion["matrix"]) if stage.confusion else 0
    names = stage.class_names
    if len(names) != n and stage.confusion:
        names = [str(c) for c in stage.confusion.get("class_ids") or range(n)]
    return names if len(names) == n else [str(i) for i in range(n)]


def _predictions(history: RunHistory, plot_dir: Path) -> list[Block]:
    stage = next((s for s in reversed(history.stages) if s.weights is not None), None)
    if stage is None or history.final_weights is None:
        return [Text("No trained weights yet.", note=True)]
    samples, data_ids = split_samples(stage.config, stage.run_dir, "val")
    if data_ids != [str(c) for c in history.final_info.get("class_ids", [])]:
        raise ReportError(f"the classes of {stage.config.get('data')} are not the model's any more")
    shown = spread(len(samples), MAX_PREDICTED)
    preds = _saved_predictions(stage.run_dir, history.final_weights, samples, shown)
    loaded = None  # Grad-CAM of the top losses loads the model itself when the grid did not
    if preds is None:  # none saved with these weights (an older run, a copied model): run it
        loaded = load_model(history.final_weights)
        preds = predict(*loaded, samples, shown)
    names = [str(n) for n in history.final_info.get("class_names") or history.final_info["class_ids"]]
    tiles = [(thumbnail(samples, p.index),
              f"{'✓' if p.correct else '✗'} {_cut(names[p.pred])} {100 * p.confidence:.0f}%"
              + ("" if p.correct else f"\ntrue: {_cut(names[p.true])}"),
              "tab:green" if p.correct else "tab:red") for p in pick_examples(preds)]
    wrong = sum(not p.correct for p in preds)
    title = f"{history.final_info.get('architecture', 'model')} ({history.final_weights.name}): validation images"
    fig = plots.plot_image_grid(tiles, cols=8, title=title)
    path = plots.save_figure(fig, plot_dir / "predictions.png")
    return [Image(path, f"Most confident mistakes first (red), then correct predictions (green), "
                        f"with the model's confidence. {wrong} of {len(preds)} images checked "
                        "were misclassified."),
            *gradcam_top_losses(history.final_weights, samples, top_losses(preds), names, plot_dir,
                               loaded)]


def _saved_predictions(run_dir: Path, weights: Path, samples: Samples,
                       shown: list[int]) -> list[Predicted] | None:
    """The predictions the training's validation pass saved for exactly `weights`, for the
    `shown` images (a file that failed to decode has none, as `predict` skips it)."""
    saved = read_val_predictions(run_dir, weights)
    if saved is None or any(i >= len(samples) for i in saved):
        return None
    return [Predicted(i, samples.labels[i], *saved[i]) for i in shown if i in saved]


def _augmentation(history: RunHistory, plot_dir: Path) -> list[Block]:
    blocks: list[Block] = []
    seen: set[tuple[Any, ...]] = set()
    for stage in history.stages:
        cfg, info = stage.config, stage.model_info
        plan = AugmentPlan.from_mapping(cfg)
        key = (cfg.get("data"), str(plan), str(info.get("preprocess")))
        if not info.get("preprocess") or not cfg.get("data") or key in seen:
            continue
        seen.add(key)
        pre = Preprocess.from_dict(info["preprocess"])
        samples, _ = split_samples(cfg, stage.run_dir, "train")
        aug = plan.describe()
        rows = augmentation_views(samples, pre, plan, seed=int(cfg.get("seed", 0)))
        tiles = [(img, "evaluation view" if j == 0 else f"train view {j}", "black")
                 for row in rows for j, img in enumerate(row)]
        fig = plots.plot_image_grid(tiles, cols=len(rows[0]), title=f"{stage.name}: augmentation '{aug}'")
        path = plots.save_figure(fig, plot_dir / f"augmentation{_slug(stage, history)}.png")
        blocks.append(Image(path, f"{stage.name}: what the model sees at {pre.image_size}px: the "
                                  f"evaluation crop, then random training views ('{aug}')."))
    return blocks or [Text("No stage with a model and data yet.", note=True)]


def _configs(history: RunHistory) -> list[Block]:
    blocks: list[Block] = []
    for stage in history.stages:
        text = yaml.safe_dump(stage.config, sort_keys=False) if stage.config else "(no config.yaml)"
        blocks.append(Code(text, summary=f"config of {stage.name}", language="yaml"))
    return blocks


def _cut(text: str, width: int = 14) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
