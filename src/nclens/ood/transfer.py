"""Transfer (OOD generalisation) by linear probes on frozen features: full-split and seeded few-shot.

A probe trained on the whole transfer training split saturates on easy tasks, hiding differences in how
much of the new classes' structure a feature keeps; the few-shot probe (``shots_per_class`` labelled
samples of every transfer class, a seeded class-balanced draw, averaged over draws shared by every
model) keeps them visible (issue 6).

Example:
    >>> import torch
    >>> few_shot_indices(torch.tensor([0, 0, 1, 1, 1]), 1, draws=2).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nclens.ood.probes import LinearProbe

__all__ = ["few_shot_indices", "transfer_accuracy"]


def few_shot_indices(labels: Tensor, shots_per_class: int, draws: int, seed: int = 0) -> Tensor:
    """Seeded, class-balanced few-shot draws: ``shots_per_class`` indices of every class, per draw.

    Draw ``i`` permutes the samples with ``torch.Generator().manual_seed(seed + i)``, then keeps,
    in permuted order, the first ``shots_per_class`` samples of each class (a stable sort of the
    permuted labels groups each class; a sample's rank inside its group is its position minus the
    group's start). Each draw is thus a uniform random subset of size ``shots_per_class`` of every
    class, independent of the other classes.

    Args:
        labels: (N,) integer labels.
        shots_per_class: samples kept per class (every class must have at least that many).
        draws: number of draws.
        seed: seed of draw 0.

    Returns:
        (draws, K·shots_per_class) int64 indices into ``labels``, each row sorted by class then by
        the draw's random order.

    Example:
        >>> idx = few_shot_indices(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]), 2, draws=3)
        >>> idx.shape, torch.bincount(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])[idx[0]]).tolist()
        (torch.Size([3, 6]), [2, 2, 2])
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(
            f"labels must be a 1-D integer tensor, got dtype {labels.dtype} and shape {tuple(labels.shape)}"
        )
    if not isinstance(shots_per_class, int) or shots_per_class < 1:
        raise ValueError(f"shots_per_class must be a positive integer, got {shots_per_class!r}")
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    if (counts < shots_per_class).any():
        short = {int(c): int(n) for c, n in zip(classes, counts) if n < shots_per_class}
        raise ValueError(f"shots_per_class={shots_per_class} exceeds the samples of classes {short} (class: count)")
    starts = torch.cumsum(counts, 0) - counts  # (K,) first position of each class after the sort
    n = labels.shape[0]
    out = []
    for d in range(draws):  # a handful of draws; the work inside is vectorised
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + d))  # (N,)
        order = torch.sort(labels[perm], stable=True).indices  # (N,) groups classes, keeps perm order
        grouped = perm[order]  # (N,) sample indices, class-sorted
        cls = torch.searchsorted(classes, labels[grouped])  # (N,) class index of each position
        rank = torch.arange(n) - starts[cls]  # (N,) rank inside its class
        out.append(grouped[rank < shots_per_class])
    return torch.stack(out)  # (draws, K·shots)


def transfer_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    shots_per_class: int | None = None,
    draws: int = 1,
    seed: int = 0,
    probe: Callable[[int], Any] | None = None,
) -> tuple[float, float]:
    """Linear-probe transfer accuracy, full-split or few-shot (mean over draws).

    acc = (1/R) Σ_r mean_{(h, y) ∈ test} [argmax_k probe_r(h)_k = y], probe_r fitted on draw r of
    :func:`few_shot_indices` (R = ``draws``), or on the whole training split when ``shots_per_class``
    is ``None`` (R = 1). ``probe(r)`` builds the probe of draw r (default: a
    :class:`~nclens.ood.probes.LinearProbe`; the experiment passes seeded :class:`AdamWProbe` s for the
    paper protocol).

    Returns:
        ``(mean accuracy, std over draws)`` (std 0 for the full split).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 4
        >>> x = torch.randn(200, 8, generator=g) + 3 * torch.eye(4, 8)[y]
        >>> acc, _ = transfer_accuracy(x[:100], y[:100], x[100:], y[100:], shots_per_class=5, draws=3)
        >>> acc > 0.8
        True
    """
    build = probe if probe is not None else (lambda r: LinearProbe())
    if shots_per_class is None:
        fitted = build(0).fit(train_features, train_labels)
        return float(fitted.score(test_features, test_labels)), 0.0
    idx = few_shot_indices(torch.as_tensor(train_labels), shots_per_class, draws, seed)
    accs = np.array(
        [build(r).fit(train_features[rows], train_labels[rows]).score(test_features, test_labels)
         for r, rows in enumerate(idx)],
        dtype=np.float64,
    )
    return float(accs.mean()), float(accs.std())
