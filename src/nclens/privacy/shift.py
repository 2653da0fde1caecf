"""Feature shift: how far (normalised) features are from their ideal simplex-ETF positions.

Wang, Zhu, Su & Wang (ICML 2024, "Neural Collapse meets Differential Privacy") show that the error of
a privately trained last layer stops depending on the feature dimension once the features are close
enough to the ideal, collapsed ones. This module measures that distance.

Definition (``normalise="global"``, the default). With class means μ_c, μ_G = (1/K) Σ_c μ_c and the
RMS class-mean radius r = (mean_c ‖μ_c − μ_G‖²)^{1/2}, the normalised features are
h̃_i = (h_i − μ_G)/r. The ideal positions are the K unit vertices e_c of a simplex ETF, placed by the
best orthogonal alignment R (D×(K−1), orthonormal columns)::

    R* = argmin_R Σ_i ‖h̃_i − R e_{y_i}‖²,
    shift = ( (1/N) Σ_i ‖h̃_i − R* e_{y_i}‖² )^{1/2}.

Since Σ_i ‖h̃_i − R e_{y_i}‖² = Σ_i ‖h̃_i − μ̃_{y_i}‖² + Σ_c n_c ‖μ̃_c − R e_c‖², the alignment is the
weighted orthogonal Procrustes problem of the class means (Schönemann 1966): with
A = Σ_c n_c μ̃_c e_cᵀ = U S Vᵀ (thin SVD), R* = U Vᵀ. Hence shift² = within² + means², where
within² = Σ_c Σ_{i∈c} ‖h_i − μ_c‖²/(N r²) and means² = Σ_c (n_c/N) ‖μ̃_c − R* e_c‖² — both
functions of :class:`~nclens.core.stats.ClassStats` alone (one pass, mergeable, any layer).

``normalise="sample"`` centres on μ_G and scales every feature to unit norm (the paper's feature
normalisation) before the same alignment; it needs the samples (:func:`feature_shift`).

Example:
    >>> import torch
    >>> from nclens.core.geometry import simplex_etf
    >>> from nclens.privacy import feature_shift
    >>> means = simplex_etf(4, 16, radius=3.0, seed=0)          # exact ETF features, any scale
    >>> y = torch.arange(40) % 4
    >>> round(feature_shift(means[y] + 5.0, y).rms, 10)
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nclens.core.geometry import simplex_etf
from nclens.core.metrics import centred_means
from nclens.core.stats import ClassStats, validate_features, validate_labels

__all__ = [
    "FeatureShift",
    "ideal_etf",
    "etf_alignment",
    "feature_shift_from_stats",
    "feature_shift",
    "layer_feature_shift",
]

_NORMALISE = ("global", "sample")


@dataclass(frozen=True)
class FeatureShift:
    """Distance of features to their aligned ideal ETF positions (after normalisation).

    Attributes:
        rms: ((1/N) Σ_i ‖h̃_i − R* e_{y_i}‖²)^{1/2}, the feature shift.
        means: (Σ_c (n_c/N) ‖μ̃_c − R* e_c‖²)^{1/2}, the part due to class means off the ETF.
        within: ((1/N) Σ_i ‖h̃_i − μ̃_{y_i}‖²)^{1/2}, the part due to within-class spread.
        radius: the normalisation radius r (``"global"``) or 1.0 (``"sample"``).
        normalise: ``"global"`` or ``"sample"``.
        max: max_i ‖h̃_i − R* e_{y_i}‖ (only when computed from samples, else ``None``).
        per_sample: the N distances (only from samples, else ``None``).
    """

    rms: float
    means: float
    within: float
    radius: float
    normalise: str
    max: float | None = None
    per_sample: Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """Scalars only (no per-sample tensor), JSON-ready."""
        return {
            "feature_shift": self.rms,
            "feature_shift_means": self.means,
            "feature_shift_within": self.within,
            "feature_shift_max": self.max,
            "feature_shift_radius": self.radius,
            "feature_shift_normalise": self.normalise,
        }


def ideal_etf(num_classes: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """The K unit vertices of a simplex ETF in R^{K−1} (K×(K−1)), in a fixed canonical frame."""
    return simplex_etf(num_classes, num_classes - 1, radius=1.0, seed=None, dtype=dtype)


def etf_alignment(means: Tensor, weights: Tensor | None = None) -> Tensor:
    """Ideal ETF vertices best aligned (orthogonally) with ``means``: rows R* e_c (K×D).

    Solves R* = argmin_R Σ_c w_c ‖μ_c − R e_c‖² over D×(K−1) matrices with orthonormal columns
    (weighted orthogonal Procrustes; Schönemann 1966): A = Σ_c w_c μ_c e_cᵀ = U S Vᵀ, R* = U Vᵀ.

    Args:
        means: (K, D) class means (already centred and normalised), D >= K−1.
        weights: (K,) nonnegative class weights (default: equal).

    Example:
        >>> import torch
        >>> from nclens.privacy.shift import etf_alignment, ideal_etf
        >>> from nclens.core.geometry import random_orthonormal
        >>> m = ideal_etf(3) @ random_orthonormal(5, 2, seed=1).T      # rotated ETF in R^5
        >>> torch.allclose(etf_alignment(m), m)
        True
    """
    if means.ndim != 2:
        raise ValueError(f"means must be 2-D (K×D), got shape {tuple(means.shape)}")
    k, d = means.shape
    if k < 2:
        raise ValueError(f"an ETF alignment needs K >= 2 classes, got K={k}")
    if d < k - 1:
        raise ValueError(f"an ETF of K={k} classes needs feature dimension D >= K-1 = {k - 1}, got D={d}")
    m = means.to(torch.float64)
    w = torch.ones(k, dtype=torch.float64, device=m.device) if weights is None else weights.to(m)
    if w.shape != (k,) or bool((w < 0).any()):
        raise ValueError(f"weights must be {k} nonnegative numbers, got shape {tuple(w.shape)}")
    e = ideal_etf(k).to(m.device)  # (K, K-1)
    a = (m * w[:, None]).T @ e  # (D, K-1) = Σ_c w_c μ_c e_cᵀ
    u, _, vh = torch.linalg.svd(a, full_matrices=False)  # u (D, K-1), vh (K-1, K-1)
    rot = u @ vh  # (D, K-1), orthonormal columns
    return e @ rot.T  # (K, D)


def feature_shift_from_stats(stats: ClassStats) -> FeatureShift:
    """Feature shift (global normalisation) from per-class statistics alone.

    shift² = Σ_c Σ_{i∈c} ‖h_i − μ_c‖²/(N r²) + Σ_c (n_c/N) ‖(μ_c − μ_G)/r − R* e_c‖², with μ_G the
    mean of class means and r² = mean_c ‖μ_c − μ_G‖² (module docstring; Wang et al. 2024).

    Args:
        stats: :class:`~nclens.core.stats.ClassStats` of one layer (``scatter="full"`` or ``"trace"``),
            at least 2 classes, none empty, dimension D >= K−1.

    Example:
        >>> import torch
        >>> from nclens.core.stats import ClassStats
        >>> from nclens.data import gaussian_features
        >>> f = gaussian_features(num_classes=4, dim=8, per_class=500, sigma=0.1, seed=0)
        >>> s = feature_shift_from_stats(ClassStats(num_classes=4).update(f.features, f.labels))
        >>> abs(s.within - 0.1 * 8 ** 0.5) < 0.01                # ≈ σ √D / r with r = 1
        True
    """
    if not isinstance(stats, ClassStats):
        raise TypeError(f"expected ClassStats, got {type(stats).__name__}")
    m = centred_means(stats)  # (K, D), checks K >= 2 and no empty class
    r2 = float(m.square().sum(1).mean())
    if r2 <= 0.0:
        raise ValueError("all class means coincide (radius 0): the feature shift is undefined")
    r = math.sqrt(r2)
    m_tilde = m / r
    counts = stats.counts.to(torch.float64)
    n = float(counts.sum())
    ideal = etf_alignment(m_tilde, counts)  # (K, D)
    means_sq = float((counts * (m_tilde - ideal).square().sum(1)).sum()) / n
    within_sq = float(stats.class_sq.sum()) / (n * r2)
    return FeatureShift(
        rms=math.sqrt(within_sq + means_sq),
        means=math.sqrt(means_sq),
        within=math.sqrt(within_sq),
        radius=r,
        normalise="global",
    )


def feature_shift(
    features: Tensor, labels: Tensor, *, normalise: str = "global", num_classes: int | None = None
) -> FeatureShift:
    """Feature shift of samples, with per-sample distances and their maximum.

    ``"global"``: h̃_i = (h_i − μ_G)/r (see :func:`feature_shift_from_stats`, which this equals in
    ``rms``). ``"sample"``: h̃_i = (h_i − μ_G)/‖h_i − μ_G‖ (unit-norm features, the feature
    normalisation of Wang et al. 2024); the alignment then uses the class means of h̃.

    Args:
        features: (N, D) floating features.
        labels: (N,) integer labels (arbitrary integers; classes are the distinct values).
        normalise: ``"global"`` or ``"sample"``.
        num_classes: K when labels are ``0..K−1`` and every class must be present.
    """
    if normalise not in _NORMALISE:
        raise ValueError(f"normalise must be one of {_NORMALISE}, got {normalise!r}")
    x = validate_features(features).to(torch.float64)
    y = validate_labels(labels, x.shape[0])
    stats = ClassStats(num_classes=num_classes, scatter="trace").update(x, y)
    index = torch.searchsorted(stats.label_values, y.to(stats.label_values.device))  # (N,) row of each label
    centred = centred_means(stats)  # (K, D); checks K >= 2 and no empty class
    mu_g = stats.means.mean(0)  # (D,)
    if normalise == "global":
        r = math.sqrt(float(centred.square().sum(1).mean()))
        if r == 0.0:
            raise ValueError("all class means coincide (radius 0): the feature shift is undefined")
        xt = (x - mu_g) / r  # (N, D)
    else:
        r = 1.0
        norms = (x - mu_g).norm(dim=1, keepdim=True)  # (N, 1)
        if bool((norms == 0).any()):
            raise ValueError("a feature equals the global mean, so it cannot be normalised to unit norm")
        xt = (x - mu_g) / norms
    k = stats.n_classes
    counts = torch.bincount(index, minlength=k).to(torch.float64)
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, index, xt)
    means_t = sums / counts[:, None]  # (K, D) class means of h̃
    ideal = etf_alignment(means_t, counts)  # (K, D)
    dist = (xt - ideal[index]).norm(dim=1)  # (N,)
    within_sq = float((xt - means_t[index]).square().sum()) / x.shape[0]
    means_sq = float((counts * (means_t - ideal).square().sum(1)).sum()) / x.shape[0]
    return FeatureShift(
        rms=math.sqrt(float(dist.square().mean())),
        means=math.sqrt(means_sq),
        within=math.sqrt(within_sq),
        radius=r,
        normalise=normalise,
        max=float(dist.max()),
        per_sample=dist,
    )


def layer_feature_shift(source: Any) -> dict[str, FeatureShift]:
    """Feature shift of every measured layer.

    Args:
        source: a :class:`~nclens.core.measure.CollapseReport` (anything with a ``.stats`` mapping) or a
            mapping ``layer name -> ClassStats``.

    Returns:
        ``{layer: FeatureShift}`` (global normalisation), in the source's order.
    """
    stats = getattr(source, "stats", source)
    if not isinstance(stats, Mapping):
        raise TypeError(
            f"expected a CollapseReport or a mapping layer -> ClassStats, got {type(source).__name__}"
        )
    return {str(name): feature_shift_from_stats(s) for name, s in stats.items()}
