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
from ..runfolder import MODEL_CARD, read_json
from ..training.distill import Teacher

# Why an embed run cannot teach: distillation matches the teacher's class probabilities.
NOT_A_TEACHER = ("is an embed run (task: embed): it maps images to vectors and has no class "
                 "probabilities to distil from; use a classification run (task: classify) as the teacher")

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
        if artifact.card.task == "embed":
            raise ConfigError(f"teacher: {path} {NOT_A_TEACHER}")
        network = build_network(artifact)
    except WeightsError as exc:
        raise ConfigError(f"teacher: {exc}") from None
    top1 = artifact.card.metrics.get("val_top1")
    return Teacher(network=network, architecture=artifact.architecture,
                   class_ids=list(artifact.class_ids), preprocess=artifact.preprocess,
                   source=str(path), sha256=file_digest(artifact.weights_path, "sha256"),
                   val_top1=float(top1) if isinstance(top1, (int, float)) else None)


def is_embed_run(path: Path) -> bool:
    """Whether the model.json of `path` (a run folder, a weights file or the card) says task: embed;
    read tolerantly, for a pipeline's check before anything runs (load_teacher reads it strictly)."""
    card = path / MODEL_CARD if path.is_dir() else path if path.suffix == ".json" else path.parent / MODEL_CARD
    data = read_json(card) if card.is_file() else None
    return isinstance(data, dict) and data.get("task") == "embed"
