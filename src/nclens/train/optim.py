"""Optimisers and learning-rate schedules for the one Trainer.

The learning rate is set at every step from the (fractional) epoch, so the schedule is a pure
function of the position and a resumed run follows it exactly.

Example:
    >>> cfg = OptimConfig(lr=0.1, schedule="step", milestones=(2,), gamma=0.1)
    >>> [round(lr_factor(e, cfg, epochs=4), 3) for e in range(4)]
    [1.0, 1.0, 0.1, 0.1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["OptimConfig", "build_optimizer", "lr_factor"]

OPTIMIZERS = ("sgd", "adamw", "adam")
SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule.

    ``name``: sgd (momentum, Nesterov) | adamw | adam. ``schedule``: constant | step (× ``gamma`` at each
    epoch in ``milestones``) | cosine (to 0 at the last epoch); ``warmup_epochs`` of linear warm-up first.
    """

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {list(OPTIMIZERS)}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        for key in ("lr", "momentum", "weight_decay", "warmup_epochs", "gamma"):
            value = getattr(self, key)
            if not math.isfinite(value):
                raise ValueError(f"optim.{key} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"optim.warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"optim.momentum must lie in [0, 1), got {self.momentum!r}")
        if self.gamma <= 0:
            raise ValueError(f"optim.gamma must be > 0, got {self.gamma!r}")
        if sorted(self.milestones) != list(self.milestones) or any(m < 0 for m in self.milestones):
            raise ValueError(f"optim.milestones must be non-negative and increasing, got {list(self.milestones)}")


def build_optimizer(params: Any, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over the trainable parameters in ``params``."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(position: float, cfg: OptimConfig, epochs: int, steps_per_epoch: int = 1) -> float:
    """Multiplier of the base LR at ``position`` = epochs completed (fractional) at the start of a step.

    warm-up: min(1, (position + 1/steps)/warmup_epochs); then constant, step (γ^#{milestones ≤
    position}) or cosine ½(1 + cos(π (position − warmup)/(epochs − warmup))).
    """
    factor = 1.0
    if cfg.warmup_epochs > 0:
        factor = min(1.0, (position + 1.0 / steps_per_epoch) / cfg.warmup_epochs)
    if cfg.schedule == "step":
        factor *= cfg.gamma ** sum(1 for m in cfg.milestones if m <= position)
    elif cfg.schedule == "cosine":
        span = max(epochs - cfg.warmup_epochs, 1e-12)
        progress = min(max((position - cfg.warmup_epochs) / span, 0.0), 1.0)
        factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor
