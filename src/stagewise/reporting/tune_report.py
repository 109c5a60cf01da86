"""The report of a search (`stagewise tune`): the objective per trial with the best so far, the
table of trials, parameter importance and the best config. Reads plain data (the rows of
trials.json); never imports Optuna.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io import write_text
from ..metrics import metric
from ..runfolder import TUNE_BEST, TUNE_PLOT
from .document import Code, Document, Image, Section, Table, Text, fmt_float, fmt_seconds
from .html import render_html
from .markdown import render_markdown
from .plots import new_figure, save_figure

# How each state is drawn: completed trials are the search's answers, pruned ones its savings.
_STYLE = {"complete": {"marker": "o", "color": "C0"}, "pruned": {"marker": "x", "color": "C3"}}


def best_so_far(rows: Sequence[dict[str, Any]], goal: str) -> list[tuple[int, float]]:
    """(trial number, best complete value up to it) along the trials in number order."""
    line: list[tuple[int, float]] = []
    best: float | None = None
    for r in rows:
        if r["state"] == "complete" and r["value"] is not None:
            v = float(r["value"])
            best = v if best is None else (max(best, v) if goal == "max" else min(best, v))
        if best is not None:
            line.append((r["number"], best))
    return line


def plot_trials(rows: Sequence[dict[str, Any]], monitor: str, goal: str) -> Figure:
    """The objective per trial (a pruned trial at its last reported value) and the best so far."""
    fig, axes = new_figure(7, 3.8)
    ax = axes[0][0]
    for state, style in _STYLE.items():
        pts = [(r["number"], r["value"] if state == "complete" else r["last_reported"])
               for r in rows if r["state"] == state]
        pts = [(n, v) for n, v in pts if v is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=state, s=28, **style)
    line = best_so_far(rows, goal)
    if line:
        ax.step([p[0] for p in line], [p[1] for p in line], where="post", color="C2", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric(monitor).label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_title(f"{metric(monitor).label} per trial ({'higher' if goal == 'max' else 'lower'} is better)")
    if line:
        ax.legend(fontsize=8)
    return fig


def trials_table(rows: Sequence[dict[str, Any]], space: dict[str, Any]) -> Table:
    """One line per trial that ran (dropped duplicates are counted under the table)."""
    keys = list(space)
    body = []
    for r in rows:
        if r.get("duplicate_of") is not None:
            continue
        value = r["value"] if r["state"] == "complete" else r["last_reported"]
        body.append([str(r["number"]), r["state"], fmt_float(value),
                     *(_cell(r["params"].get(k)) for k in keys), str(r["epochs_reported"]),
                     fmt_seconds(r["seconds"]), str(r.get("run_dir") or "-")])
    return Table(["trial", "state", "value", *keys, "epochs run", "time", "run folder"], body)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def tune_document(summary: dict[str, Any], plot: Path, out: Path) -> Document:
    rows, monitor = summary["trials"], summary["monitor"]
    counts = {s: sum(r["state"] == s for r in rows if r.get("duplicate_of") is None)
              for s in ("complete", "pruned", "fail", "running")}
    dropped = sum(r.get("duplicate_of") is not None for r in rows)
    doc = Document(title="stagewise tune", subtitle=f"study {summary['study']} · objective {monitor} "
                   f"({summary['goal']}) · " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    best = summary["best"]
    if best is not None:
        doc.sections.append(Section("Best trial", [
            Text(f"Trial {best['number']}: {metric(monitor).label} {fmt_float(best['value'])}; run folder "
                 f"{best['run_dir']}. Run its config again with `stagewise run {out / TUNE_BEST} --out RUN`."),
            Code(yaml.safe_dump(best["params"], sort_keys=False), "the best parameters", "yaml")]))
    blocks: list[Any] = [Image(plot, "Each trial's objective (pruned: its last reported epoch) and the "
                               "best complete value so far."), trials_table(rows, summary["space"])]
    if dropped:
        blocks.append(Text(f"{dropped} drawn parameter set(s) repeated a trial and were dropped before "
                           "training (each set runs once).", note=True))
    doc.sections.append(Section("Trials", blocks))
    scores = summary["importance"]
    doc.sections.append(Section("Parameter importance", [
        Table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in scores.items()],
              caption=summary["importance_note"]) if scores else Text(summary["importance_note"], note=True)]))
    doc.sections.append(Section("Search space", [Code(yaml.safe_dump(summary["space"], sort_keys=False),
                                                      "tune:", "yaml")]))
    return doc


def write_tune_report(out: Path, summary: dict[str, Any]) -> Path:
    """tune.png, report.md and report.html in the search folder; returns report.html."""
    plot = save_figure(plot_trials(summary["trials"], summary["monitor"], summary["goal"]), out / TUNE_PLOT)
    doc = tune_document(summary, plot, out)
    write_text(out / "report.md", render_markdown(doc, out))
    write_text(out / "report.html", render_html(doc))
    return out / "report.html"
