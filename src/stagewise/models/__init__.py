"""Build a backbone by name, load weights safely, adapt the classifier head by class identity."""

from .build import ModelBundle, build_model, module_bundle, resolve_model_name
from .embedding import EmbeddingSpec, embedding_head, pretrained_features
from .head import ACTIVATIONS, HeadReport, HeadSpec, adapt_head
from .weights import LoadedWeights, load_state_dict_file

__all__ = [
    "ACTIVATIONS",
    "EmbeddingSpec",
    "HeadReport",
    "HeadSpec",
    "LoadedWeights",
    "ModelBundle",
    "adapt_head",
    "build_model",
    "embedding_head",
    "load_state_dict_file",
    "module_bundle",
    "pretrained_features",
    "resolve_model_name",
]
