"""NC metrics against closed forms and an independent float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from nclens.core.geometry import etf_dist, etf_gram, simplex_etf
from nclens.core.metrics import cdnv as cdnv_metric
from nclens.core.metrics import (
    compute_metrics,
    nc1,
    nc1_trace,
    nc2_equiangular,
    nc2_equinorm,
    nc2_etf,
    nc3_duality,
    nc4_ncc_mismatch,
    within_share,
)
from nclens.core.stats import ClassStats
from nclens.data import expected_nc1, gaussian_features
from reference import reference_metrics

ZERO_AT_ETF = ["nc1", "nc1_trace", "within_share", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_etf",
               "nc2_equinorm_w", "nc2_equiangular_w", "nc2_etf_w", "nc3_duality", "nc3_etf"]


@pytest.mark.parametrize("k, d", [(2, 2), (4, 3), (5, 16), (10, 64)])
def test_exact_simplex_etf_scores_zero(k, d):
    means = simplex_etf(k, d, radius=3.0, seed=k)
    y = torch.arange(20 * k) % k
    stats = ClassStats(num_classes=k).update(means[y], y)
    metrics = compute_metrics(stats, weight=means / 3.0)
    for name in ZERO_AT_ETF:
        assert abs(metrics[name]) < 1e-10, (name, metrics[name])
    assert nc4_ncc_mismatch(means[y], means, torch.zeros(k, dtype=torch.float64), stats.means) == 0.0


def test_etf_gram_closed_form():
    g = etf_gram(5)
    assert torch.allclose(torch.linalg.matrix_norm(g), torch.tensor(1.0, dtype=torch.float64))
    m = simplex_etf(5, 9, seed=1)
    cos = (m @ m.T)[~torch.eye(5, dtype=torch.bool)]
    assert torch.allclose(cos, torch.full_like(cos, -1 / 4))
    assert float(etf_dist(torch.eye(5, dtype=torch.float64))) > 0.1


@pytest.mark.parametrize("k, sigma, radius", [(4, 0.3, 2.0), (10, 0.05, 1.0)])
def test_nc1_gaussian_closed_form(k, sigma, radius):
    """ETF means of radius r + N(0, σ²I): nc1 → σ²(K−1)²/(K r²) (up to sampling error)."""
    data = gaussian_features(k, 32, 4000, radius=radius, sigma=sigma, seed=7, dtype=torch.float64)
    value = nc1(ClassStats(num_classes=k).update(data.features, data.labels))
    expected = expected_nc1(k, radius, sigma)
    # relative sampling error of a Σ_W quadratic form ≈ sqrt(2/N) plus the noise in the means
    assert abs(value - expected) / expected < 0.03


@pytest.mark.parametrize("imbalance", [1.0, 10.0])
@pytest.mark.parametrize("k, d", [(5, 12), (12, 6)])  # includes K > D (K−1 >= D)
def test_metrics_match_reference(k, d, imbalance):
    g = torch.Generator().manual_seed(4)
    if d >= k - 1:
        data = gaussian_features(k, d, 60, radius=2.0, sigma=0.7, imbalance=imbalance, seed=11, dtype=torch.float64)
        x, y = data.features, data.labels
    else:  # K > D: no simplex fits; random means, imbalanced counts
        counts = torch.linspace(60, 60 / imbalance, k).round().long()
        y = torch.repeat_interleave(torch.arange(k), counts)
        x = 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)[y] + 0.7 * torch.randn(
            y.numel(), d, generator=g, dtype=torch.float64
        )
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    b = torch.randn(k, generator=g, dtype=torch.float64)
    stats = ClassStats(num_classes=k)
    for i in range(0, x.shape[0], 50):
        stats.update(x[i : i + 50], y[i : i + 50])
    ours = compute_metrics(stats, weight=w)
    ours["nc4_ncc_mismatch"] = nc4_ncc_mismatch(x, w, b, stats.means)
    ref = reference_metrics(x.numpy(), y.numpy(), w.numpy(), b.numpy())
    for name, value in ref.items():
        assert math.isclose(ours[name], value, rel_tol=1e-8, abs_tol=1e-12), (name, ours[name], value)


def test_nc1_large_d_uses_mean_subspace():
    """D >> K: nc1 equals the reference without ever inverting D×D."""
    data = gaussian_features(3, 400, 30, radius=5.0, sigma=0.5, seed=2, dtype=torch.float64)
    stats = ClassStats(num_classes=3).update(data.features, data.labels)
    ref = reference_metrics(data.features.numpy(), data.labels.numpy())
    assert math.isclose(nc1(stats), ref["nc1"], rel_tol=1e-8)


def test_weighted_global_mean_option():
    data = gaussian_features(4, 8, 50, imbalance=5.0, seed=3, dtype=torch.float64)
    stats = ClassStats(num_classes=4).update(data.features, data.labels)
    assert nc1_trace(stats) != nc1_trace(stats, weighted=True)
    assert 0 < within_share(stats) < 1


def test_errors():
    x = torch.randn(10, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="at least 2 classes"):
        nc1(ClassStats(num_classes=1).update(x, torch.zeros(10, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"classes \[2\] have no samples"):
        nc1(ClassStats(num_classes=3).update(x, torch.arange(10) % 2))
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 2])  # class 2 has a single sample
    with pytest.raises(ValueError, match="at least 2 samples per class"):
        cdnv_metric(ClassStats(num_classes=3).update(x, y))
    stats = ClassStats(num_classes=3).update(x, torch.arange(10) % 3)
    with pytest.raises(ValueError, match="weight has 2 rows but there are K=3"):
        nc3_duality(stats, torch.randn(2, 3))
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(stats, names=["nc9"])
    with pytest.raises(ValueError, match="all class means coincide"):
        nc1(ClassStats(num_classes=2).update(torch.ones(4, 2), torch.tensor([0, 1, 0, 1])))


def test_nc2_values_on_hand_made_case():
    """Two classes at ±e1 and a third at 2·e2: hand-computed equinorm and equiangularity."""
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    stats = ClassStats(num_classes=3).update(means[y], y)
    mbar = means - means.mean(0)
    norms = mbar.norm(dim=1)
    assert math.isclose(nc2_equinorm(stats), float(norms.std(correction=0) / norms.mean()), rel_tol=1e-12)
    cos = (mbar @ mbar.T) / torch.outer(norms, norms)
    pairs = [abs(float(cos[i, j]) + 0.5) for i in range(3) for j in range(3) if i != j]
    assert math.isclose(nc2_equiangular(stats), sum(pairs) / 6, rel_tol=1e-12)
    assert nc2_etf(stats) > 0
