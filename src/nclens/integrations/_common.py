"""What the training-framework integrations share: exact per-rank loaders and metric names for loggers."""

from __future__ import annotations

import math
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

from nclens.core.measure import CollapseReport

__all__ = ["exact_loader", "flat_metrics", "check_options"]


def exact_loader(loader: Any, rank: int, world_size: int) -> Any:
    """This rank's exact shard of ``loader``'s dataset in the loader's batch size, without shuffling.

    Training loaders are shuffled and, under DDP, use a ``DistributedSampler`` that pads ranks with
    repeated samples; a measurement needs every sample exactly once, in the same batches on every
    world size, so a map-style DataLoader is rebuilt with :func:`nclens.core.distributed.shard_loader`
    (same dataset, batch size and collate function). Anything else is used as it is.
    """
    from nclens.core.distributed import shard_loader

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        return loader
    return shard_loader(loader.dataset, loader.batch_size, rank=rank, world_size=world_size,
                        collate_fn=loader.collate_fn)


def flat_metrics(report: CollapseReport, prefix: str = "nc") -> dict[str, float]:
    """``{f"{prefix}/{layer}/{metric}": value}`` of a report (NaN kept, as loggers accept it)."""
    return {f"{prefix}/{layer}/{metric}": (float(value) if value is not None else math.nan)
            for layer, row in report.metrics.items() for metric, value in row.items()}


def check_options(every_n_epochs: Any, dataloader: Any, names: tuple[str, ...], signature: str,
                  measure_kwargs: dict[str, Any]) -> None:
    """The checks every NeuralCollapseCallback makes of its arguments (clear errors naming the value)."""
    if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
        raise ValueError(f"every_n_epochs must be a positive integer, got {every_n_epochs!r}")
    if not (dataloader in names or callable(dataloader)):
        allowed = ", ".join(repr(n) for n in names)
        raise ValueError(f"dataloader must be {allowed} or a callable {signature} -> loader, got {dataloader!r}")
    for bad in ("distributed", "progress", "device"):
        if bad in measure_kwargs:
            raise ValueError(f"NeuralCollapseCallback sets {bad!r} itself")
