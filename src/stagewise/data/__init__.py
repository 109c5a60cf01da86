"""Datasets: layouts on disk, transforms, loaders."""

from .folder import read_folder
from .index import DatasetIndex, Samples
from .layouts import load_dataset
from .loader import ImageDataset, make_loader
from .transforms import AugmentPlan, Preprocess, build_transform, resolve_preprocess
from .verify import check_decodable, undecodable

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
