"""Reports and comparisons: what people look at after training.

`write_report(run_dir)` turns a run folder (one stage or a pipeline) into report.html,
report.md and plots/; `compare(...)` trains a grid of models x strategies and tabulates it;
`lr_find(...)` runs the learning-rate range test.
"""

from .history import ReportError, RunHistory, StageRun, read_run
from .report import build_document, write_report

__all__ = [
    "ReportError",
    "RunHistory",
    "StageRun",
    "build_document",
    "read_run",
    "write_report",
]
