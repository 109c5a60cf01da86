"""Use a trained model: load the artifact, predict, evaluate on a labelled set, export; embed,
index and search images for re-identification (retrieval needs `stagewise[retrieval]`).

Names are imported on first use (PEP 562): the CLI reads `inference.choices` to build the
inference commands' --help, which should not import torch with the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from .artifact import Artifact, find_artifact, load
    from .classifier import Candidate, Classifier, Prediction
    from .ensemble import Ensemble, load_ensemble
    from .evaluation import Evaluation, evaluate
    from .export_result import ExportError, ExportResult
    from .exporting import export
    from .predict import FileResult, expand_inputs, predict_files
    from .retrieval import Embeddings, Match, RetrievalError, Retriever
    from .retrieval_eval import RetrievalEvaluation, evaluate_retrieval

# Exported name -> the module of this package that defines it.
_EXPORTS = {
    "Artifact": "artifact", "find_artifact": "artifact", "load": "artifact",
    "Candidate": "classifier", "Classifier": "classifier", "Prediction": "classifier",
    "Ensemble": "ensemble", "load_ensemble": "ensemble",
    "Evaluation": "evaluation", "evaluate": "evaluation",
    "ExportError": "export_result", "ExportResult": "export_result", "export": "exporting",
    "FileResult": "predict", "expand_inputs": "predict", "predict_files": "predict",
    "Embeddings": "retrieval", "Match": "retrieval", "RetrievalError": "retrieval",
    "Retriever": "retrieval",
    "RetrievalEvaluation": "retrieval_eval", "evaluate_retrieval": "retrieval_eval",
}

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
