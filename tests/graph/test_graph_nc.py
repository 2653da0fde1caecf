"""Node NC of H and H Â, the head's NC2/NC3 set against the official tracker's formulas, Ŷ, trace ratios and bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nclens.core.metrics import nc1, nc1_trace
from nclens.core.stats import ClassStats
from nclens.graph.gnn import mean_aggregate
from nclens.graph.nc import (
    head_nc,
    node_nc,
    sbm_coefficients,
    trace_ratio_bounds,
    trace_ratios,
    transfer_matrices,
    yhat_nc3,
)
from nclens.graph.sbm import sbm_graph


def test_node_nc_uses_h_and_h_a_hat():
    ei, y = sbm_graph(120, 3, 0.2, 0.02, seed=0)
    x = torch.randn(120, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = torch.randn(3, 5, dtype=torch.float64)
    m = node_nc(x, ei, y, 3, w1=w, w2=w)
    s_h = ClassStats(num_classes=3).update(x, y)
    s_ha = ClassStats(num_classes=3).update(mean_aggregate(x, ei, 120), y)
    assert m["nc1"] == pytest.approx(nc1(s_h)) and m["nc1_ha"] == pytest.approx(nc1(s_ha))
    assert m["nc1_trace_ha"] == pytest.approx(nc1_trace(s_ha))
    assert m["tr_sw"] / m["tr_sb"] == pytest.approx(m["nc1_trace"])
    assert {"nc3_w1", "nc3_w2", "nc3_etf_w1", "nc3_of_w2", "nc2_of_w1", "nc3_etf_yhat", "nc1_snr_w2"} <= set(m)
    masked = node_nc(x, ei, y, 3, mask=y != 2)
    assert np.isnan(masked["nc1"])  # class 2 masked out entirely: undefined, reported as NaN


def _official_set(x: torch.Tensor, ei: torch.Tensor, y: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, k: int):
    """The official GUFMMetricTracker (gnn_collapse/utils/tracker.py) re-derived with dense float64 Â = A D⁻¹."""
    n = x.shape[0]
    a = torch.zeros(n, n, dtype=torch.float64)
    a[ei[0], ei[1]] = 1.0
    a_hat = a @ torch.diag(1.0 / a.sum(1))
    h = x.T  # d × N
    eye = torch.eye(k, dtype=torch.float64)
    etf = (eye - torch.ones(k, k, dtype=torch.float64) / k) / math.sqrt(k - 1)

    def means(f):  # scatter(feat, labels, dim=1, reduce="mean")
        return torch.stack([f[:, y == c].mean(1) for c in range(k)], 1)

    def fro(m):
        return torch.linalg.matrix_norm(m)

    def w_h_etf(w, f):  # compute_W_H_ETF_relation
        z = means(f)
        z = z - z.mean(1, keepdim=True)
        wz = w @ z
        return float(fro(wz / fro(wz) - etf))

    def w_h_of(w, f):  # compute_W_H_OF_relation
        wz = w @ means(f)
        return float(fro(wz / fro(wz) - eye / math.sqrt(k)))

    ha = h @ a_hat
    z = w1 @ h + w2 @ ha
    return {
        "nc3_etf_w1": w_h_etf(w1, h), "nc3_etf_w2": w_h_etf(w2, ha), "nc3_etf_yhat": w_h_etf(eye, z),
        "nc3_of_w1": w_h_of(w1, h), "nc3_of_w2": w_h_of(w2, ha), "nc3_of_yhat": w_h_of(eye, z),
        "nc3_uncentred_w1": float(fro(w1 / fro(w1) - means(h).T / fro(means(h)))),
        "nc3_uncentred_w2": float(fro(w2 / fro(w2) - means(ha).T / fro(means(ha)))),
    }


def test_head_nc_matches_the_official_tracker_formulas():
    k = 3
    ei, y = sbm_graph(90, k, 0.3, 0.05, seed=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(90, 4, generator=g, dtype=torch.float64) + torch.randn(k, 4, generator=g, dtype=torch.float64)[y]
    w1, w2 = torch.randn(k, 4, generator=g, dtype=torch.float64), torch.randn(k, 4, generator=g, dtype=torch.float64)
    mine = node_nc(x, ei, y, k, w1=w1, w2=w2)
    for key, value in _official_set(x, ei, y, w1, w2, k).items():
        assert mine[key] == pytest.approx(value, rel=1e-9), key


def test_yhat_nc3_is_zero_at_its_ideal_geometry():
    k = 3
    y = torch.arange(30) % k
    s_h = ClassStats(num_classes=k).update(torch.eye(k, dtype=torch.float64)[y], y)  # μ_c(H) = e_c
    s_ha = ClassStats(num_classes=k).update(torch.zeros(30, k, dtype=torch.float64), y)
    out = yhat_nc3(s_h, s_ha, 2.0 * torch.eye(k), torch.randn(k, k))  # M_Ŷ = 2I: OF and (centred) ETF
    assert out["nc3_of_yhat"] == pytest.approx(0.0, abs=1e-12)
    assert out["nc3_etf_yhat"] == pytest.approx(0.0, abs=1e-12)
    rec = head_nc(s_h, s_ha, None, torch.eye(k))  # W1 absent = 0 (the official use_W1=False)
    assert math.isnan(rec["nc3_w1"]) and math.isnan(rec["nc2_of_w1"])


def test_trace_ratio_bounds_are_attained_by_commuting_aligned_and_anti_aligned_matrices():
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    t_vals = torch.tensor([4.0, 3.0, 2.0, 0.5], dtype=torch.float64)
    s_vals = torch.tensor([3.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    t = q @ torch.diag(t_vals) @ q.T
    lower, upper = trace_ratio_bounds(t, q @ torch.diag(s_vals) @ q.T)
    assert upper == pytest.approx(float((t_vals * s_vals).sum() / s_vals.sum()), rel=1e-12)  # aligned: attained
    sigma_anti = q @ torch.diag(s_vals.flip(0)) @ q.T
    assert float(torch.trace(t @ sigma_anti) / torch.trace(sigma_anti)) == pytest.approx(lower, rel=1e-12)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):  # any PSD pair lies between the bounds
        a, b = torch.randn(5, 5, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
        t, s = a @ a.T, b @ b.T
        lo, hi = trace_ratio_bounds(t, s)
        ratio = float(torch.trace(t @ s) / torch.trace(s))
        assert lo - 1e-12 <= ratio <= hi + 1e-12


def test_trace_ratios_prediction_and_bounds_on_an_exactly_diagonal_layer():
    # W2 = 0: Z = W1 H, Σ_W(Z) = W1 Σ_W(H) W1ᵀ, so the prediction is exact. With within-class deviations
    # along orthogonal ±1 patterns, Σ_W(H) = diag(s²) exactly; W1 = diag(a) with a sorted as s -> the upper
    # bound is attained, a sorted oppositely -> the lower one.
    r = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)  # orthogonal columns
    spread = torch.tensor([3.0, 0.5], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    h = torch.cat([r * spread, r * spread + torch.tensor([5.0, -2.0], dtype=torch.float64)])
    for a, bound in ((torch.tensor([2.0, 1.0]), "tw_upper"), (torch.tensor([1.0, 2.0]), "tw_lower")):
        w1 = torch.diag(a).to(torch.float64)
        res = trace_ratios(h, h @ w1.T, y, 2, w1, torch.zeros(2, 2, dtype=torch.float64), 0.1, 0.01, 4)
        assert res["tw_ratio"] == pytest.approx(res["tw_pred"], rel=1e-12)
        assert res["tw_ratio"] == pytest.approx(res[bound], rel=1e-12)
        assert res["tb_ratio"] == pytest.approx(res["tb_pred"], rel=1e-12)
        assert res["tb_lower"] - 1e-12 <= res["tb_ratio"] <= res["tb_upper"] + 1e-12


def test_transfer_predictions():
    b1, b2, b3 = sbm_coefficients(0.025, 0.0017, 500)
    assert (b1, b2, b3) == pytest.approx(
        ((0.025 - 0.0017) / 0.0267, 0.025 / (500 * 0.0267), (0.025**2 + 0.0017**2) / (500 * 0.0267**2))
    )
    ei, y = sbm_graph(200, 2, 0.1, 0.01, seed=0)
    h = torch.randn(200, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + y[:, None]
    w1 = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w2 = torch.zeros(6, 4, dtype=torch.float64)
    r = trace_ratios(h, h @ w1.T, y, 2, w1, w2, 0.1, 0.01, 100)
    assert r["tw_ratio"] == pytest.approx(r["tw_pred"], rel=1e-10)
    assert r["tb_ratio"] == pytest.approx(r["tb_pred"], rel=1e-10)
    t_b, t_w = transfer_matrices(None, w1, 0.1, 0.01, 100)
    assert torch.allclose(t_b, ((0.1 - 0.01) / 0.11) ** 2 * w1.T @ w1)
    assert float(torch.linalg.eigvalsh(transfer_matrices(w1, w1.flip(0), 0.1, 0.01, 100)[1]).min()) > -1e-12  # PSD
