"""Callbacks of the one Trainer: what runs at the end of an epoch (measurement, logging, early looks).

A callback subclasses :class:`Callback` and overrides any of its hooks. Files a callback writes go
through the trainer's run folder (``trainer.run``), and every JSONL log it appends to is named in
``logs`` so that a resumed run drops the records written after the checkpoint. A callback with
state implements ``state_dict``/``load_state_dict``; the state goes into the checkpoint.

Example:
    >>> class PrintLoss(Callback):
    ...     def on_epoch_end(self, trainer, epoch, record):
    ...         print(epoch, round(record["train_loss_running"], 2))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from nclens.train.trainer import Trainer

__all__ = ["Callback"]


class Callback:
    """Base class: every hook does nothing."""

    #: JSONL files (in the run folder) this callback appends records with an ``epoch`` key to.
    logs: tuple[str, ...] = ()

    def on_fit_start(self, trainer: Trainer, start_epoch: int) -> None:
        """Before the first epoch of this fit (``start_epoch``: 0 when fresh, the checkpoint's epoch on resume)."""

    def on_step_end(self, trainer: Trainer, epoch: int, step: int) -> None:
        """After every optimiser step."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """After epoch ``epoch`` (≥ 1; also called with 0 at a fresh start); may add keys to ``record``."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
