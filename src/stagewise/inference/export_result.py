"""What every export format returns or raises, apart from the writers: the ONNX/TorchScript
writer (exporting.py) dispatches `--format hf` to hf_export.py, which returns the same result, so
both import these from here rather than from each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import StagewiseError

TOLERANCE = 1e-4  # the largest |logit difference| an export may show against PyTorch's


class ExportError(StagewiseError):
    """The model could not be exported, or the export does not reproduce PyTorch's logits."""


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the model file (hf: the folder)
    preprocess_path: Path  # the preprocessing beside it (hf: config.json)
    format: str
    checked: bool  # False when no runtime was available to run the exported file
    max_abs_diff: float | None
    note: str
