"""Trainer that measures neural collapse layer by layer, epoch by epoch — and resumes exactly.

:class:`Trainer` trains a classifier (CE or one-hot MSE with label smoothing; SGD or AdamW;
constant / step / cosine schedules with linear warm-up; weight decay) and, at chosen epochs
(epoch 0 = initialisation), measures every requested layer on the training and test data with
:func:`nclens.core.measure.measure` (the paper takes each Linear/Conv layer's *input*; ``mode="output"``
is offered), adds each layer's nearest-class-mean (NCC) accuracy, the alignment metrics of
:mod:`nclens.core.metrics.layers` and the weight singular spectra, and appends everything to JSONL files
of the run folder:

* ``history.jsonl`` — one record per epoch: lr, training loss, train/test loss and accuracy;
* ``layers.jsonl`` — one record per (epoch, split, layer): NC metrics, ``ncc_accuracy`` and (train
  split) ``subspace_alignment`` / ``assoc_memory_alignment``;
* ``spectra.jsonl`` — singular values of every measured Linear/Conv weight at measured epochs;
* ``checkpoint.pt`` — model, optimiser, RNG states (torch, CUDA, numpy, python; per rank), epoch.

Exact resume: the data order of epoch e is a pure function of (seed, e) (a freshly seeded
generator, the same on every rank), the learning rate a pure function of the position,
and the checkpoint holds every other piece of state, so a run interrupted at any point loses at
most the epoch in progress and then produces the same numbers, bit for bit on the same machine, as
one that was never interrupted. Log records beyond the checkpoint are dropped on resume.

Under ``torchrun`` (env ``RANK``/``WORLD_SIZE``; the process group is initialised if needed) the
run is the one-process run, up to floating-point round-off:

* the global batch is the one-process batch: every rank draws the same seeded permutation, cuts it
  into global batches of ``data.batch_size`` and takes its contiguous share of each
  (:func:`nclens.train.distributed.share_bounds`: sizes ⌊B/R⌋ or ⌈B/R⌉, so any B and a short last batch
  work); augmentation is applied to the global batch before slicing (same RNG stream);
* rank r's loss is (R/B)·Σ_{i∈share r} ℓ_i, so the DDP average of the ranks' gradients is
  exactly the gradient of the global batch mean (1/B)Σ_i ℓ_i, however unequal the shares;
* BatchNorm layers become synchronised (:func:`nclens.train.distributed.convert_sync_batchnorm`:
  ``nn.SyncBatchNorm`` on CUDA, :class:`~nclens.train.distributed.GlobalBatchNorm` on CPU/gloo), so
  they normalise with the statistics of the global batch;
* evaluation and NC measurement deal whole evaluation batches to the ranks
  (:class:`nclens.core.distributed.ShardSampler`), so every per-batch float32 forward is the
  one-process one and only float64 sums are reordered by the all-reduce; a split with fewer
  than R evaluation batches is measured with a smaller evaluation batch (with a warning);
* the checkpoint (written by rank 0, read by every rank) holds the unconverted BatchNorm keys, so
  runs resume across world sizes; only rank 0 writes files.

What is left is the order of float32 sums: a weight gradient Σᵢ gᵢxᵢᵀ is summed as two partial
GEMMs plus an all-reduce instead of one GEMM, ≈1e-7 relative per step.

Reference: Rangamani, Lindegaard, Galanti & Poggio, "Feature learning in deep classifiers through
Intermediate Neural Collapse", ICML 2023.

Example:
    >>> import tempfile
    >>> from nclens.runs.config import ExperimentConfig, replace
    >>> from nclens.train import Trainer
    >>> cfg = replace(ExperimentConfig(), model={"depth": 2, "width": 32},
    ...               train={"epochs": 2, "measure_every": 2, "progress": False})
    >>> result = Trainer(cfg, tempfile.mkdtemp()).fit()
    >>> sorted({r["layer"] for r in result.layers})
    ['classifier', 'fc1', 'fc2']
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nclens.core.io import append_jsonl, atomic_write_bytes, atomic_write_text, read_jsonl, run_folder_lock, write_json
from nclens.runs.config import DataConfig, ExperimentConfig, ModelConfig, OptimConfig, TrainConfig

__all__ = [
    "DataBundle",
    "TensorBatches",
    "BatchShares",
    "eval_batches",
    "Trainer",
    "TrainResult",
    "load_data",
    "build_model",
    "build_optimizer",
    "lr_factor",
    "classification_loss",
    "augment_batch",
    "measure_layers",
    "resolve_device",
]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
LAYERS = "layers.jsonl"
SPECTRA = "spectra.jsonl"


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataBundle:
    """Inputs/labels of a train/test split plus the per-sample input shape and K."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    name: str = ""


