"""Exact DDP training helpers: the one-process global batch split across ranks, global-batch BatchNorm.

Measurement across ranks lives in the engine (:mod:`nclens.core.distributed`); this module holds what
only training needs: :func:`share_bounds` (each rank's contiguous share of the one-process global
batch), :func:`all_reduce_sum` (a differentiable all_reduce), :class:`GlobalBatchNorm` (BatchNorm
over the global batch on CPU/gloo), :func:`convert_sync_batchnorm` / :func:`revert_sync_batchnorm`,
:func:`train_loader` and :func:`wrap_ddp`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from nclens.core.distributed import DistContext, context, is_distributed

__all__ = [
    "train_loader",
    "wrap_ddp",
    "share_bounds",
    "all_reduce_sum",
    "GlobalBatchNorm",
    "convert_sync_batchnorm",
    "revert_sync_batchnorm",
]


def train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    **loader_kwargs: Any,
) -> DataLoader:
    """A DataLoader for DDP *training*: PyTorch's ``DistributedSampler`` under a process group.

    Every rank gets the same number of batches (the sampler pads with repeated samples), which DDP's
    gradient all-reduce requires; call ``loader.sampler.set_epoch(epoch)`` each epoch. Outside a
    process group it is a plain seeded loader. Do not use it to measure (see :func:`shard_loader`).
    Its batches are not a one-process run's (each rank draws B samples of its own, the global batch
    is R·B); :class:`nclens.train.Trainer` instead gives each rank its :func:`share_bounds` slice of
    the one-process global batch, which reproduces a one-process run.
    """
    from torch.utils.data.distributed import DistributedSampler

    if is_distributed():
        sampler: Sampler[int] = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **loader_kwargs)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last, **loader_kwargs
    )


def wrap_ddp(model: nn.Module, ctx: DistContext | None = None, **ddp_kwargs: Any) -> nn.Module:
    """Move ``model`` to this rank's device and wrap it in DistributedDataParallel (no-op wrap alone).

    Outside a process group the model is only moved. Layer names for measurement are those of
    ``model`` itself (pass the unwrapped module to :func:`~nclens.core.measure.measure`, or prefix ``module.``).
    """
    from torch.nn.parallel import DistributedDataParallel

    ctx = ctx or context()
    model = model.to(ctx.device)
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[ctx.device.index], **ddp_kwargs)
    return DistributedDataParallel(model, **ddp_kwargs)


# ------------------------------------------------------- exact DDP training
def share_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank``'s contiguous share of a global batch of ``n`` rows.

    The batch is split as evenly as possible: every rank gets ⌊n/R⌋ rows and the first ``n mod R``
    ranks one more, in rank order, so concatenating the shares of ranks 0…R−1 gives the batch back.
    A rank's share may be empty when n < R (its loss and gradients are then zero).

    Example:
        >>> [share_bounds(5, r, 2) for r in range(2)]
        [(0, 3), (3, 5)]
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size) with world_size >= 1, got rank={rank!r}, "
                         f"world_size={world_size!r}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all_reduce(SUM): y = Σ_r x_r on every rank; the gradient is Σ_r ∂L/∂y (all_reduce)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:  # noqa: D102 - autograd API
        import torch.distributed as dist

        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102 - autograd API
        return _AllReduceSum.apply(grad, ctx.group), None


def all_reduce_sum(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Σ over ranks of ``tensor``, differentiable (the backward pass all-reduces the gradient).

    The objective of a DDP step is Σ_r L_r; a quantity shared by every rank (a global BatchNorm
    mean) receives gradient Σ_r ∂L_r/∂y from every rank, which is what the backward all_reduce
    supplies. Outside a process group it returns ``tensor`` unchanged.
    """
    if not is_distributed():
        return tensor
    return _AllReduceSum.apply(tensor, group)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the *global* batch of all ranks, for any device and backend (gloo on CPU too).

    ``nn.SyncBatchNorm`` only runs on GPU; this module computes, in training mode inside a
    process group, the statistics of the union of the ranks' shares of the batch,

        μ = Σ_r Σ_i x_ri / N,   σ² = Σ_r Σ_i (x_ri − μ)² / N,   y = γ (x − μ) / √(σ² + ε) + β,

    with N = Σ_r n_r (per channel; images reduce over batch and spatial dims), in float64 by two
    differentiable all_reduce calls (:func:`all_reduce_sum`), so that forward and backward equal a
    plain BatchNorm over the concatenated batch (Ioffe & Szegedy 2015; the synchronised form of
    Peng et al., "MegDet", CVPR 2018). Running statistics are updated like BatchNorm's (unbiased
    σ²·N/(N−1)). Shares may have different sizes, including zero. In eval mode, outside a process
    group, or with batch statistics only in eval mode, it is the ordinary local BatchNorm.

    Example (one process: identical to BatchNorm1d):
        >>> import torch
        >>> bn = GlobalBatchNorm(3)
        >>> x = torch.randn(8, 3)
        >>> torch.allclose(bn(x), torch.nn.BatchNorm1d(3)(x))
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (N, C, ...), got shape {tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Module API
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        c = input.shape[1]
        if c != self.num_features:
            raise ValueError(f"expected {self.num_features} channels, got input of shape {tuple(input.shape)}")
        dims = [0, *range(2, input.dim())]
        view = (1, c) + (1,) * (input.dim() - 2)  # per-channel vector -> broadcastable (1, C, 1, ...)
        x = input.to(torch.float64)
        local = torch.cat([x.sum(dims), x.new_full((1,), float(input.numel() // c if c else 0))])
        total = all_reduce_sum(local, self.process_group)
        n = float(total[-1].detach())
        if n <= 1:
            raise ValueError(f"expected more than 1 value per channel when training, got {int(n)} over all ranks")
        mean = total[:c] / n
        centred = x - mean.view(view)
        var = all_reduce_sum(centred.square().sum(dims), self.process_group) / n
        out = centred * torch.rsqrt(var + self.eps).view(view)
        if self.weight is not None:
            out = out * self.weight.to(torch.float64).view(view)
        if self.bias is not None:
            out = out + self.bias.to(torch.float64).view(view)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1.0 - factor).add_(factor * mean.detach().to(self.running_mean.dtype))
                unbiased = var.detach() * (n / (n - 1.0))
                self.running_var.mul_(1.0 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        return out.to(input.dtype)


def _swap_batchnorm(module: nn.Module, make: Callable[[nn.modules.batchnorm._BatchNorm], nn.Module]) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        out = make(module)
        if out is not module:
            if module.affine:
                out.weight, out.bias = module.weight, module.bias  # the same Parameter objects
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _swap_batchnorm(child, make))
    return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Replace every BatchNorm of ``model`` by a synchronised one (global-batch statistics under DDP).

    CUDA: ``nn.SyncBatchNorm``; any other device (CPU with gloo): :class:`GlobalBatchNorm`. The
    parameters and buffers are shared with the originals (same objects, same ``state_dict`` keys),
    so call it before building the optimiser. :func:`revert_sync_batchnorm` undoes it.
    """
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")

    def make(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
        if isinstance(bn, (nn.SyncBatchNorm, GlobalBatchNorm)):
            return bn
        cls = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  bias=bn.bias is not None)
        new._nclens_original = type(bn)  # type: ignore[assignment]  # for revert_sync_batchnorm
        return new

    return _swap_batchnorm(model, make)


def revert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`convert_sync_batchnorm`: the original BatchNorm classes, same parameters/buffers."""

    def make(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
        cls = getattr(bn, "_nclens_original", None)
        if cls is None:  # not made by convert_sync_batchnorm
            return bn
        return cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bias=bn.bias is not None)

    return _swap_batchnorm(model, make)


# ---------------------------------------------------------------- statistics
