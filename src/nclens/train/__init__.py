"""Training: the one Trainer (exact resume, exact DDP, callbacks, divergence detection), data sources,
optimisers and schedules.

Example:
    >>> from nclens.train import Trainer, TensorData, OptimConfig, Callback
"""

from nclens.runs.folder import CHECKPOINT
from nclens.train.batches import (
    BatchShares,
    ItemData,
    TensorBatches,
    TensorData,
    augment_batch,
    epoch_order,
    eval_batches,
)
from nclens.train.callbacks import Callback
from nclens.train.optim import OptimConfig, build_optimizer, lr_factor
from nclens.train.trainer import HISTORY, Trainer, TrainResult, all_reduce_, dist_info

__all__ = [
    "CHECKPOINT",
    "HISTORY",
    "BatchShares",
    "Callback",
    "ItemData",
    "OptimConfig",
    "TensorBatches",
    "TensorData",
    "TrainResult",
    "Trainer",
    "all_reduce_",
    "augment_batch",
    "build_optimizer",
    "dist_info",
    "epoch_order",
    "eval_batches",
    "lr_factor",
]
