"""The intermediate-NC experiment's data: embedded (digits, MNIST-1D) or torchvision datasets from a local root.

Example:
    >>> from nclens.intermediate.config import DataConfig
    >>> b = load_data(DataConfig(name="digits"))
    >>> b.input_shape, b.num_classes, b.x_train.shape[1]
    ((1, 8, 8), 10, 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nclens.intermediate.config import DataConfig

__all__ = ["DataBundle", "load_data"]


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
