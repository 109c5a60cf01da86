"""Defaults that more than one layer needs, defined once (TrainConfig takes them from here, and so
do the data readers and the CLI): a reader never re-declares a default of its own."""

from typing import Final

VAL_FRACTION = 0.2  # held out for validation when a dataset has no val split
SEED = 0
# verify: auto checks every image header up to this many files and none above. A header check
# costs ~210 us a file on a warm local disk (more on NFS): 20k files ~ 4 s, paid once per change
# of the folder (the index is saved); checked content also means the saved index stats every file
# at each stage start (~30 ms for 20k). ImageNet-1k (1.28M) would spend ~4.5 min per rank on it.
VERIFY: Final = "auto"
VERIFY_AUTO_LIMIT = 20_000
# Where each command writes without --out (run-folder layout inside them: runfolder.py).
TRAIN_OUT = "runs/train"  # `stagewise train`
PIPELINE_OUT = "runs/pipeline"  # `stagewise.run` (the CLI's `run FILE` asks for --out)
DEMO_OUT = "runs/demo"  # `stagewise demo`, `stagewise run` without a file
PRESETS_OUT = "runs"  # `stagewise presets run NAME`: runs/NAME
LR_FIND_OUT = "runs/lr_find"  # `stagewise lr-find`
TUNE_OUT = "runs/tune"  # `stagewise tune`
EXPLAIN_OUT = "explain"  # `stagewise explain`: the Grad-CAM overlays
EMBEDDING_DIM = 128  # embed stages: the size of the L2-normalised vectors
# Validation identities below which an embed stage's monitor is a weak guide (said in the log and
# the report): each identity's ranking moves the mAP by a large step.
FEW_IDENTITIES = 10
# `stagewise compare` without --models: one small ImageNet-pretrained network per family a
# tutorial compares (residual, EfficientNet, mobile, ConvNeXt), each with timm weights that the
# default `weights:` can load; 5-16M parameters, so the grid fits a laptop GPU. docs/cli.md.
COMPARE_MODELS = ("resnet18", "efficientnet_b0", "mobilenetv3_large_100", "convnext_nano")
COMPARE_STRATEGIES = ("finetune",)  # `stagewise compare` / `compare()` without strategies
# `scheduler: cosine_warmup` (and any NAME_warmup alias, config/aliases.py) without warmup_epochs:
# this many epochs of linear warmup, at most a tenth of the stage's epochs.
ALIAS_WARMUP_EPOCHS = 1.0
