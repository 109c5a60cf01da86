"""The names a config key may take, as `Literal` types: one definition that the schema validates
against and the command line lists in its --help (`choices_of`).

Kept apart from the schema so that building the argument parser imports neither pydantic's model
nor anything below it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from ..kinds import StrategyName, TaskName, WeightSource  # the registries' names (kinds.py)

Strategy = StrategyName
Task = TaskName
Source = WeightSource
# The hand-written optimizers (training/optim.py); any other name of timm's optimizer registry
# (timm.optim.list_optimizers(): lamb, lion, adan, lars, sgdp, adabelief, adafactor...) is built
# by timm from the same param groups.
OWN_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adamw8bit")
SchedulerName = Literal[
    "constant", "one_cycle", "cosine", "polynomial", "exponential", "step", "multistep", "plateau"
]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LRScale = Literal["none", "linear", "sqrt"]
Augmentation = Literal["none", "light", "standard", "strong"]
HeadMode = Literal["match", "reset", "keep"]
DataFormat = Literal[
    "auto", "folder", "imagenette", "imagewoof", "tiny-imagenet", "imagenet", "csv", "cifar",
    "flowers102", "oxford-pets", "food101", "shards",
]
VerifyMode = Literal["auto", "none", "header", "decode"]  # data/saved_index.py
CacheMode = Literal["auto", "none", "memory", "disk", "features"]
DecoderName = Literal["auto", "pil", "pil-draft", "torchvision"]  # data/decode.py
LogWith = Literal["none", "tensorboard", "mlflow", "wandb"]
# The signal that asks a run to save and exit for a requeue (SLURM: sbatch --signal=B:USR1@120).
RequeueSignal = Literal["SIGUSR1", "SIGUSR2", "none"]
MetricLoss = Literal["arcface", "subcenter_arcface", "cosface", "triplet", "supcon", "contrastive",
                     "multi_similarity"]
Miner = Literal["auto", "none", "multi_similarity", "triplet_margin", "batch_hard", "pair_margin",
                "batch_easy_hard"]
# `stagewise tune`: how trials are drawn and which stop early (runs/tune.py).
TuneSampler = Literal["auto", "tpe", "random", "brute"]
TunePruner = Literal["median", "hyperband", "none"]


def choices_of(literal: Any) -> tuple[str, ...]:
    """The names of a `Literal[...]` type, in the order written, e.g. for a --help text.

    Example:
        >>> choices_of(Precision)
        ('auto', 'fp32', 'bf16', 'fp16')
    """
    return tuple(get_args(literal))