_TORCHVISION = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _load_torchvision(name: str, root: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise ImportError(
            f"data.name={name!r} is read through torchvision, which is not installed; "
            "install it (pip install 'nclens[vision]') or use data.name=digits|mnist1d"
        ) from exc
    cls = getattr(tvd, _TORCHVISION[name])
    try:
        train, test = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"{_TORCHVISION[name]} was not found under data.root={root!r} (nclens never downloads): "
            f"put the torchvision dataset folder there ({exc})"
        ) from exc

    def tensors(ds: Any) -> tuple[Tensor, Tensor]:
        x = torch.as_tensor(np.asarray(ds.data)).float() / 255.0
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N,H,W)->(N,1,H,W); (N,H,W,C)->(N,C,H,W)
        return x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)

    x_tr, y_tr = tensors(train)
    x_te, y_te = tensors(test)
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the dataset of ``cfg``: embedded (digits, mnist1d) or torchvision from ``cfg.root``.

    digits are kept flat (N, 64) with ``input_shape=(1, 8, 8)``; mnist1d flat (N, 40) with
    ``input_shape=(1, 1, 40)``; torchvision images as (N, C, H, W).
    """
    from nclens.data import load_digits, load_mnist1d, stratified_split

    if cfg.name == "digits":
        s = load_digits(test_fraction=cfg.test_fraction, seed=cfg.split_seed)
        x_tr, y_tr, x_te, y_te, shape = s.x_train, s.y_train, s.x_test, s.y_test, (1, 8, 8)
    elif cfg.name == "mnist1d":
        s = load_mnist1d(num_samples=cfg.num_samples, seed=cfg.split_seed, train_split=1.0 - cfg.test_fraction)
        x_tr, y_tr, x_te, y_te, shape = s.x_train, s.y_train, s.x_test, s.y_test, (1, 1, s.x_train.shape[1])
    else:
        if not cfg.root:
            raise ValueError(f"data.name={cfg.name!r} needs data.root, the local torchvision dataset folder")
        x_tr, y_tr, x_te, y_te = _load_torchvision(cfg.name, cfg.root)
        shape = tuple(x_tr.shape[1:])
    if cfg.train_subset is not None and cfg.train_subset < x_tr.shape[0]:
        keep, _ = stratified_split(y_tr.numpy(), 1.0 - cfg.train_subset / x_tr.shape[0], cfg.split_seed)
        keep_t = torch.from_numpy(keep)
        x_tr, y_tr = x_tr[keep_t], y_tr[keep_t]
    k = int(torch.unique(y_tr).numel())
    if int(y_tr.max()) + 1 != k:
        raise ValueError(f"labels must be 0..K-1; got {k} distinct labels with maximum {int(y_tr.max())}")
    return DataBundle(x_tr, y_tr, x_te, y_te, tuple(int(s) for s in shape), k, cfg.name)


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


# ---------------------------------------------------------------------------- model
def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the architecture of ``cfg`` for inputs of ``input_shape`` and K classes."""
    from nclens.models import CNN, MLP, build_resnet

    if cfg.arch == "mlp":
        return MLP(
            int(np.prod(input_shape)), num_classes, cfg.depth, cfg.width,
            batchnorm=cfg.batchnorm, bias=cfg.bias, activation=cfg.activation,
        )
    if len(input_shape) != 3:
        raise ValueError(f"model.arch={cfg.arch!r} needs image inputs (C, H, W), got shape {input_shape}")
    if cfg.arch == "cnn":
        return CNN(
            num_classes, input_shape, cfg.depth, cfg.width,
            batchnorm=cfg.batchnorm, bias=cfg.bias, activation=cfg.activation,
        )
    return build_resnet(
        int(cfg.arch.removeprefix("resnet")), num_classes, in_channels=input_shape[0], width=cfg.width,
        input_shape=input_shape, impl=cfg.impl,
    )


