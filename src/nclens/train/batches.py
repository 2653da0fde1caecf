"""Batches for the one Trainer: in-memory tensors in a seeded order, exact DDP shares, evaluation shards.

* :class:`TensorBatches` — (x, y) batches of in-memory tensors in a given index order;
* :class:`BatchShares` — this rank's contiguous share of every one-process global batch (exact DDP);
* :func:`eval_batches` — whole evaluation batches dealt to the ranks (measurement = one process);
* :func:`augment_batch` — random crop + horizontal flip of image batches;
* :class:`TensorData` / :class:`ItemData` — what a :class:`~nclens.train.Trainer` trains on: tensors
  batched in a seeded per-epoch order, or a list of ready batches (e.g. one graph each) visited in a
  seeded per-epoch order.

The order of epoch e is a pure function of (seed, e) — a fresh ``torch.Generator`` seeded with
``seed · 1,000,003 + e``, the same on every rank — so a resumed run sees the same batches.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TensorBatches", "BatchShares", "eval_batches", "augment_batch", "TensorData", "ItemData", "epoch_order"]


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The permutation of ``n`` items for ``epoch`` (a pure function of seed and epoch)."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen)


class TensorBatches:
    """Iterable of (x, y) batches of in-memory tensors in a given index order (no per-sample collate).

    Args:
        x, y: inputs (N, ...) and labels (N,), on any device.
        batch_size: samples per batch.
        order: ``None`` (0..N−1), an index tensor, or a callable returning one (re-evaluated per
            iteration).
        transform: optional function applied to each input batch (augmentation).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        order: Tensor | Callable[[], Tensor] | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self.order, self.transform = order, transform

    def _indices(self) -> Tensor:
        if self.order is None:
            return torch.arange(self.x.shape[0])
        return self.order() if callable(self.order) else self.order

    def __len__(self) -> int:
        return math.ceil(len(self._indices()) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self._indices().to(self.x.device)
        for start in range(0, idx.numel(), self.batch_size):
            sel = idx[start : start + self.batch_size]
            xb = self.x.index_select(0, sel)
            if self.transform is not None:
                xb = self.transform(xb)
            yield xb, self.y.index_select(0, sel.to(self.y.device))


class BatchShares:
    """This rank's contiguous share of every global batch (exact DDP training).

    Global batch j is ``order[j·B : (j+1)·B]``, the batch a one-process :class:`TensorBatches`
    yields; rank r takes its rows ``share_bounds(len(batch), r, R)``. ``transform`` (augmentation)
    is applied to the whole global batch before slicing, so it consumes the global RNG exactly as
    one process does. Yields ``(x_share, y_share, global_batch_size)``; shares may be empty.

    Example:
        >>> import torch
        >>> b = BatchShares(torch.arange(5.0)[:, None], torch.arange(5), 4, None, rank=1, world_size=2)
        >>> [(y.tolist(), n) for _, y, n in b]
        [([2, 3], 4), ([], 1)]
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        order: Tensor | Callable[[], Tensor] | None,
        *,
        rank: int,
        world_size: int,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        from nclens.train.distributed import share_bounds

        share_bounds(0, rank, world_size)  # validates rank / world_size
        self.global_batches = TensorBatches(x, y, batch_size, order)
        self.rank, self.world_size, self.transform = int(rank), int(world_size), transform

    def __len__(self) -> int:
        return len(self.global_batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, int]]:
        from nclens.train.distributed import share_bounds

        gb = self.global_batches
        idx = gb._indices().to(gb.x.device)
        for start in range(0, idx.numel(), gb.batch_size):
            sel = idx[start : start + gb.batch_size]
            lo, hi = share_bounds(int(sel.numel()), self.rank, self.world_size)
            if self.transform is not None:
                xb = self.transform(gb.x.index_select(0, sel))[lo:hi]
            else:
                xb = gb.x.index_select(0, sel[lo:hi])
            yield xb, gb.y.index_select(0, sel[lo:hi].to(gb.y.device)), int(sel.numel())


def eval_batches(x: Tensor, y: Tensor, batch_size: int, rank: int = 0, world_size: int = 1) -> TensorBatches:
    """Evaluation/measurement batches of this rank: whole batches dealt round-robin (ShardSampler).

    One process: all of (x, y) in order. R ranks: global batch j of ``batch_size`` goes to rank
    j mod R, so each per-batch forward equals the one-process one. When the split has fewer than R
    batches, the batch size is lowered (with a warning) to the largest one giving every rank a batch.

    Raises:
        ValueError: fewer samples than ranks.
    """
    n = int(x.shape[0])
    if world_size == 1:
        return TensorBatches(x, y, batch_size, torch.arange(n))
    from nclens.core.distributed import ShardSampler

    bs = int(batch_size)
    if -(-n // bs) < world_size:
        if n < world_size:
            raise ValueError(f"a split of {n} samples cannot be measured on {world_size} ranks (every rank needs data)")
        bs = -(-n // world_size)
        while -(-n // bs) < world_size:
            bs -= 1
        if rank == 0:
            warnings.warn(
                f"data.eval_batch_size={batch_size} splits {n} samples into fewer batches than the {world_size} ranks; "
                f"measuring with batches of {bs} (set data.eval_batch_size <= {bs} to measure the same batches "
                "in one process)",
                stacklevel=2,
            )
    order = torch.as_tensor(list(ShardSampler(n, bs, rank=rank, world_size=world_size)), dtype=torch.long)
    return TensorBatches(x, y, bs, order)


def augment_batch(x: Tensor, pad: int = 4) -> Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of images (B, C, H, W), global torch RNG."""
    if x.ndim != 4:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    i = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    j = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[bi, ci, rows, cols]  # (B, C, H, W)
    flip = torch.rand(b, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class TensorData:
    """Training data held as tensors: batched in the seeded per-epoch order (see the module docstring).

    Args:
        x: inputs (N, ...); y: targets (N,) class labels or (N, K) rows.
        batch_size: samples per step; 0 = the whole set in one step (full-batch gradient descent).
        augment: optional function applied to each *global* batch (before DDP slicing).
    """

    def __init__(
        self, x: Tensor, y: Tensor, batch_size: int, *, augment: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        if x.shape[0] == 0:
            raise ValueError("the training data are empty")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"batch_size must be a non-negative integer (0 = full batch), got {batch_size!r}")
        self.x, self.y, self.augment = x, y, augment
        self.batch_size = batch_size or int(x.shape[0])

    def __len__(self) -> int:
        return math.ceil(self.x.shape[0] / self.batch_size)

    def to(self, device: torch.device) -> TensorData:
        """The same data on ``device``."""
        out = TensorData(self.x.to(device), self.y.to(device), self.batch_size, augment=self.augment)
        return out

    def epoch(self, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[tuple[Tensor, Tensor, int]]:
        """This rank's batches of ``epoch``: ``(x_share, y_share, global_batch_size)``."""
        order = epoch_order(int(self.x.shape[0]), seed, epoch)
        if world_size == 1:
            for xb, yb in TensorBatches(self.x, self.y, self.batch_size, order, self.augment):
                yield xb, yb, int(yb.shape[0])
        else:
            yield from BatchShares(self.x, self.y, self.batch_size, order, rank=rank, world_size=world_size,
                                   transform=self.augment)


class ItemData:
    """Training data as a list of ready batches (e.g. one graph per step), visited in the seeded per-epoch order.

    Each item is whatever the Trainer's ``step_fn`` takes. Not supported under torch.distributed
    (an item cannot be split exactly across ranks).
    """

    def __init__(self, items: Sequence[Any]) -> None:
        if len(items) == 0:
            raise ValueError("the training data are empty (no items)")
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def to(self, device: torch.device) -> ItemData:
        """The items, tensors moved to ``device``."""

        def move(v: Any) -> Any:
            if isinstance(v, Tensor):
                return v.to(device)
            if isinstance(v, (tuple, list)):
                return type(v)(move(u) for u in v)
            if isinstance(v, dict):
                return {k: move(u) for k, u in v.items()}
            return v

        return ItemData([move(item) for item in self.items])

    def epoch(self, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[tuple[Any, None, int]]:
        """The items of ``epoch`` in their seeded order: ``(item, None, 1)``."""
        if world_size != 1:
            raise ValueError("ItemData (one ready batch per step) cannot be split across ranks; run on one process")
        for i in epoch_order(len(self.items), seed, epoch).tolist():
            yield self.items[i], None, 1
