"""The orthogonal-frame metrics and the official tracker's SNR/alignment: closed forms and direct float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch

from nclens.core.errors import UndefinedMetricError
from nclens.core.geometry import simplex_etf
from nclens.core.metrics import compute_metrics, get_metric
from nclens.core.metrics.orthogonal import nc1_snr, nc2_of, nc2_of_w, nc3_duality_uncentred, nc3_of, of_dist
from nclens.core.stats import ClassStats

NAMES = ["nc2_of", "nc2_of_w", "nc3_of", "nc3_duality_uncentred", "nc1_snr"]


def _stats(x: torch.Tensor, y: torch.Tensor, k: int) -> ClassStats:
    return ClassStats(num_classes=k).update(x, y)


def _of_of_etf(k: int) -> float:
    """‖ETF_K − I/√K‖_F in closed form (see the test below)."""
    return math.sqrt(k * (math.sqrt(k - 1) / k - 1 / math.sqrt(k)) ** 2 + 1 / k)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_orthogonal_frame_is_zero_and_the_simplex_has_its_closed_form_distance(k):
    y = torch.arange(6 * k) % k
    ortho = _stats(3.0 * torch.eye(k, dtype=torch.float64)[y], y, k)  # means 3 e_c: an orthogonal frame
    assert nc2_of(ortho) == pytest.approx(0.0, abs=1e-12)
    assert nc2_of_w(torch.eye(k) * 2.0) == pytest.approx(0.0, abs=1e-12)
    assert nc3_of(ortho, torch.eye(k)) == pytest.approx(0.0, abs=1e-12)
    assert nc3_duality_uncentred(ortho, torch.eye(k)) == pytest.approx(0.0, abs=1e-12)
    # centred means on a simplex ETF: MMᵀ/‖MMᵀ‖ = ETF_K = (I − J/K)/√(K−1), so the OF distance is
    # ‖(1/√(K−1) − 1/√K) I − J/(K√(K−1))‖_F = √(K(√(K−1)/K − 1/√K)² + 1/K)
    etf = simplex_etf(k, k + 1, radius=2.0)
    simplex = _stats(etf[y], y, k)
    assert nc2_of(simplex) == pytest.approx(_of_of_etf(k), rel=1e-10)
    assert nc2_of_w(etf) == pytest.approx(_of_of_etf(k), rel=1e-10)
    assert _of_of_etf(2) == pytest.approx(0.7654, abs=1e-4)


def test_against_direct_float64_formulas_of_the_official_tracker():
    g = torch.Generator().manual_seed(0)
    k, d, n = 3, 6, 90
    y = torch.arange(n) % k
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 2.0 * torch.randn(k, d, generator=g,
                                                                                   dtype=torch.float64)[y]
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    s = _stats(x, y, k)
    # GUFMMetricTracker with H = xᵀ (d × N): class_means = scatter(H, labels, dim=1, reduce="mean") (d × K)
    h = x.T
    means = torch.stack([h[:, y == c].mean(1) for c in range(k)], 1)
    eye = torch.eye(k, dtype=torch.float64)

    def of(m: torch.Tensor) -> float:  # get_weights_or_feat_OF_relation
        mmt = m @ m.T
        return float(torch.linalg.matrix_norm(mmt / torch.linalg.matrix_norm(mmt) - eye / math.sqrt(k)))

    assert nc2_of(s) == pytest.approx(of(means.T), rel=1e-10)
    assert nc2_of_w(w) == pytest.approx(of(w), rel=1e-10)
    wz = w @ means  # compute_W_H_OF_relation
    assert nc3_of(s, w) == pytest.approx(float(torch.linalg.matrix_norm(wz / torch.linalg.matrix_norm(wz)
                                                                       - eye / math.sqrt(k))), rel=1e-10)
    align = torch.linalg.matrix_norm(w / torch.linalg.matrix_norm(w) - means.T / torch.linalg.matrix_norm(means))
    assert nc3_duality_uncentred(s, w) == pytest.approx(float(align), rel=1e-10)  # compute_W_H_alignment
    expanded = means[:, y]  # get_W_feat_NC1_SNR
    snr = torch.linalg.matrix_norm(w @ expanded) / torch.linalg.matrix_norm(w @ (h - expanded))
    assert nc1_snr(s, w) == pytest.approx(float(snr), rel=1e-10)
    assert compute_metrics(s, w, names=NAMES).keys() == set(NAMES)


def test_registered_off_by_default_and_undefined_cases():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 4, generator=g, dtype=torch.float64), torch.arange(30) % 3
    assert not set(NAMES) & set(compute_metrics(_stats(x, y, 3), torch.randn(3, 4)))  # default=False
    for name in NAMES:
        spec = get_metric(name)
        assert "gnn_collapse/utils/tracker.py" in spec.source and spec.definition
    exact = _stats(torch.eye(3, 4, dtype=torch.float64)[y], y, 3)  # no within-class noise
    with pytest.raises(UndefinedMetricError, match="exact collapse"):
        nc1_snr(exact, torch.randn(3, 4))
    with pytest.raises(UndefinedMetricError):
        of_dist(torch.zeros(3, 3))
    with pytest.raises(UndefinedMetricError):
        nc3_duality_uncentred(exact, torch.zeros(3, 4))