def build_optimizer(params: Any, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW with weight decay ``cfg.weight_decay``."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
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


def classification_loss(
    logits: Tensor, labels: Tensor, kind: str, label_smoothing: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy, or one-hot MSE ‖z − t‖², t = (1−ε) e_y + ε/K; mean (or sum) over samples.

    ``reduction="sum"`` is what a DDP rank uses to weight its share of a global batch.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if kind == "ce":
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction=reduction)
    if kind != "mse":
        raise ValueError(f"loss must be 'ce' or 'mse', got {kind!r}")
    k = logits.shape[1]
    target = F.one_hot(labels, k).to(logits.dtype) * (1.0 - label_smoothing) + label_smoothing / k
    per_sample = (logits - target).square().sum(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


# ---------------------------------------------------------------------- distributed
def _dist() -> tuple[bool, int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _maybe_init_distributed() -> bool:
    """Initialise torch.distributed from env (RANK/WORLD_SIZE, as torchrun sets) if not done yet."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def resolve_device(name: str) -> torch.device:
    """'auto' → the local CUDA device when available (``LOCAL_RANK`` under torchrun), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


def _all_reduce(t: Tensor) -> Tensor:
    distributed, _, _ = _dist()
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


# ---------------------------------------------------------------------- measurement
@torch.no_grad()
def _ncc_and_means(
    model: nn.Module,
    batches: Any,
    layers: list[str],
    mode: str,
    pool: str,
    ncc_means: dict[str, Tensor],
    align_layers: list[str],
    num_classes: int,
    device: torch.device,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """One pass: NCC accuracy per layer (against ``ncc_means``) and class means of raw layer inputs.

    Returns ``({layer: ncc_accuracy}, {layer: (K, *input_shape) class-mean inputs})``; the
    class means of ``align_layers``' un-pooled inputs feed the alignment metrics.
    """
    from nclens.core.metrics import ncc_predict
    from nclens.core.probe import Probe

    modules = dict(model.named_modules())
    correct = torch.zeros(len(layers), dtype=torch.float64, device=device)
    seen = torch.zeros((), dtype=torch.float64, device=device)
    sums: dict[str, Tensor] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    labels_now: list[Tensor] = []

    def hook(name: str) -> Callable[..., None]:
        def grab(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            x = args[0].detach()
            flat = x.flatten(1).to(torch.float64)  # (B, *shape) -> (B, prod(shape))
            if name not in sums:
                shapes[name] = tuple(x.shape[1:])
                sums[name] = torch.zeros(num_classes, flat.shape[1], dtype=torch.float64, device=device)
            sums[name].index_add_(0, labels_now[0], flat)

        return grab

    handles = [modules[n].register_forward_hook(hook(n)) for n in align_layers]
    was_training = model.training
    model.eval()
    try:
        with Probe(model, layers, mode=mode, pool=pool) as probe:
            for x, y in batches:
                y = y.to(device)
                labels_now[:] = [y]
                probe.clear()
                model(x.to(device))
                for i, name in enumerate(layers):
                    pred = ncc_predict(probe.features[name], ncc_means[name])
                    correct[i] += (pred == y).sum()
                counts += torch.bincount(y, minlength=num_classes).to(torch.float64)
                seen += y.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    _all_reduce(correct)
    _all_reduce(seen)
    _all_reduce(counts)
    means = {}
    for name in align_layers:
        if name in sums:
            total = _all_reduce(sums[name])
            means[name] = (total / counts.clamp_min(1.0)[:, None]).reshape(num_classes, *shapes[name])
    acc = {name: float(correct[i] / seen.clamp_min(1.0)) for i, name in enumerate(layers)}
    return acc, means


@torch.no_grad()
def _lenient_measure(
    model: nn.Module, batches: Any, names: list[str], mode: str, pool: str, num_classes: int, device: torch.device
) -> tuple[dict[str, dict[str, float | None]], dict[str, Any]]:
    """Like :func:`nclens.core.measure.measure`, but a metric that is undefined for a degenerate layer
    (identical class means, an absent class) is recorded as ``None`` instead of stopping training."""
    from nclens.core.errors import UndefinedMetricWarning
    from nclens.core.measure import classifier_layers
    from nclens.core.metrics import compute_metrics
    from nclens.core.probe import Probe
    from nclens.core.stats import ClassStats

    stats = {n: ClassStats(num_classes, device=device) for n in names}
    was_training = model.training
    model.eval()
    try:
        with Probe(model, names, mode=mode, pool=pool) as probe:
            for x, y in batches:
                probe.clear()
                model(x.to(device))
                for n in names:
                    stats[n].update(probe.features[n], y.to(device))
    finally:
        model.train(was_training)
    for s in stats.values():
        s.all_reduce()
    heads = classifier_layers(model, names, mode, num_classes)
    metrics: dict[str, dict[str, float | None]] = {}
    for n in names:
        w = heads[n].weight.detach().to(torch.float64) if n in heads else None
        with warnings.catch_warnings():  # an undefined metric is logged as null in layers.jsonl
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            row = compute_metrics(stats[n].present(), w, on_undefined="nan")
        metrics[n] = {k: (None if math.isnan(v) else v) for k, v in row.items()}
    return metrics, stats


def measure_layers(
    model: nn.Module,
    train_batches: Any,
    test_batches: Any | None,
    *,
    layers: list[str] | None,
    mode: str = "input",
    pool: str = "avg",
    num_classes: int,
    device: torch.device,
    epoch: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-layer NC records (train and test splits) and weight spectra of ``model`` at one epoch.

    NC metrics come from :func:`nclens.core.measure.measure`; ``ncc_accuracy`` is the nearest-class-mean
    accuracy with *training* class means; train records of Linear/Conv2d layers add
    ``subspace_alignment`` and ``assoc_memory_alignment`` (from the training class means of the
    layer's raw input, :mod:`nclens.core.metrics.layers`).

    Returns:
        (layer records, spectrum records).
    """
    from nclens.core.measure import measure
    from nclens.core.metrics.layers import layer_alignment, weight_spectrum
    from nclens.core.probe import resolve_layers

    names = resolve_layers(model, layers)
    modules = dict(model.named_modules())
    align = [n for n in names if isinstance(modules[n], nn.Linear)
             or (isinstance(modules[n], nn.Conv2d) and modules[n].groups == 1)]
    splits: list[tuple[str, Any]] = [("train", train_batches)]
    if test_batches is not None:
        splits.append(("test", test_batches))
    records: list[dict[str, Any]] = []
    train_means: dict[str, Tensor] = {}
    for split, batches in splits:
        try:
            report = measure(model, batches, names, mode=mode, pool=pool, num_classes=num_classes,
                             device=device, progress=False)
            metrics, stats = report.metrics, report.stats
        except ValueError:  # a degenerate layer (e.g. dead units: identical class means)
            metrics, stats = _lenient_measure(model, batches, names, mode, pool, num_classes, device)
        if split == "train":
            train_means = {n: stats[n].means for n in names}
        acc, raw_means = _ncc_and_means(
            model, batches, names, mode, pool, train_means, align if split == "train" else [], num_classes, device
        )
        for index, name in enumerate(names):
            module = modules[name]
            rec: dict[str, Any] = {
                "epoch": epoch, "split": split, "layer": name, "index": index,
                "kind": type(module).__name__, "dim": stats[name].dim,
            }
            rec.update(metrics[name])
            rec["ncc_accuracy"] = acc[name]
            if name in raw_means:
                try:
                    rec.update(layer_alignment(module, raw_means[name], k=num_classes))
                except ValueError:  # e.g. all-zero input means at initialisation
                    rec.update({"subspace_alignment": None, "assoc_memory_alignment": None})
            records.append(rec)
    spectra = [
        {"epoch": epoch, "layer": n, "index": names.index(n),
         "singular_values": weight_spectrum(modules[n].weight.detach()).tolist()}
        for n in align
    ]
    return records, spectra


# -------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: the trained model and every logged record."""

    model: nn.Module
    run_dir: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    spectra: list[dict[str, Any]] = field(default_factory=list)

    def final_layers(self, split: str = "train") -> dict[str, dict[str, Any]]:
        """{layer: record} at the last measured epoch of ``split``."""
        recs = [r for r in self.layers if r["split"] == split]
        if not recs:
            return {}
        last = max(r["epoch"] for r in recs)
        return {r["layer"]: r for r in recs if r["epoch"] == last}


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_meta": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    pos, has_gauss, gauss = state["numpy_meta"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((3, tuple(int(v) for v in state["python"]), state["python_gauss"]))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Train ``config``'s model on its data and measure NC per layer at the configured epochs.

    Args:
        config: the experiment (sections data, model, optim, train).
        run_dir: folder for logs and checkpoints (``None``: nothing is written, no resume).
        data: pre-loaded data (default: :func:`load_data` of ``config.data``).
        prepare_model: called on the freshly built (seeded) model before the optimiser is built,
            e.g. to freeze layers (the fixed-ETF-layers experiment).
        step_hook: called as ``step_hook(epoch, step)`` after every optimiser step (monitoring,
            or simulating an interruption in tests).
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        data: DataBundle | None = None,
        prepare_model: Callable[[nn.Module], None] | None = None,
        step_hook: Callable[[int, int], None] | None = None,
    ) -> None:
        if not isinstance(config, ExperimentConfig):
            raise TypeError(f"config must be an ExperimentConfig, got {type(config).__name__}")
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._data = data
        self.prepare_model = prepare_model
        self.step_hook = step_hook

    # ------------------------------------------------------------------ helpers
    def _write(self, rank: int) -> bool:
        return self.run_dir is not None and rank == 0

    def _checkpoint(self, path: Path, epoch: int, model: nn.Module, opt: torch.optim.Optimizer,
                    distributed: bool, rank: int) -> None:
        rng = _rng_state()
        if distributed:
            import torch.distributed as dist

            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        if rank != 0:
            return
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rngs}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def _truncate_logs(self, epoch: int) -> None:
        """Drop log records of epochs after the checkpoint (written before an interruption)."""
        import json

        for name in (HISTORY, LAYERS, SPECTRA):
            path = self.run_dir / name
            records = read_jsonl(path)
            keep = [r for r in records if r["epoch"] <= epoch]
            if len(keep) != len(records):
                atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    # --------------------------------------------------------------------- fit
    def fit(self, resume: bool = False) -> TrainResult:
        """Train (or continue from ``run_dir/checkpoint.pt`` when ``resume``) and return the logs.

        Raises:
            FileNotFoundError: ``resume`` without a checkpoint in ``run_dir``.
        """
        cfg: TrainConfig = self.config.train
        initialised_here = _maybe_init_distributed()
        try:
            writes = self.run_dir is not None and _dist()[1] == 0
            with run_folder_lock(self.run_dir) if writes else contextlib.nullcontext():
                return self._fit(cfg, resume)
        finally:
            if initialised_here:
                import torch.distributed as dist

                dist.destroy_process_group()

    def _fit(self, cfg: TrainConfig, resume: bool) -> TrainResult:
        distributed, rank, world = _dist()
        device = resolve_device(cfg.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        seed_everything(cfg.seed)
        data = self._data if self._data is not None else load_data(self.config.data)
        k = data.num_classes
        model = build_model(self.config.model, data.input_shape, k)
        if self.prepare_model is not None:
            self.prepare_model(model)
        model.to(device)
        if distributed:  # global-batch BatchNorm statistics (parameters and state_dict keys unchanged)
            from nclens.train.distributed import convert_sync_batchnorm

            model = convert_sync_batchnorm(model, device)
        optimizer = build_optimizer(model.parameters(), self.config.optim)

        start_epoch = 0
        ckpt_path = self.run_dir / CHECKPOINT if self.run_dir is not None else None
        if resume:
            if ckpt_path is None or not ckpt_path.is_file():
                raise FileNotFoundError(f"cannot resume: no {CHECKPOINT} in run folder {str(self.run_dir)!r}")
            state = torch.load(ckpt_path, map_location=device, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            rngs = state["rng"]
            _set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
            start_epoch = int(state["epoch"])
            if self._write(rank):
                self._truncate_logs(start_epoch)
        if self._write(rank):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:  # a fresh start (e.g. a run stopped before its first checkpoint) starts clean logs
                self._truncate_logs(-1)

        x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
        x_te, y_te = data.x_test.to(device), data.y_test.to(device)
        n_train = x_tr.shape[0]
        epoch_now = [start_epoch]

        def train_order() -> Tensor:  # the same permutation on every rank
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch_now[0])
            return torch.randperm(n_train, generator=gen)

        augment = augment_batch if (self.config.data.augment and x_tr.ndim == 4) else None
        batch_size = self.config.data.batch_size
        train_batches: TensorBatches | BatchShares
        if distributed:
            train_batches = BatchShares(x_tr, y_tr, batch_size, train_order, rank=rank, world_size=world,
                                        transform=augment)
        else:
            train_batches = TensorBatches(x_tr, y_tr, batch_size, train_order, augment)
        bs_eval = self.config.data.eval_batch_size
        train_eval = eval_batches(x_tr, y_tr, bs_eval, rank, world)
        test_eval = eval_batches(x_te, y_te, bs_eval, rank, world)

        net: nn.Module = model
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        layers = list(cfg.layers) or None
        measured = set(cfg.measured_epochs())
        write = self._write(rank)

        def measure_now(epoch: int) -> None:
            recs, spectra = measure_layers(
                model, train_eval, test_eval if cfg.measure_test else None, layers=layers, mode=cfg.mode,
                pool=cfg.pool, num_classes=k, device=device, epoch=epoch,
            )
            if write:
                append_jsonl(self.run_dir / LAYERS, recs)
                append_jsonl(self.run_dir / SPECTRA, spectra)

        if start_epoch == 0 and 0 in measured:
            measure_now(0)

        steps = len(train_batches)
        base_lr = self.config.optim.lr
        from nclens.core.measure import progress_bar

        show = cfg.progress and rank == 0
        with progress_bar(show, f"training {self.config.name}", cfg.epochs - start_epoch) as advance:
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                epoch_now[0] = epoch
                started = time.perf_counter()
                net.train()
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                seen = 0
                for step, batch in enumerate(train_batches):
                    lr = base_lr * lr_factor(epoch - 1 + step / steps, self.config.optim, cfg.epochs, steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    if distributed:
                        # rank loss (R/B)·Σ_share ℓ: DDP's mean over ranks is the global batch mean's gradient
                        xb, yb, n_global = batch
                        share_sum = classification_loss(net(xb), yb, cfg.loss, cfg.label_smoothing, reduction="sum")
                        loss = share_sum * (world / n_global)
                        local = share_sum.detach().to(torch.float64)
                        check = _all_reduce(local.clone()) / n_global  # the same value (and verdict) on all ranks
                    else:
                        xb, yb = batch
                        loss = classification_loss(net(xb), yb, cfg.loss, cfg.label_smoothing)
                        local = loss.detach().to(torch.float64) * yb.shape[0]
                        check = loss
                    if not torch.isfinite(check):
                        raise FloatingPointError(
                            f"training loss became {float(check)} at epoch {epoch}, step {step}: "
                            f"lower optim.lr (now {base_lr})"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += local
                    seen += yb.shape[0]
                    if self.step_hook is not None:
                        self.step_hook(epoch, step)
                totals = _all_reduce(torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64,
                                                                           device=device)]))
                record: dict[str, Any] = {
                    "epoch": epoch, "lr": lr, "train_loss_running": float(totals[0] / totals[1]),
                }
                if cfg.eval_train:
                    record.update(_prefix("train", self._evaluate(model, train_eval, cfg, device)))
                record.update(_prefix("test", self._evaluate(model, test_eval, cfg, device)))
                record["seconds"] = time.perf_counter() - started
                if epoch in measured:
                    measure_now(epoch)
                if write:
                    append_jsonl(self.run_dir / HISTORY, [record])
                if ckpt_path is not None and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
                    self._checkpoint(ckpt_path, epoch, model, optimizer, distributed, rank)
                advance()
        if distributed:
            from nclens.train.distributed import revert_sync_batchnorm

            model = revert_sync_batchnorm(model)
        result = TrainResult(model=model, run_dir=self.run_dir)
        if self.run_dir is not None and rank == 0:
            result.history = read_jsonl(self.run_dir / HISTORY)
            result.layers = read_jsonl(self.run_dir / LAYERS)
            result.spectra = read_jsonl(self.run_dir / SPECTRA)
            write_json(self.run_dir / "summary.json", _summary(result, self.config))
        return result

    @staticmethod
    @torch.no_grad()
    def _evaluate(model: nn.Module, batches: TensorBatches, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
        was = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # [loss·n, correct, n]
        try:
            for xb, yb in batches:
                out = model(xb)
                loss = classification_loss(out, yb, cfg.loss, cfg.label_smoothing)
                sums += torch.stack([loss.to(torch.float64) * yb.shape[0],
                                     (out.argmax(1) == yb).sum().to(torch.float64),
                                     torch.tensor(float(yb.shape[0]), dtype=torch.float64, device=device)])
        finally:
            model.train(was)
        _all_reduce(sums)
        return {"loss": float(sums[0] / sums[2]), "accuracy": float(sums[1] / sums[2])}


def _prefix(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _summary(result: TrainResult, config: ExperimentConfig) -> dict[str, Any]:
    last = result.history[-1] if result.history else {}
    return {
        "name": config.name,
        "epochs": last.get("epoch"),
        "train_accuracy": last.get("train_accuracy"),
        "test_accuracy": last.get("test_accuracy"),
        "final_layers_train": result.final_layers("train"),
        "final_layers_test": result.final_layers("test"),
    }
