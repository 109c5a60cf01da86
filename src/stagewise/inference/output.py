"""Prediction results as a table for people, or JSON / CSV for scripts."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import choices
from .predict import FileResult

FORMATS = choices.OUTPUT_FORMATS


def result_row(result: FileResult) -> dict[str, Any]:
    """One file as plain data; an unreadable file has `error` set and no class."""
    pred = result.prediction
    if pred is None:
        return {"path": result.path, "label": None, "class_id": None, "name": None,
                "probability": None, "top_k": [], "error": result.error}
    top = [{"label": c.label, "class_id": c.class_id, "name": c.name, "probability": c.probability}
           for c in pred.top_k]
    return {"path": result.path, "label": pred.label, "class_id": pred.class_id, "name": pred.name,
            "probability": pred.probability, "top_k": top, "error": None}


def failures(results: list[FileResult]) -> int:
    return sum(r.prediction is None for r in results)


def to_json(results: list[FileResult], model: str) -> str:
    """A single JSON document: the model, counts and one row per input in input order."""
    return json.dumps({"model": model, "images": len(results), "failures": failures(results),
                       "predictions": [result_row(r) for r in results]}, indent=2)


def to_csv(results: list[FileResult], top_k: int) -> str:
    """One line per input; the runners-up of the top-k as numbered columns (class_id_2, ...)."""
    extra = [f"{key}_{rank}" for rank in range(2, top_k + 1)
             for key in ("class_id", "name", "probability")]
    header = ["path", "class_id", "name", "probability", *extra, "error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for r in results:
        row = result_row(r)
        line = {k: row[k] for k in ("path", "class_id", "name", "probability", "error")}
        for rank, cand in enumerate(row["top_k"][1:top_k], start=2):
            line.update({f"class_id_{rank}": cand["class_id"], f"name_{rank}": cand["name"],
                         f"probability_{rank}": cand["probability"]})
        writer.writerow(line)
    return buf.getvalue()


def print_table(results: list[FileResult], console: Any) -> None:
    """A rich table: file, best class and its probability, then the runners-up."""
    from rich.table import Table
    from rich.text import Text  # plain Text: file names may contain [brackets] rich reads as markup

    table = Table(show_edge=False, header_style="bold")
    for col in ("file", "class", "prob", "next"):
        table.add_column(col, overflow="fold")
    for r in results:
        if r.prediction is None:
            table.add_row(Text(r.path), Text("error", style="red"), "", Text(r.error or ""))
            continue
        p = r.prediction
        rest = ", ".join(f"{c.name} {c.probability:.3f}" for c in p.top_k[1:])
        table.add_row(Text(r.path), Text(p.name), f"{p.probability:.3f}", Text(rest))
    console.print(table)


@contextmanager
def progress_bar(total: int | None, label: str, enabled: bool) -> Iterator[Callable[..., None]]:
    """A transient rich bar on stderr (stdout stays machine-readable).

    Yields `update(done, total=None)`; `total` may arrive late (None: unknown so far).
    """
    if not enabled:
        yield lambda done, total=None: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task(label, total=total)
    with bar:
        yield lambda done, total=None: bar.update(task, completed=done, total=total)
