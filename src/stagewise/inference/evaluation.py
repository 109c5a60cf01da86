"""Measure a trained model on a labelled dataset: accuracy, per-class scores, confusion, calibration.

Dataset classes are matched to the model's by class id, never by folder order, so a dataset may
hold a subset of the model's classes in any order; a class the model does not know is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import ImageDataset, Samples, load_dataset, make_loader
from ..data.folder import split_dirs
from ..errors import ConfigError, DataError
from ..io import write_json, write_text
from ..runfolder import check_outputs
from ..scoring import ClassScores, class_metrics
from . import choices
from .classifier import Classifier
from .ensemble import Ensemble
from .interpret import TOP_LOSSES, draw_top_losses, most_confused, thumbnail, top_losses
from .views import parse_tta

SPLITS = choices.SPLITS
EVAL_FILE = "eval.json"  # suggested when --out is refused
ECE_BINS = 15
MAX_MARKDOWN_CLASSES = 20  # larger confusion matrices stay in the JSON only


@dataclass
class Evaluation:
    """Scores over one split. Per-class rows and the confusion matrix cover only the classes that
    occur in the split or were predicted (`class_ids` of the matrix names its rows and columns)."""

    model: str
    data: str
    split: str
    images: int
    top1: float
    top5: float
    loss: float
    ece: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: list[dict[str, Any]]
    confusion: dict[str, Any]
    bad_images: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tta: str | None = None
    members: list[dict[str, Any]] = field(default_factory=list)  # an ensemble's models, top-1 each
    most_confused: list[dict[str, Any]] = field(default_factory=list)
    top_losses: list[dict[str, Any]] = field(default_factory=list)
    # Small RGB copies of the top-loss images, for the grid; kept out of the JSON.
    thumbnails: list[np.ndarray] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("thumbnails")
        return out

    def write(self, out: Path) -> tuple[Path, Path]:
        """JSON to `out`, the markdown report beside it (same name, .md)."""
        out, report = output_paths(out)
        check_outputs([out, report, top_losses_path(out)], EVAL_FILE)
        write_json(out, self.as_dict())
        write_text(report, self.markdown())
        if self.thumbnails:
            draw_top_losses(self.top_losses, self.thumbnails, top_losses_path(out))
        return out, report

    def markdown(self) -> str:
        lines = [f"# Evaluation: {self.split} split of {self.data}", "", f"Model: `{self.model}`", "",
                 f"- images: {self.images} ({len(self.bad_images)} unreadable, skipped)",
                 f"- top-1: {self.top1:.4f}", f"- top-5: {self.top5:.4f}",
                 f"- loss: {self.loss:.4f}",
                 f"- expected calibration error ({ECE_BINS} bins): {self.ece:.4f}",
                 f"- macro precision / recall / F1: {self.macro_precision:.4f} / "
                 f"{self.macro_recall:.4f} / {self.macro_f1:.4f}",
                 *[f"- note: {n}" for n in self.notes], *self._interpretation(), "",
                 "| class | name | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['class_id']} | {r['name']} | {r['precision']:.4f} | {r['recall']:.4f} | "
                  f"{r['f1']:.4f} | {r['support']} |" for r in self.per_class]
        ids, matrix = self.confusion["class_ids"], self.confusion["matrix"]
        if len(ids) <= MAX_MARKDOWN_CLASSES:
            lines += ["", "Confusion matrix (rows: true class, columns: predicted)", "",
                      "| true \\ predicted | " + " | ".join(ids) + " |",
                      "|---" * (len(ids) + 1) + "|"]
            lines += [f"| {cid} | " + " | ".join(str(v) for v in row) + " |"
                      for cid, row in zip(ids, matrix, strict=True)]
        return "\n".join(lines) + "\n"


    def _interpretation(self) -> list[str]:
        """Markdown lines for the ensemble's members, the most-confused pairs and top losses."""
        lines = ["", "| model | top-1 |", "|---|---|"] if self.members else []
        lines += [f"| {m['model']} | {m['top1']:.4f} |" for m in self.members]
        lines += [f"| ensemble (mean probability) | {self.top1:.4f} |"] if self.members else []
        if self.most_confused:
            lines += ["", "Most confused (true -> predicted: count)", ""]
            lines += [f"- {c['true']} -> {c['predicted']}: {c['count']}" for c in self.most_confused]
        if self.top_losses:
            lines += ["", "Top losses", "", "| image | true | predicted | p(true) | loss |",
                      "|---|---|---|---|---|"]
            lines += [f"| {t['source']} | {t['true']} | {t['predicted']} | {t['p_true']:.3f} | "
                      f"{t['loss']:.3f} |" for t in self.top_losses]
        return lines


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """The JSON and markdown report an evaluation writes for `out` (`RetrievalEvaluation` too)."""
    out = Path(out)
    if out.suffix == ".md":
        raise ConfigError(f"{out}: the markdown report goes beside the JSON as NAME.md; name the "
                          f"JSON file, e.g. {out.with_suffix('.json')}")
    return out, out.with_suffix(".md")


