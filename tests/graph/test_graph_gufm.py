"""gUFM: gradients (autograd), the official update rule re-derived, exact resume, collapse only under the
structural condition, the gradient norm at a stationary point; the structural condition itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nclens.graph.gufm import GUFMConfig, GUFMSolver, _adjacency, gufm_grads, solve_gufm, structural_condition
from nclens.graph.sbm import sbm_graph, sbm_regular_graph


def _dense(ei: torch.Tensor, n: int) -> torch.Tensor:
    a = torch.zeros(n, n, dtype=torch.float64)
    a[ei[0], ei[1]] = 1.0
    return a


def test_gufm_gradients_match_autograd():
    ei, y = sbm_graph(60, 2, 0.2, 0.05, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    onehot = torch.nn.functional.one_hot(y, 2).double()
    adj, deg = _adjacency(ei, 60, torch.device("cpu"))
    wd = (0.01, 0.02, 0.03)
    loss, g_x, g_w1, g_w2 = gufm_grads(x.detach(), w1.detach(), w2.detach(), onehot, adj, deg, wd)
    # Independent dense reference: H (d×N), Â = A D^-1, (1/2N)‖W1 H + W2 H Â − Y‖² + regularisers.
    a_hat = _dense(ei, 60) / deg.clamp_min(1)[None, :]
    h = x.T
    ref = 0.5 / 60 * (w1 @ h + w2 @ h @ a_hat - onehot.T).square().sum() + 0.5 * (
        wd[0] * w1.square().sum() + wd[1] * w2.square().sum() + wd[2] * h.square().sum()
    )
    assert loss == pytest.approx(float(ref.detach()))
    ref.backward()
    for mine, auto in ((g_x, x.grad), (g_w1, w1.grad), (g_w2, w2.grad)):
        assert torch.allclose(mine, auto, atol=1e-12)


def test_solver_follows_the_official_train_loop():
    """gufm.py's train_loop transcribed (H d×N, dense Â = A D⁻¹, dZ = (Z − Y)/N, simultaneous updates)."""
    graphs = [sbm_graph(40, 2, 0.3, 0.05, seed=s) for s in (1, 2)]
    cfg = GUFMConfig(dim=3, lr=0.1, init_std=1.0, epochs=5, log_every=5, wd_w1=0.005, wd_w2=0.006, wd_h=0.007)
    solver = GUFMSolver(graphs, 2, cfg)
    w1, w2 = solver.w1.clone(), solver.w2.clone()
    hs = [x.T.clone() for x in solver.hs]
    a_hats = [(lambda a: a @ torch.diag(1.0 / a.sum(1)))(_dense(ei, 40)) for ei, _ in graphs]
    ys = [torch.nn.functional.one_hot(y, 2).double().T for _, y in graphs]
    for _ in range(cfg.epochs):
        solver.run_epoch()
        for i, (a_hat, y) in enumerate(zip(a_hats, ys)):
            h = hs[i]
            dz = (w1 @ h + w2 @ h @ a_hat - y) / 40
            dw1 = dz @ h.T + cfg.wd_w1 * w1
            dw2 = dz @ (h @ a_hat).T + cfg.wd_w2 * w2
            dh = cfg.wd_h * h + w1.T @ dz + w2.T @ dz @ a_hat.T
            w1, w2, hs[i] = w1 - cfg.lr * dw1, w2 - cfg.lr * dw2, h - cfg.lr * dh
    assert torch.allclose(solver.w1, w1, atol=1e-12) and torch.allclose(solver.w2, w2, atol=1e-12)
    for mine, ref in zip(solver.hs, hs):
        assert torch.allclose(mine.T, ref, atol=1e-12)


def test_solver_resumes_exactly_and_reports_the_gradient_norm():
    graphs = [sbm_regular_graph(60, 2, 4, 1, seed=0)]
    cfg = GUFMConfig(dim=4, lr=5.0, epochs=40, log_every=10)
    straight = GUFMSolver(graphs, 2, cfg)
    for _ in range(40):
        straight.run_epoch()
    first = GUFMSolver(graphs, 2, cfg)
    for _ in range(17):
        first.run_epoch()
    state = first.state_dict()
    resumed = GUFMSolver(graphs, 2, cfg)
    resumed.load_state_dict(state)
    while resumed.epoch < 40:
        resumed.run_epoch()
    assert torch.equal(resumed.w2, straight.w2) and all(torch.equal(a, b) for a, b in zip(resumed.hs, straight.hs))
    assert resumed.record() == straight.record()
    # the gradient norm is that of Σ_g L_g: compare with autograd of the objective at the current point
    x = straight.hs[0].clone().requires_grad_(True)
    w1, w2 = straight.w1.clone().requires_grad_(True), straight.w2.clone().requires_grad_(True)
    p, _ = straight.ops[0]
    r = x @ w1.T + (p @ x) @ w2.T - straight.targets[0]
    obj = 0.5 * r.square().sum() / 60 + 0.5 * 5e-3 * (w1.square().sum() + w2.square().sum() + x.square().sum())
    obj.backward()
    expected = torch.sqrt(x.grad.square().sum() + w1.grad.square().sum() + w2.grad.square().sum())
    assert straight.objective_and_grad_norm()[1] == pytest.approx(float(expected), rel=1e-10)
    with pytest.raises(ValueError, match="does not fit"):
        GUFMSolver(graphs, 2, GUFMConfig(dim=3)).load_state_dict(state)


def test_gufm_collapses_exactly_only_under_the_structural_condition():
    cfg = GUFMConfig(dim=4, lr=10.0, epochs=300, log_every=100, seed=0)
    reg = solve_gufm([sbm_regular_graph(200, 2, 8, 1, seed=0)], 2, cfg, progress=False)
    plain = solve_gufm([sbm_graph(200, 2, 8 / 99, 1 / 100, seed=0)], 2, cfg, progress=False)
    assert reg.history_[-1]["nc1"] < 1e-8
    assert plain.history_[-1]["nc1"] > 1e-4
    assert reg.history_[-1]["loss"] < reg.history_[0]["loss"] + 1e-12
    # plain SBM: a plateau — NC1 unchanged while the gradient norm keeps falling
    h = plain.history_
    assert h[-1]["grad_norm"] < 0.1 * h[-2]["grad_norm"] and h[-1]["nc1"] == pytest.approx(h[-2]["nc1"], rel=1e-2)
    with pytest.raises(FloatingPointError, match="solver.lr"):
        solve_gufm([sbm_graph(100, 2, 0.2, 0.02, seed=0)], 2, GUFMConfig(dim=4, lr=1e6, epochs=5), progress=False)


def test_structural_condition_regular_vs_plain():
    homo = structural_condition(*sbm_regular_graph(200, 2, 8, 2, seed=0))
    assert homo.holds and homo.gap == 0.0
    assert torch.allclose(homo.fractions, torch.tensor([[0.8, 0.2], [0.2, 0.8]], dtype=torch.float64))
    assert structural_condition(*sbm_regular_graph(200, 2, 2, 6, seed=0)).holds  # heterophilic too
    plain = structural_condition(*sbm_graph(200, 2, 0.08, 0.02, seed=0))
    assert not plain.holds and plain.gap > 0.1
    # Path 0-1-2-3 with labels 0,0,1,1: node 0 sees {0}: F=(1,0); node 1 sees {0,2}: F=(.5,.5).
    ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    res = structural_condition(ei, torch.tensor([0, 0, 1, 1]), 2)
    assert not res.holds and res.gap == pytest.approx(0.5)
    assert np.allclose(res.fractions.numpy(), [[0.75, 0.25], [0.25, 0.75]])
