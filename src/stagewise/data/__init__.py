"""Datasets: layouts on disk, transforms, loaders.

Names are imported on first use (PEP 562): the CLI reads `data.sources` (the dataset registry)
to build `stagewise data fetch --help`, which should not import torch with the loaders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from .folder import read_folder
    from .index import DatasetIndex, Samples
    from .layouts import load_dataset
    from .loader import ImageDataset, make_loader
    from .transforms import AugmentPlan, Preprocess, build_transform, resolve_preprocess
    from .verify import check_decodable, undecodable

# Exported name -> the module of this package that defines it.
_EXPORTS = {
    "read_folder": "folder",
    "DatasetIndex": "index",
    "Samples": "index",
    "load_dataset": "layouts",
    "ImageDataset": "loader",
    "make_loader": "loader",
    "AugmentPlan": "transforms",
    "Preprocess": "transforms",
    "build_transform": "transforms",
    "resolve_preprocess": "transforms",
    "check_decodable": "verify",
    "undecodable": "verify",
}

__all__ = [
    "AugmentPlan",
    "DatasetIndex",
    "ImageDataset",
    "Preprocess",
    "Samples",
    "build_transform",
    "check_decodable",
    "load_dataset",
    "make_loader",
    "read_folder",
    "resolve_preprocess",
    "undecodable",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
