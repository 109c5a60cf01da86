"""Defaults that more than one layer needs, defined once (TrainConfig takes them from here, and so
do the data readers and the CLI): a reader never re-declares a default of its own."""

VAL_FRACTION = 0.2  # held out for validation when a dataset has no val split
SEED = 0
TRAIN_OUT = "runs/train"  # where `stagewise train` writes without --out
EMBEDDING_DIM = 128  # embed stages: the size of the L2-normalised vectors