def top_losses_path(out: Path) -> Path:
    """Where `write(out)` puts the top-losses grid: beside the JSON."""
    return Path(out).with_name(Path(out).stem + "-top-losses.png")


def match_classes(data_ids: list[str], model_ids: list[str], where: str) -> list[int]:
    """For each dataset class, the model's row with the same id; unknown ids are an error."""
    row = {cid: i for i, cid in enumerate(model_ids)}
    unknown = [cid for cid in data_ids if cid not in row]
    if unknown:
        shown = ", ".join(unknown[:20]) + (f" (+{len(unknown) - 20} more)" if len(unknown) > 20 else "")
        known = ", ".join(model_ids[:10]) + (", ..." if len(model_ids) > 10 else "")
        raise DataError(f"{where}: {len(unknown)} class(es) the model does not know: {shown}. "
                        f"The model predicts: {known}. Remove those folders or evaluate a model "
                        "trained on them")
    return [row[cid] for cid in data_ids]


def split_samples(data: Path, split: str, model_ids: list[str]) -> tuple[Samples, list[str]]:
    """The split's samples with labels as rows of the model's classifier, and notes for the user."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    index = load_dataset(Path(data))
    notes = []
    if index.layout == "folder" and not split_dirs(index.root) and split != "all":
        notes.append(f"{index.root} has no train/val folders, so '{split}' is a held-out fraction "
                     "chosen by seed 0; use split 'all' to evaluate every image")
    if split == "all":
        parts = list(index.splits.values())
        arrays = [s.arrays for s in parts if s.arrays is not None]  # CIFAR: decoded, no paths
        samples = Samples(labels=[lab for s in parts for lab in s.labels],
                          paths=None if arrays else [p for s in parts for p in (s.paths or [])],
                          arrays=np.concatenate(arrays) if arrays else None)
    elif split in index.splits:
        samples = index.splits[split]
    else:
        raise DataError(f"{index.root}: no '{split}' split; found {', '.join(index.splits)}")
    if len(samples) == 0:
        raise DataError(f"{index.root}: no usable images in the '{split}' split")
    rows = match_classes(index.class_ids, model_ids, str(index.root))
    mapped = Samples(labels=[rows[lab] for lab in samples.labels], paths=samples.paths,
                     arrays=samples.arrays)
    if index.skipped:
        notes.append(f"{len(index.skipped)} unreadable file(s) were left out while indexing, "
                     f"e.g. {index.skipped[0]}")
    return mapped, notes


def _metrics(num_classes: int) -> Any:
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassCalibrationError,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    c = num_classes
    return MetricCollection({
        **class_metrics(c),  # top1, top5, confusion: the same objects training scores with
        "precision": MulticlassPrecision(c, average=None),
        "recall": MulticlassRecall(c, average=None),
        "f1": MulticlassF1Score(c, average=None),
        "ece": MulticlassCalibrationError(c, n_bins=ECE_BINS, norm="l1"),
    }, compute_groups=False)


class _Tally:
    """What the metrics object does not keep: each image's loss and outcome (for the top losses)
    and each ensemble member's own top-1."""

    def __init__(self, members: int, num_classes: int) -> None:
        self.members = [ClassScores(num_classes, torch.device("cpu"), top5=False, confusion=False)
                        for _ in range(members)]
        self.losses: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []

    def add(self, clf: Classifier | Ensemble, images: torch.Tensor, labels: torch.Tensor,
            tta: str | None, positions: list[int]) -> torch.Tensor:
        """Probabilities of one batch (the mean over members for an ensemble), recorded."""
        per_member = clf.member_probabilities(images, tta) if isinstance(clf, Ensemble) else []
        probs = torch.stack(per_member).mean(dim=0) if per_member else clf.probabilities(images, tta)
        for k, p in enumerate(per_member):
            self.members[k].update(p, labels)
        # Cross-entropy of the (averaged) probabilities; the clamp keeps a certain mistake finite.
        self.losses.append(-probs.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-12).log())
        self.labels.append(labels)
        self.probs.append(probs)
        self.positions.append(torch.tensor(positions, dtype=torch.long))
        return probs

    def top_losses(self, class_ids: list[str], k: int = TOP_LOSSES) -> list[dict[str, Any]]:
        return top_losses(torch.cat(self.losses), torch.cat(self.labels), torch.cat(self.probs),
                          torch.cat(self.positions), class_ids, k)


