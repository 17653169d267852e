"""Training: the loop (:mod:`shared.train.loop`), checkpoints (:mod:`shared.train.checkpoint`) and
data parallelism (:mod:`shared.train.distributed`). ``python -m shared pretrain --help`` (:mod:`shared.cli`)
runs the same loop from the command line, in one process or several under ``torchrun``."""

from shared.train.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from shared.train.distributed import World, init_distributed, world
from shared.train.loop import (
    PRECISIONS,
    History,
    NonFiniteLossError,
    TrainConfig,
    TrainState,
    bits_per_character,
    cross_entropy,
    evaluate_loss,
    lr_at,
    resolve_precision,
    train,
)

__all__ = [
    "PRECISIONS",
    "CheckpointMismatchError",
    "History",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainState",
    "World",
    "bits_per_character",
    "cross_entropy",
    "evaluate_loss",
    "init_distributed",
    "load_checkpoint",
    "lr_at",
    "read_checkpoint",
    "resolve_precision",
    "save_checkpoint",
    "train",
    "world",
]
