"""Reports and comparisons: what people look at after training.

`write_report(run_dir)` turns a run folder (one stage or a pipeline) into report.html,
report.md and plots/; `compare(...)` trains a grid of models x strategies and tabulates it;
`lr_find(...)` runs the learning-rate range test; `trackers` logs epochs to TensorBoard/MLflow.

Names are imported on first use: the CLI imports this package to add its commands, and should
not pay for matplotlib until a report is drawn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from .compare import CompareResult, compare
    from .history import ReportError, RunHistory, StageRun, read_run
    from .lr_find import LRFindResult, lr_find, lr_range_test
    from .report import build_document, write_report

_EXPORTS = {
    "CompareResult": "compare",
    "compare": "compare",
    "LRFindResult": "lr_find",
    "lr_find": "lr_find",
    "lr_range_test": "lr_find",
    "ReportError": "history",
    "RunHistory": "history",
    "StageRun": "history",
    "read_run": "history",
    "build_document": "report",
    "write_report": "report",
}

__all__ = [
    "CompareResult",
    "LRFindResult",
    "ReportError",
    "RunHistory",
    "StageRun",
    "build_document",
    "compare",
    "lr_find",
    "lr_range_test",
    "read_run",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stagewise.reporting' has no attribute '{name}'")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