def _good_positions(samples: Samples, start: int, labels: int, bad: list[str]) -> list[int]:
    """Positions in the split of a batch's decoded images: the ordered loader covers
    `start .. start + labels + len(bad)`, less the unreadable ones it names."""
    if not bad:
        return list(range(start, start + labels))
    skipped = set(bad)
    return [j for j in range(start, start + labels + len(bad)) if samples.describe(j) not in skipped]


def evaluate(
    clf: Classifier | Ensemble,
    data: str | Path,
    split: str = "val",
    batch_size: int = 32,
    num_workers: int | None = None,
    tta: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score `clf` (a model or an Ensemble) on the `split` of the dataset at `data`;
    `on_progress(done, total)` per batch.

    Example:
        >>> ev = evaluate(stagewise.load("runs/pets"), "data/pets", split="test")  # doctest: +SKIP
        >>> ev.top1, ev.ece, ev.most_confused[:3]  # doctest: +SKIP
    """
    parse_tta(tta)  # a bad value fails before any image is decoded
    if isinstance(clf, Classifier):  # an Ensemble refused embed members when it was made
        clf.require_classes("evaluate")
    samples, notes = split_samples(Path(data), split, clf.class_ids)
    dataset = ImageDataset(samples, clf.input_transform(tta), seeded=False)
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0, num_workers=num_workers,
                         pin_memory=clf.device.type == "cuda")
    metrics = _metrics(clf.num_classes)
    tally = _Tally(len(clf.members) if isinstance(clf, Ensemble) else 0, clf.num_classes)
    position, bad = 0, []
    for batch in loader:
        bad += batch.bad
        n = batch.labels.shape[0]
        if n:
            probs = tally.add(clf, batch.images, batch.labels, tta,
                              _good_positions(samples, position, n, batch.bad))
            metrics.update(probs, batch.labels)
        position += n + len(batch.bad)
        if on_progress is not None:
            on_progress(position, len(samples))
    if position == len(bad):
        raise DataError(f"{data}: none of the {len(samples)} images of the '{split}' split could be "
                        f"read, e.g. {bad[0] if bad else '-'}")
    result = _summarise(clf, metrics.compute(), tally, str(data), split, bad, notes)
    result.tta = tta
    _add_top_losses(result, tally, dataset, clf.class_ids)
    return result


def _add_top_losses(result: Evaluation, tally: _Tally, dataset: ImageDataset, class_ids: list[str]) -> None:
    """The top losses with their sources and thumbnails (decoded again: only a few images)."""
    result.top_losses = tally.top_losses(class_ids)
    for item in result.top_losses:
        item["source"] = dataset.samples.describe(item["position"])
        result.thumbnails.append(thumbnail(dataset.image(item["position"])))


def _summarise(clf: Classifier | Ensemble, m: dict[str, torch.Tensor], tally: _Tally, data: str,
               split: str, bad: list[str], notes: list[str]) -> Evaluation:
    losses = torch.cat(tally.losses)
    seen = losses.numel()
    confusion = m["confusion"].long()
    support, predicted = confusion.sum(dim=1), confusion.sum(dim=0)
    involved = [i for i in range(clf.num_classes) if support[i] > 0 or predicted[i] > 0]
    per_class: list[dict[str, Any]] = [{"label": i, "class_id": clf.class_ids[i], "name": clf.class_names[i],
                  "precision": float(m["precision"][i]), "recall": float(m["recall"][i]),
                  "f1": float(m["f1"][i]), "support": int(support[i]), "predicted": int(predicted[i])}
                 for i in involved]
    # Macro averages over the classes present in the split: a model may know many more classes.
    present = [r for r in per_class if r["support"] > 0]

    def macro(key: str) -> float:
        return sum(r[key] for r in present) / len(present)

    sub = confusion[involved][:, involved]
    ids = [clf.class_ids[i] for i in involved]
    members = [{"model": src, "top1": scores.compute().top1}
               for src, scores in zip(getattr(clf, "sources", []), tally.members, strict=False)]
    return Evaluation(
        model=", ".join(clf.sources) if isinstance(clf, Ensemble) else str(clf.source or "in memory"),
        data=data, split=split, images=seen, members=members,
        most_confused=most_confused(sub.tolist(), ids),
        top1=float(m["top1"]), top5=float(m["top5"]), loss=float(losses.sum()) / seen, ece=float(m["ece"]),
        macro_precision=macro("precision"), macro_recall=macro("recall"), macro_f1=macro("f1"),
        per_class=per_class,
        confusion={"class_ids": ids, "matrix": sub.tolist()},
        bad_images=bad, notes=notes,
    )
