"""GNC2 (hyperspherical uniformity), UNC3 (uniform duality), NC5 (OOD orthogonality), per-pair CDNV:
closed forms, direct float64 loops, block-size invariance, the registry."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import nclens.core.metrics.extra as extra
from nclens.core.errors import UndefinedMetricError
from nclens.core.geometry import simplex_etf
from nclens.core.metrics import cdnv, compute_metrics
from nclens.core.metrics.registry import get_metric
from nclens.core.stats import ClassStats


def _stats(means: torch.Tensor, noise: float = 0.0, per: int = 6, seed: int = 0) -> ClassStats:
    k, d = means.shape
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k * per) % k
    x = means[y] + noise * torch.randn(k * per, d, generator=g, dtype=torch.float64)
    return ClassStats(k).update(x, y)


def _unit_centred(stats: ClassStats) -> np.ndarray:
    m = stats.means.numpy()
    m = m - m.mean(0)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


@pytest.mark.parametrize("k,d", [(3, 5), (6, 8), (10, 10)])
def test_gnc2_on_a_simplex_etf_is_closed_form(k, d):
    s = _stats(simplex_etf(k, d, radius=3.0))
    dist = math.sqrt(2 * k / (k - 1))  # ‖μ̂_c − μ̂_c′‖ for cos = −1/(K−1)
    assert extra.hyperspherical_uniformity(s, "log", reduction="var") == pytest.approx(0.0, abs=1e-20)
    assert extra.hyperspherical_uniformity(s, "log", reduction="mean") == pytest.approx(-math.log(dist), rel=1e-12)
    assert extra.hyperspherical_uniformity(s, "riesz", reduction="mean") == pytest.approx(dist ** -(d - 2), rel=1e-12)
    assert extra.hyperspherical_uniformity(s, "riesz", reduction="var") == pytest.approx(0.0, abs=1e-20)


def test_gnc2_equals_direct_loops_and_does_not_depend_on_blocks(monkeypatch):
    s = _stats(torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), noise=0.3)
    u = _unit_centred(s)
    for kernel in ("log", "riesz"):
        vals = []
        for i, j in itertools.combinations(range(7), 2):
            dij = np.linalg.norm(u[i] - u[j])
            vals.append(-np.log(dij) if kernel == "log" else dij ** -(5 - 2))
        vals = np.array(vals)
        assert extra.hyperspherical_uniformity(s, kernel, reduction="mean") == pytest.approx(vals.mean(), rel=1e-12)
        assert extra.hyperspherical_uniformity(s, kernel, reduction="var") == pytest.approx(vals.var(), rel=1e-10)
        monkeypatch.setattr(extra, "_BLOCK_ELEMENTS", 8)  # rows one at a time: Chan merges of many blocks
        assert extra.hyperspherical_uniformity(s, kernel, reduction="var") == pytest.approx(vals.var(), rel=1e-10)
        monkeypatch.undo()
    assert extra.hyperspherical_uniformity(s, "riesz", s=1.0, reduction="mean") == pytest.approx(
        np.mean([1 / np.linalg.norm(u[i] - u[j]) for i, j in itertools.combinations(range(7), 2)]), rel=1e-12)


def test_unc3_closed_forms():
    means = simplex_etf(4, 6, radius=2.0)
    s = _stats(means)
    mbar = s.means - s.means.mean(0)
    assert extra.uniform_duality(s, mbar) == pytest.approx(0.0, abs=1e-24)  # exact, equinorm duality
    scales = torch.tensor([1.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    dots = scales * mbar.square().sum(1)
    assert extra.uniform_duality(s, scales[:, None] * mbar) == pytest.approx(float(dots.var(correction=1)), rel=1e-12)
    assert extra.uniform_duality(s, scales[:, None] * mbar, cos=True) == pytest.approx(0.0, abs=1e-24)
    w = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cos = (w * mbar).sum(1) / (w.norm(dim=1) * mbar.norm(dim=1))
    assert extra.uniform_duality(s, w, cos=True) == pytest.approx(float(np.var(cos.numpy(), ddof=1)), rel=1e-12)


def test_nc5_closed_forms():
    means = torch.eye(3, 5, dtype=torch.float64) * 2.0  # class means along e1, e2, e3 (uncentred)
    s = _stats(means)
    assert extra.nc5_ood_orthogonality(s, torch.tensor([0, 0, 0, 1.0, 1.0])) == pytest.approx(0.0, abs=1e-15)
    assert extra.nc5_ood_orthogonality(s, torch.tensor([1.0, 0, 0, 0, 0])) == pytest.approx(1 / 3, rel=1e-12)
    ood = torch.tensor([1.0, 1.0, 1.0, 0, 0])
    assert extra.nc5_ood_orthogonality(s, ood) == pytest.approx(1 / math.sqrt(3), rel=1e-12)
    with pytest.raises(ValueError, match="dimension 2 but the features have D=5"):
        extra.nc5_ood_orthogonality(s, torch.ones(2))
    with pytest.raises(UndefinedMetricError):
        extra.nc5_ood_orthogonality(s, torch.zeros(5))


def test_per_pair_cdnv(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(90, 4, generator=g, dtype=torch.float64)
    y = torch.arange(90) % 5
    x = x + 3.0 * torch.randn(5, 4, generator=g, dtype=torch.float64)[y]
    s = ClassStats(5).update(x, y)
    matrix = extra.cdnv_pairs(s, "none")
    mu = torch.stack([x[y == c].mean(0) for c in range(5)])
    var = torch.stack([(x[y == c] - mu[c]).square().sum(1).mean() for c in range(5)])
    for i, j in itertools.permutations(range(5), 2):
        expected = (var[i] + var[j]) / (2 * (mu[i] - mu[j]).square().sum())
        assert float(matrix[i, j]) == pytest.approx(float(expected), rel=1e-12)
    assert torch.isnan(matrix.diagonal()).all()
    assert extra.cdnv_pairs(s, "mean") == pytest.approx(cdnv(s), rel=1e-12)
    off = matrix[~torch.eye(5, dtype=torch.bool)]
    assert extra.cdnv_pairs(s, "max") == float(off.max()) and extra.cdnv_pairs(s, "min") == float(off.min())
    monkeypatch.setattr(extra, "_BLOCK_ELEMENTS", 7)
    assert torch.allclose(extra.cdnv_pairs(s, "none"), matrix, equal_nan=True)
    with pytest.raises(UndefinedMetricError, match="at least 2 samples"):
        extra.cdnv_pairs(ClassStats(2).update(x[:3], torch.tensor([0, 0, 1])))


def test_registered_opt_in():
    for name in ("gnc2_log", "gnc2_log_energy", "gnc2_riesz", "gnc2_riesz_energy", "unc3_uniform_duality",
                 "unc3_uniform_duality_cos", "nc5_ood_orthogonality", "cdnv_max"):
        spec = get_metric(name)
        assert not spec.default and spec.source and spec.definition
    assert get_metric("cdnv_max").min_per_class == 2 and get_metric("unc3_uniform_duality").needs == {"weight"}
    s = _stats(simplex_etf(4, 6, radius=2.0), noise=0.1)
    got = compute_metrics(s, names=["gnc2_log", "cdnv_max"])
    assert got["gnc2_log"] == extra.hyperspherical_uniformity(s, "log") and "nc1" not in compute_metrics(
        s, names=["cdnv_max"])
