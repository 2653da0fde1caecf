"""Embedded datasets that need no network: scikit-learn's bundled digits and MNIST-1D.

Both return a :class:`Split` of float32 inputs and int64 labels with a seeded, stratified
train/test split; the thin :func:`as_dataset` wraps one side as a ``TensorDataset``.

Sources: the UCI optical-recognition digits bundled with scikit-learn (1,797 8×8 images, 10
classes); MNIST-1D (Greydanus & Kobak, 2020/2024), generated procedurally by the ``mnist1d``
package from its built-in templates.

Example:
    >>> from nclens.data import load_digits
    >>> split = load_digits(seed=0)
    >>> split.x_train.shape[1], int(split.y_train.max()) + 1
    (64, 10)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = ["Split", "load_digits", "load_mnist1d", "as_dataset", "stratified_split"]


@dataclass(frozen=True)
class Split:
    """Inputs and labels of a train/test split (tensors on the CPU)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def num_classes(self) -> int:
        """K, the number of distinct labels in the training split."""
        return int(torch.unique(self.y_train).numel())

    def subset_classes(self, classes: list[int] | tuple[int, ...], relabel: bool = True) -> Split:
        """Only the samples of ``classes``; labels renumbered 0..len−1 in the given order if ``relabel``."""
        lookup = torch.full((int(max(self.y_train.max(), self.y_test.max())) + 1,), -1, dtype=torch.long)
        for new, old in enumerate(classes):
            lookup[old] = new if relabel else old
        tr, te = lookup[self.y_train] >= 0, lookup[self.y_test] >= 0
        return Split(self.x_train[tr], lookup[self.y_train[tr]], self.x_test[te], lookup[self.y_test[te]])


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with the same class proportions in both, seeded."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1.0
    return (x_train - mean) / std, (x_test - mean) / std


def load_digits(test_fraction: float = 0.25, seed: int = 0, standardise: bool = True) -> Split:
    """scikit-learn's bundled digits (1,797 × 64, 10 classes), stratified split, per-pixel standardised.

    Args:
        test_fraction: share of each class held out for testing.
        seed: seed of the split.
        standardise: subtract the training mean and divide by the training std per pixel;
            otherwise pixels are scaled to [0, 1].
    """
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    x = bunch.data.astype(np.float64)
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, test_fraction, seed)
    if standardise:
        x_tr, x_te = _standardise(x[tr], x[te])
    else:
        x_tr, x_te = x[tr] / 16.0, x[te] / 16.0
    return Split(
        torch.from_numpy(x_tr.astype(np.float32)),
        torch.from_numpy(y[tr]),
        torch.from_numpy(x_te.astype(np.float32)),
        torch.from_numpy(y[te]),
    )


def load_mnist1d(num_samples: int = 5000, seed: int = 42, train_split: float = 0.8) -> Split:
    """MNIST-1D (40-dimensional sequences, 10 classes), generated locally by the ``mnist1d`` package.

    The generator seeds numpy's global state; it is saved and restored around the call.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    if num_samples < 20:
        raise ValueError(f"num_samples must be at least 20, got {num_samples}")
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = int(num_samples), int(seed), float(train_split)
    state = np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)
    return Split(
        torch.as_tensor(data["x"], dtype=torch.float32),
        torch.as_tensor(data["y"], dtype=torch.long),
        torch.as_tensor(data["x_test"], dtype=torch.float32),
        torch.as_tensor(data["y_test"], dtype=torch.long),
    )


def as_dataset(split: Split, train: bool = True) -> TensorDataset:
    """One side of a split as a ``TensorDataset`` of (input, label)."""
    return TensorDataset(split.x_train, split.y_train) if train else TensorDataset(split.x_test, split.y_test)
