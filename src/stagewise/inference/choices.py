"""The names inference commands accept, torch-free: the command line lists them in --help
without importing the modules that use them (which import torch)."""

from __future__ import annotations

TTA_HELP = "flip, five_crop, ten_crop or scales=0.875,1.0,1.15"
OUTPUT_FORMATS = ("table", "json", "csv")  # predict/search results on stdout
SPLITS = ("val", "test", "train", "all")  # what `evaluate --split` scores
EXPORT_FORMATS = ("onnx", "torchscript", "hf")  # hf: a timm/Hugging Face Hub folder
DEFAULT_OPSET = 17
