"""Build a backbone by name, load weights safely, adapt the classifier head by class identity."""

from .build import ModelBundle, build_model, resolve_model_name
from .head import ACTIVATIONS, HeadReport, HeadSpec, adapt_head
from .weights import LoadedWeights, load_state_dict_file

__all__ = [
    "ACTIVATIONS",
    "HeadReport",
    "HeadSpec",
    "LoadedWeights",
    "ModelBundle",
    "adapt_head",
    "build_model",
    "load_state_dict_file",
    "resolve_model_name",
]
