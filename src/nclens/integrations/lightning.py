"""``NeuralCollapseCallback`` for (PyTorch) Lightning: NC metrics of chosen layers every n epochs.

Works with ``lightning`` (``lightning.pytorch``) or ``pytorch_lightning``, whichever is installed
(extra ``lightning``). At the end of every ``every_n_epochs``-th training epoch, every rank measures
its exact shard of the chosen data (the loader is rebuilt over the same dataset with
:func:`nclens.core.distributed.shard_loader`, so DDP's padded, shuffled sampler does not change the
numbers), the statistics are all-reduced (every rank takes part — no rank-0-only measurement, which
deadlocks under DDP), and the metrics are logged through the trainer's loggers (TensorBoard, CSV,
W&B, ...) as ``nc/<layer>/<metric>``. 2-process DDP logs the values of 1 process.

Example::

    from nclens.integrations.lightning import NeuralCollapseCallback
    trainer = lightning.Trainer(max_epochs=10, callbacks=[NeuralCollapseCallback(layers=["head"], every_n_epochs=2)])
    trainer.fit(module, train_loader)
    callback.history        # long records: epoch, split, layer, metric, value
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from nclens.integrations import require

try:  # the unified package first, then the standalone one
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on what is installed
    pl = require("pytorch_lightning", "lightning")

__all__ = ["NeuralCollapseCallback"]


class NeuralCollapseCallback(pl.Callback):
    """Measure neural collapse of ``layers`` every ``every_n_epochs`` training epochs and log it.

    Args:
        layers: as :func:`nclens.measure` (names, globs, LayerSpecs; ``None``: the default set).
        every_n_epochs: measure after epochs n, 2n, ... (1-based).
        dataloader: ``"train"``, ``"val"`` (the first validation loader) or a callable
            ``(trainer, pl_module) -> loader``.
        exact: rebuild map-style DataLoaders as exact, unshuffled per-rank shards (recommended).
        prefix: logged names are ``f"{prefix}/{layer}/{metric}"``.
        measure_kwargs: passed to :func:`nclens.measure` (``tokens``, ``num_classes``, ``nc4``, ``batch_fn``, ...).

    Attributes:
        history: long records ``{epoch, split, layer, metric, value}`` of every measurement.
        reports: ``{epoch: CollapseReport}``.
    """

    def __init__(
        self,
        layers: Any = None,
        *,
        every_n_epochs: int = 1,
        dataloader: str | Callable[[Any, Any], Any] = "train",
        exact: bool = True,
        prefix: str = "nc",
        **measure_kwargs: Any,
    ) -> None:
        super().__init__()
        from nclens.integrations._common import check_options

        check_options(every_n_epochs, dataloader, ("train", "val"), "(trainer, module)", measure_kwargs)
        self.layers, self.every_n_epochs, self.dataloader = layers, every_n_epochs, dataloader
        self.exact, self.prefix, self.measure_kwargs = exact, prefix, measure_kwargs
        self.history: list[dict[str, Any]] = []
        self.reports: dict[int, Any] = {}

    def _loader(self, trainer: Any, pl_module: Any) -> Any:
        from nclens.integrations._common import exact_loader

        if callable(self.dataloader):
            loader = self.dataloader(trainer, pl_module)
        elif self.dataloader == "train":
            loader = trainer.train_dataloader
        else:
            loader = trainer.val_dataloaders
            if isinstance(loader, Sequence) and not hasattr(loader, "dataset"):
                loader = loader[0] if loader else None
        if loader is None:
            raise ValueError(f"NeuralCollapseCallback: the trainer has no {self.dataloader!r} dataloader")
        return exact_loader(loader, trainer.global_rank, trainer.world_size) if self.exact else loader

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:  # noqa: D102 - Lightning hook
        from nclens.core.measure import measure
        from nclens.integrations._common import flat_metrics

        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs or getattr(trainer, "sanity_checking", False):
            return
        report = measure(pl_module, self._loader(trainer, pl_module), self.layers, device=pl_module.device,
                         progress=False, distributed="auto", **self.measure_kwargs)
        split = self.dataloader if isinstance(self.dataloader, str) else "custom"
        self.reports[epoch] = report
        self.history += report.to_records(epoch=epoch, split=split)
        pl_module.log_dict(flat_metrics(report, self.prefix), on_step=False, on_epoch=True, sync_dist=False,
                           rank_zero_only=True)
