"""The teacher a distilled stage learns from: `teacher:` resolved to a built, frozen network.

Here, not in training/, because a teacher is any artifact `stagewise.load` reads (a run folder, a
pipeline or its stage folder, a weights file with model.json beside it): inference/ finds and
builds it, and the stage gets it as a plain argument.
"""

from __future__ import annotations

from pathlib import Path

from ..data.hashing import file_digest
from ..errors import ConfigError, WeightsError
from ..inference.artifact import build_network, find_artifact
from ..training.distill import Teacher

_WHAT = ("a run folder, a pipeline stage folder (RUN/stages/NAME; in a pipeline file, an earlier "
         "stage's name) or a .safetensors file with model.json beside it")


def load_teacher(spec: str) -> Teacher:
    """The frozen, eval-mode network `spec` names, with its classes, preprocessing and weights hash.

    Example:
        >>> t = load_teacher("runs/big")  # doctest: +SKIP
        >>> t.architecture, t.val_top1  # doctest: +SKIP
    """
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"teacher: {path} not found; pass {_WHAT}")
    try:
        artifact = find_artifact(path)
        network = build_network(artifact)
    except WeightsError as exc:
        raise ConfigError(f"teacher: {exc}") from None
    top1 = artifact.card.metrics.get("val_top1")
    return Teacher(network=network, architecture=artifact.architecture,
                   class_ids=list(artifact.class_ids), preprocess=artifact.preprocess,
                   source=str(path), sha256=file_digest(artifact.weights_path, "sha256"),
                   val_top1=float(top1) if isinstance(top1, (int, float)) else None)
