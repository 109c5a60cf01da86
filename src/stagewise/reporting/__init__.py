"""Reports: what people look at after training. Read-only over run folders: nothing here trains.

`write_report(run_dir)` turns a run folder (one stage or a pipeline) into report.html,
report.md and plots/; `read_run` reads a run folder into one structure; `write_compare` renders
a comparison grid's table and plot.

Names are imported on first use: the CLI imports this package to add its commands, and should
not pay for matplotlib until a report is drawn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from .history import ReportError, RunHistory, StageRun, read_run
    from .report import build_document, write_report

_EXPORTS = {
    "ReportError": "history",
    "RunHistory": "history",
    "StageRun": "history",
    "read_run": "history",
    "build_document": "report",
    "write_report": "report",
}

__all__ = ["ReportError", "RunHistory", "StageRun", "build_document", "read_run", "write_report"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stagewise.reporting' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
