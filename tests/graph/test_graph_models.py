"""GraphConv model (against torch_geometric), the sparse mean aggregation, permutation-invariant losses
(against the loss registry), overlap and the best permutation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nclens.graph.gnn import (
    PERMUTATION_LOSSES,
    GNNConfig,
    GraphConv,
    GraphConvGNN,
    MeanAggregate,
    best_permutation,
    best_permutation_accuracy,
    mean_aggregate,
    mean_operator,
    normalized_adjacency,
    overlap,
    permutation_invariant_loss,
)
from nclens.graph.sbm import sbm_graph
from nclens.nn.losses import get_loss

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
    p, p_t = mean_operator(EI, n, dtype=torch.float64)
    assert np.allclose(p.to_dense().numpy(), a_hat.T) and np.allclose(p_t.to_dense().numpy(), a_hat)
    assert np.allclose(a_hat.sum(0)[:4], 1.0) and a_hat[:, 4].sum() == 0.0


def test_sparse_mean_aggregation_gradient_equals_index_add_autograd():
    ei, _ = sbm_graph(80, 2, 0.2, 0.05, seed=3)
    x = torch.randn(80, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    w = torch.randn(80, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    p, p_t = mean_operator(ei, 80, dtype=torch.float64)
    (MeanAggregate.apply(x, p, p_t) * w).sum().backward()
    mine = x.grad.clone()
    x.grad = None
    (mean_aggregate(x, ei, 80) * w).sum().backward()
    assert torch.allclose(mine, x.grad, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: MeanAggregate.apply(v, p, p_t), (x.detach()[:, :2].clone()
                                                                                .requires_grad_(True),))


def test_graphconv_equals_torch_geometric_graphconv_mean():
    pyg = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(0)
    ref = pyg.GraphConv(3, 4, aggr="mean", bias=False)
    mine = GraphConv(3, 4)
    with torch.no_grad():
        mine.lin_rel.weight.copy_(ref.lin_rel.weight)
        mine.lin_root.weight.copy_(ref.lin_root.weight)
    x = torch.randn(5, 3)
    assert torch.allclose(mine(x, EI), ref(x, EI), atol=1e-6)
    w1, w2 = mine.weights
    assert torch.allclose(mine(x, EI), x @ w1.T + mean_aggregate(x, EI, 5) @ w2.T, atol=1e-6)
    no_root = GraphConv(3, 4, use_w1=False)
    assert no_root.weights[0] is None
    assert torch.allclose(no_root(x, EI), mean_aggregate(x, EI, 5) @ no_root.weights[1].T, atol=1e-6)


@pytest.mark.parametrize("order", ["conv-bn-relu", "conv-relu-bn"])
def test_gnn_block_orders_and_features(order):
    torch.manual_seed(0)
    cfg = GNNConfig(in_dim=3, hidden=4, num_layers=2, num_classes=2, block_order=order,
                    projection=order == "conv-relu-bn")
    net = GraphConvGNN(cfg)
    x = torch.randn(5, 3)
    out, feats, stages = net(x, EI, return_features=True)
    assert out.shape == (5, 2) and len(feats) == cfg.num_blocks + 1 == len(stages) + 1
    assert len(net.layer_weights()) == cfg.num_blocks + 1
    for conv, norm, st, h_in, h_out in zip(net.convs, net.norms, stages, feats[:-1], feats[1:]):
        z = conv(h_in, EI)
        assert torch.allclose(st["conv"], z, atol=1e-6)
        expected = torch.relu(norm(z)) if order == "conv-bn-relu" else norm(torch.relu(z))
        assert torch.allclose(h_out, expected, atol=1e-6)
    assert torch.allclose(net(x, mean_operator(EI, 5)), out, atol=1e-6)  # a precomputed operator, the same map


def _brute(out, y, c, loss, batch):
    fn = get_loss(loss)
    total = []
    for g in batch.unique():
        m = batch == g
        total.append(min(fn(out[m], torch.tensor(perm)[y[m]]) for perm in itertools.permutations(range(c))))
    return torch.stack(total).mean()


@pytest.mark.parametrize("loss", PERMUTATION_LOSSES)
def test_permutation_invariant_loss_is_the_registry_loss_minimised_over_relabellings(loss):
    g = torch.Generator().manual_seed(1)
    c = 3
    out = torch.randn(40, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (40,), generator=g)
    batch = torch.arange(40) // 15  # graphs of 15, 15, 10 nodes
    got = permutation_invariant_loss(out, y, c, loss=loss, batch=batch)
    assert torch.allclose(got, _brute(out, y, c, loss, batch))
    relabelled = torch.tensor([2, 0, 1])[y]  # communities carry no names
    assert torch.allclose(got, permutation_invariant_loss(out, relabelled, c, loss=loss, batch=batch))
    single = permutation_invariant_loss(out, y, c, loss=loss)
    assert torch.allclose(single, _brute(out, y, c, loss, torch.zeros(40, dtype=torch.long)))


def test_mse_is_nn_mseloss_of_the_official_code_and_mse_half_the_old_scaling():
    g = torch.Generator().manual_seed(2)
    out = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (30,), generator=g)
    # the official compute_mse_loss_multiclass: min over permutations of nn.MSELoss()(pred, one_hot(π(y)))
    official = min(torch.nn.MSELoss()(out, torch.nn.functional.one_hot(torch.tensor(p)[y], 4).double())
                   for p in itertools.permutations(range(4)))
    assert torch.allclose(permutation_invariant_loss(out, y, 4, loss="mse"), official)
    old = min(0.5 * (out - torch.nn.functional.one_hot(torch.tensor(p)[y], 4).double()).square().sum(1).mean()
              for p in itertools.permutations(range(4)))  # nclens 0.1's GNN "mse"
    assert torch.allclose(permutation_invariant_loss(out, y, 4, loss="mse_half"), old)
    with pytest.raises(ValueError, match="loss registry"):
        permutation_invariant_loss(out, y, 4, loss="pal")


def test_overlap_and_best_permutation():
    g = torch.Generator().manual_seed(2)
    for c in (2, 3, 4):
        y = torch.randint(0, c, (50,), generator=g)
        pred = torch.where(torch.rand(50, generator=g) < 0.7, y, torch.randint(0, c, (50,), generator=g))
        brute = max(float((torch.tensor(p)[pred] == y).double().mean()) for p in itertools.permutations(range(c)))
        assert best_permutation_accuracy(pred, y, c) == pytest.approx(brute)
        assert overlap(pred, y, c) == pytest.approx((brute - 1 / c) / (1 - 1 / c))
        assert overlap((y + 1) % c, y, c) == pytest.approx(1.0)
        perm = best_permutation((y + 1) % c, y, c)
        assert torch.equal(perm, (torch.arange(c) + 1) % c)  # class k is predicted as k + 1
    with pytest.raises(ValueError, match="C <= 8"):
        permutation_invariant_loss(torch.zeros(3, 9), torch.zeros(3, dtype=torch.long), 9)
