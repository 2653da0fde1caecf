"""GraphConv model, Â, permutation-invariant losses, overlap, node NC, gUFM and spectral baselines."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric")

from nclens.core.metrics import nc1, nc1_trace  # noqa: E402
from nclens.core.stats import ClassStats  # noqa: E402
from nclens.graph.gnn import (  # noqa: E402
    GNNConfig,
    GraphConvGNN,
    best_permutation_accuracy,
    mean_aggregate,
    normalized_adjacency,
    overlap,
    permutation_invariant_loss,
)
from nclens.graph.gufm import GUFMConfig, _adjacency, gufm_grads, solve_gufm  # noqa: E402
from nclens.graph.nc import node_nc, sbm_coefficients, trace_ratios, transfer_matrices  # noqa: E402
from nclens.graph.sbm import sbm_graph, sbm_regular_graph  # noqa: E402
from nclens.graph.spectral import bethe_hessian, normalized_laplacian, power_iteration  # noqa: E402

# A small graph with an isolated node (4): edges 0-1, 0-2, 1-2, 2-3.
EI = torch.tensor([[0, 1, 0, 2, 1, 2, 2, 3], [1, 0, 2, 0, 2, 1, 3, 2]])


def _dense(ei: torch.Tensor, n: int) -> np.ndarray:
    a = np.zeros((n, n))
    a[ei[0].numpy(), ei[1].numpy()] = 1.0
    return a


def test_a_hat_is_a_d_inverse_and_mean_aggregation_is_h_a_hat():
    n = 5
    a = _dense(EI, n)
    deg = a.sum(0)
    a_hat = a / np.where(deg > 0, deg, 1.0)[None, :]  # A D^-1, column i scaled by 1/D_i
    assert np.allclose(normalized_adjacency(EI, n).to_dense().numpy(), a_hat)
    h = np.random.default_rng(0).normal(size=(3, n))  # features as columns
    x = torch.tensor(h.T)
    assert np.allclose(mean_aggregate(x, EI, n).numpy().T, h @ a_hat)
    assert np.allclose(a_hat.sum(0)[:4], 1.0) and a_hat[:, 4].sum() == 0.0


def test_graphconv_layer_is_w1_h_plus_w2_h_a_hat():
    torch.manual_seed(0)
    net = GraphConvGNN(GNNConfig(in_dim=3, hidden=4, num_layers=1, num_classes=2))
    x = torch.randn(5, 3)
    w1, w2 = net.layer_weights()[0]
    expected = x @ w1.T + mean_aggregate(x, EI, 5) @ w2.T
    assert torch.allclose(net.convs[0](x, EI), expected, atol=1e-6)
    no_root = GraphConvGNN(GNNConfig(in_dim=3, hidden=4, num_layers=1, num_classes=2, use_w1=False))
    w1n, w2n = no_root.layer_weights()[0]
    assert w1n is None
    assert torch.allclose(no_root.convs[0](x, EI), mean_aggregate(x, EI, 5) @ w2n.T, atol=1e-6)
    out, feats, pre = net(x, EI, return_features=True)
    assert out.shape == (5, 2) and len(feats) == 2 and len(pre) == 1


def _brute_loss(out, y, c, kind, batch):
    total = []
    for g in batch.unique():
        m = batch == g
        best = []
        for perm in itertools.permutations(range(c)):
            t = torch.tensor(perm)[y[m]]
            if kind == "mse":
                best.append(0.5 * (out[m] - torch.nn.functional.one_hot(t, c).double()).square().sum(1).mean())
            else:
                best.append(torch.nn.functional.cross_entropy(out[m], t))
        total.append(min(best))
    return torch.stack(total).mean()


@pytest.mark.parametrize("kind", ["mse", "ce"])
def test_permutation_invariant_loss_matches_brute_force(kind):
    g = torch.Generator().manual_seed(1)
    c = 3
    out = torch.randn(40, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (40,), generator=g)
    batch = torch.arange(40) // 15  # graphs of 15, 15, 10 nodes
    got = permutation_invariant_loss(out, y, c, kind=kind, batch=batch)
    assert torch.allclose(got, _brute_loss(out, y, c, kind, batch))
    relabelled = torch.tensor([2, 0, 1])[y]  # communities carry no names
    assert torch.allclose(got, permutation_invariant_loss(out, relabelled, c, kind=kind, batch=batch))
    single = permutation_invariant_loss(out, y, c, kind=kind)
    assert torch.allclose(single, _brute_loss(out, y, c, kind, torch.zeros(40, dtype=torch.long)))


def test_overlap_is_best_permutation_accuracy():
    g = torch.Generator().manual_seed(2)
    for c in (2, 3, 4):
        y = torch.randint(0, c, (50,), generator=g)
        pred = torch.where(torch.rand(50, generator=g) < 0.7, y, torch.randint(0, c, (50,), generator=g))
        brute = max(float((torch.tensor(p)[pred] == y).double().mean()) for p in itertools.permutations(range(c)))
        assert best_permutation_accuracy(pred, y, c) == pytest.approx(brute)
        assert overlap(pred, y, c) == pytest.approx((brute - 1 / c) / (1 - 1 / c))
        assert overlap((y + 1) % c, y, c) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="C <= 8"):
        permutation_invariant_loss(torch.zeros(3, 9), torch.zeros(3, dtype=torch.long), 9)


def test_node_nc_uses_h_and_h_a_hat():
    ei, y = sbm_graph(120, 3, 0.2, 0.02, seed=0)
    x = torch.randn(120, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = torch.randn(3, 5, dtype=torch.float64)
    m = node_nc(x, ei, y, 3, w1=w, w2=w)
    s_h = ClassStats(num_classes=3).update(x, y)
    s_ha = ClassStats(num_classes=3).update(mean_aggregate(x, ei, 120), y)
    assert m["nc1"] == pytest.approx(nc1(s_h)) and m["nc1_ha"] == pytest.approx(nc1(s_ha))
    assert m["nc1_trace_ha"] == pytest.approx(nc1_trace(s_ha))
    assert {"nc3_w1", "nc3_w2", "nc3_etf_w1", "nc3_etf_w2", "nc2_etf"} <= set(m)
    mask = y != 2
    masked = node_nc(x, ei, y, 2 + 1, mask=mask)
    assert np.isnan(masked["nc1"])  # class 2 masked out entirely: undefined, reported as NaN


def test_transfer_predictions():
    b1, b2, b3 = sbm_coefficients(0.025, 0.0017, 500)
    assert (b1, b2, b3) == pytest.approx(
        ((0.025 - 0.0017) / 0.0267, 0.025 / (500 * 0.0267), (0.025**2 + 0.0017**2) / (500 * 0.0267**2))
    )
    # W2 = 0: Z = W1 H exactly, so the predicted ratios are the measured ones.
    ei, y = sbm_graph(200, 2, 0.1, 0.01, seed=0)
    h = torch.randn(200, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + y[:, None]
    w1 = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w2 = torch.zeros(6, 4, dtype=torch.float64)
    r = trace_ratios(h, h @ w1.T, y, 2, w1, w2, 0.1, 0.01, 100)
    assert r["tw_ratio"] == pytest.approx(r["tw_pred"], rel=1e-10)
    assert r["tb_ratio"] == pytest.approx(r["tb_pred"], rel=1e-10)
    t_b, t_w = transfer_matrices(None, w1, 0.1, 0.01, 100)
    b1 = (0.1 - 0.01) / 0.11
    assert torch.allclose(t_b, b1**2 * w1.T @ w1)


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
    a_hat = torch.tensor(_dense(ei, 60)) / deg.clamp_min(1)[None, :]
    h = x.T
    ref = 0.5 / 60 * (w1 @ h + w2 @ h @ a_hat - onehot.T).square().sum() + 0.5 * (
        wd[0] * w1.square().sum() + wd[1] * w2.square().sum() + wd[2] * h.square().sum()
    )
    assert loss == pytest.approx(float(ref.detach()))
    ref.backward()
    for mine, auto in ((g_x, x.grad), (g_w1, w1.grad), (g_w2, w2.grad)):
        assert torch.allclose(mine, auto, atol=1e-12)


def test_gufm_collapses_exactly_only_under_the_structural_condition():
    cfg = GUFMConfig(dim=4, lr=10.0, epochs=300, log_every=100, seed=0)
    reg = solve_gufm([sbm_regular_graph(200, 2, 8, 1, seed=0)], 2, cfg, progress=False)
    plain = solve_gufm([sbm_graph(200, 2, 8 / 99, 1 / 100, seed=0)], 2, cfg, progress=False)
    assert reg.history_[-1]["nc1"] < 1e-8
    assert plain.history_[-1]["nc1"] > 1e-4
    assert reg.history_[-1]["loss"] < reg.history_[0]["loss"] + 1e-12


def _subspace_gap(x: torch.Tensor, v: torch.Tensor) -> float:
    q, _ = torch.linalg.qr(x)
    return float(torch.linalg.matrix_norm(q @ q.T - v @ v.T, ord=2))


def test_power_iteration_finds_the_operator_eigenvectors():
    ei, y = sbm_graph(100, 2, 0.3, 0.02, seed=0)
    curve = power_iteration(ei, y, 2, method="bethe", iterations=100, every=100)
    assert curve[-1]["overlap"] > 0.9 and curve[0]["iteration"] == 0 and curve[-1]["iteration"] == 100
    from nclens.graph.spectral import power_operator

    for method, dense in (("bethe", bethe_hessian(ei, 100)), ("laplacian", normalized_laplacian(ei, 100))):
        evals, evecs = torch.linalg.eigh(dense)
        apply = power_operator(ei, 100, method)
        x = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        for _ in range(200):
            x, _ = torch.linalg.qr(apply(x))
        assert _subspace_gap(x, evecs[:, :2]) < 1e-3, method


def test_cli_gufm_and_tiny_experiment(tmp_path):
    from typer.testing import CliRunner

    from nclens.cli import app

    runner = CliRunner()
    out = tmp_path / "g.json"
    res = runner.invoke(app, ["gufm", "--graph", "sbm-regular", "--nodes", "100", "--classes", "2", "--p", "0.1",
                              "--q", "0.02", "--graphs", "2", "--wd", "0.005", "--epochs", "100", "--dim", "4",
                              "--no-progress", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["structural_condition_holds"] is True and data["structural_condition_gap"] == 0.0
    assert {"nc1", "nc1_ha", "loss"} <= set(data) and data["k_in"] == 5 and data["k_out"] == 1

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\ngraph: {num_nodes: 100, num_classes: 2, p: 0.15, q: 0.01, feature_dim: 4}\n"
        "train_graphs: 3\ntest_graphs: 2\nmodel: {hidden: 6, num_layers: 2}\ntrain: {epochs: 1}\n"
        "spectral: {iterations: 4, every: 2, graphs: 1}\ngufm: {graphs: 1, epochs: 20, dim: 4}\n"
    )
    run = tmp_path / "run"
    res = runner.invoke(app, ["gnn", str(cfg), "--out", str(run), "--no-progress"])
    assert res.exit_code == 0, res.output
    for name in ("config.json", "versions.json", "train_log.jsonl", "layers.json", "layers.csv", "spectral.json",
                 "gufm.json", "summary.json", "nc1_layers.png", "overlap.png", "gufm.png"):
        assert (run / name).exists(), name
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["nc1_per_layer"]) == 3 and summary["gufm"]["sbm-regular"]["structural_condition_holds"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodle: {}\n")
    res = runner.invoke(app, ["gnn", str(bad)])
    assert res.exit_code != 0 and "modle" in res.output
