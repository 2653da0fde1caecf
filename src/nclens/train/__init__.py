"""Training: one Trainer with exact resume and exact DDP, optimisers and schedules, callbacks."""

from nclens.train.trainer import *  # noqa: F403
from nclens.train.trainer import CHECKPOINT, __all__, seed_everything  # noqa: F401
