"""Use a trained model: load the artifact, predict, evaluate on a labelled set, export; embed,
index and search images for re-identification (retrieval needs `stagewise[retrieval]`)."""

from .artifact import Artifact, find_artifact, load
from .classifier import Candidate, Classifier, Prediction
from .ensemble import Ensemble, load_ensemble
from .evaluate import Evaluation, evaluate
from .export import ExportError, ExportResult, export
from .predict import FileResult, expand_inputs, predict_files
from .retrieval import Embeddings, Match, RetrievalError, Retriever
from .retrieval_eval import RetrievalEvaluation, evaluate_retrieval

__all__ = [
    "Artifact",
    "Candidate",
    "Classifier",
    "Embeddings",
    "Ensemble",
    "Evaluation",
    "ExportError",
    "ExportResult",
    "FileResult",
    "Match",
    "Prediction",
    "RetrievalError",
    "RetrievalEvaluation",
    "Retriever",
    "evaluate",
    "evaluate_retrieval",
    "expand_inputs",
    "export",
    "find_artifact",
    "load",
    "load_ensemble",
    "predict_files",
]
