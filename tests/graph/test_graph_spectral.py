"""Spectral baselines: nclens's subspace iteration finds the operators' eigenvectors; the official deflated power
iteration equals a transcription of the official ``pi_fiedler_pred`` (dense eig)."""

from __future__ import annotations

import math

import pytest
import torch

from nclens.core.metrics import nc1
from nclens.core.stats import ClassStats
from nclens.graph.gnn import overlap
from nclens.graph.sbm import sbm_graph
from nclens.graph.spectral import (
    bethe_hessian,
    normalized_laplacian,
    official_power_iteration,
    power_iteration,
    power_operator,
    spectral_matrix,
)


def _subspace_gap(x: torch.Tensor, v: torch.Tensor) -> float:
    q, _ = torch.linalg.qr(x)
    return float(torch.linalg.matrix_norm(q @ q.T - v @ v.T, ord=2))


def test_power_iteration_finds_the_operator_eigenvectors():
    ei, y = sbm_graph(100, 2, 0.3, 0.02, seed=0)
    curve = power_iteration(ei, y, 2, method="bethe", iterations=100, every=100)
    assert curve[-1]["overlap"] > 0.9 and curve[0]["iteration"] == 0 and curve[-1]["iteration"] == 100
    for method, dense in (("bethe", bethe_hessian(ei, 100)), ("laplacian", normalized_laplacian(ei, 100))):
        _, evecs = torch.linalg.eigh(dense)
        apply = power_operator(ei, 100, method)
        x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        for _ in range(200):
            x, _ = torch.linalg.qr(apply(x))
        assert _subspace_gap(x, evecs[:, :2]) < 1e-3, method
        assert torch.allclose(spectral_matrix(ei, 100, method).to_dense(), dense, atol=1e-12)


@pytest.mark.parametrize("method", ["bethe", "laplacian"])
def test_official_power_iteration_equals_the_official_pi_fiedler_pred(method):
    ei, y = sbm_graph(80, 2, 0.3, 0.03, seed=1)
    curve = official_power_iteration(ei, y, 2, method=method, iterations=12, seed=3)
    # SpectralOperator.pi_fiedler_pred transcribed: M̂ = torch.norm(M, p=2)·I − M (the flattened 2-norm = ‖M‖_F),
    # v = top eigenvector of M̂, w ~ N(0, I); y = M̂ w; w = (y − (y·v) v)/‖·‖; pred = [y < 0]
    m = bethe_hessian(ei, 80) if method == "bethe" else normalized_laplacian(ei, 80)
    m_hat = torch.norm(m, p=2) * torch.eye(80, dtype=torch.float64) - m
    evals, evecs = torch.linalg.eigh(m_hat)
    v = evecs[:, -1]
    w = torch.randn(80, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[:, 0]
    for t in range(1, 13):
        out = m_hat @ w
        w = out - torch.dot(out, v) * v
        w = w / torch.norm(w, p=2)
        s = ClassStats(num_classes=2).update(out[:, None], y)
        ref_nc1 = nc1(s)
        row = curve[t - 1]
        assert row["iteration"] == t
        assert row["nc1"] == pytest.approx(ref_nc1, rel=1e-6)
        assert row["overlap"] == pytest.approx(overlap((out < 0).long(), y, 2))
    assert math.isfinite(curve[-1]["nc1_w"])
    with pytest.raises(ValueError, match="C = 2"):
        official_power_iteration(ei, y % 2, 3)
