"""Seeded generator of Gaussian-mixture features around simplex-ETF class means.

h_i = offset + μ_{y_i} + σ ε_i, ε_i ~ N(0, I_D), μ_c the vertices of a simplex ETF of radius r in a
random K-dimensional (or (K−1)-dimensional when D = K−1) subspace of R^D. For this model
Σ_W → σ² I and Σ_B = (r²/(K−1)) P with P the projector onto the ETF span (rank K−1), hence
NC1 = Tr(Σ_W Σ_B⁺)/K → σ²(K−1)²/(K r²) (the ground truth of the tests).

Example:
    >>> from nclens.data import gaussian_features
    >>> feats = gaussian_features(num_classes=4, dim=8, per_class=10, sigma=0.1, seed=0)
    >>> tuple(feats.features.shape), int(feats.labels.max())
    ((40, 8), 3)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nclens.core.geometry import simplex_etf

__all__ = ["GaussianFeatures", "gaussian_features", "expected_nc1"]


@dataclass(frozen=True)
class GaussianFeatures:
    """Generated features, labels and the true class means (and the ETF classifier W = means/r)."""

    features: Tensor
    labels: Tensor
    means: Tensor
    weight: Tensor


def expected_nc1(num_classes: int, radius: float, sigma: float) -> float:
    """Population NC1 of the model: σ²(K−1)²/(K r²)."""
    k = num_classes
    return sigma**2 * (k - 1) ** 2 / (k * radius**2)


def gaussian_features(
    num_classes: int = 10,
    dim: int = 32,
    per_class: int | list[int] = 100,
    *,
    radius: float = 1.0,
    sigma: float = 0.1,
    offset: float = 0.0,
    imbalance: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> GaussianFeatures:
    """Draw ETF-mean Gaussian-mixture features.

    Args:
        num_classes: K >= 2.
        dim: D >= K−1.
        per_class: samples per class (an int, or a list of K counts).
        radius: ‖μ_c‖ of the ETF vertices (around ``offset``).
        sigma: within-class standard deviation per coordinate.
        offset: a constant added to every coordinate (a large offset tests numerical stability).
        imbalance: ratio of the largest to the smallest class; counts fall geometrically from
            ``per_class`` (an int) down to ``per_class / imbalance``.
        seed: seed of the draw (rotation and noise).
        dtype: dtype of the returned features.
    """
    k = int(num_classes)
    if k < 2:
        raise ValueError(f"num_classes must be >= 2, got {k}")
    if imbalance < 1.0:
        raise ValueError(f"imbalance must be >= 1 (largest/smallest class), got {imbalance}")
    if isinstance(per_class, int):
        ratios = torch.logspace(0, -torch.log10(torch.tensor(float(imbalance))).item(), k, dtype=torch.float64)
        counts = [max(1, int(round(per_class * float(r)))) for r in ratios]
    else:
        counts = [int(c) for c in per_class]
        if len(counts) != k or min(counts) < 1:
            raise ValueError(f"per_class must list {k} positive counts, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    means = simplex_etf(k, dim, radius=radius, seed=seed)  # (K, D)
    labels = torch.repeat_interleave(torch.arange(k), torch.tensor(counts))
    labels = labels[torch.randperm(labels.numel(), generator=gen)]
    noise = torch.randn(labels.numel(), dim, generator=gen, dtype=torch.float64)
    feats = offset + means[labels] + sigma * noise
    return GaussianFeatures(feats.to(dtype), labels, means + offset, means / radius)
