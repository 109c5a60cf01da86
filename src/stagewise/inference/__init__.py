"""Use a trained model: load the artifact, predict, evaluate on a labelled set, export."""

from .artifact import Artifact, find_artifact, load
from .classifier import Candidate, Classifier, Prediction
from .evaluate import Evaluation, evaluate
from .export import ExportError, ExportResult, export
from .predict import FileResult, expand_inputs, predict_files

__all__ = [
    "Artifact",
    "Candidate",
    "Classifier",
    "Evaluation",
    "ExportError",
    "ExportResult",
    "FileResult",
    "Prediction",
    "evaluate",
    "expand_inputs",
    "export",
    "find_artifact",
    "load",
    "predict_files",
]
