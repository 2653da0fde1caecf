"""SBM / regular-SBM generators and the structural condition, against exact counts and binomial bounds."""

from __future__ import annotations

import math

import pytest
import torch

from nclens.graph.sbm import (
    SBMDataset,
    SBMSpec,
    _triu_pair,
    degrees_per_class,
    edge_counts,
    edge_probability,
    expected_edge_counts,
    regular_degrees,
    sbm_graph,
    sbm_regular_graph,
)


def _is_simple_undirected(ei: torch.Tensor, n: int) -> bool:
    keys = ei[0] * n + ei[1]
    rev = torch.sort(ei[1] * n + ei[0]).values
    return bool((ei[0] != ei[1]).all()) and keys.unique().numel() == keys.numel() and torch.equal(
        torch.sort(keys).values, rev
    )


def test_triu_pair_is_the_row_major_upper_triangle():
    for n in (2, 3, 17, 64):
        i, j = _triu_pair(torch.arange(n * (n - 1) // 2), n)
        ref = torch.triu_indices(n, n, 1)
        assert torch.equal(i, ref[0]) and torch.equal(j, ref[1])


@pytest.mark.parametrize("symmetrize", ["none", "max"])
@pytest.mark.parametrize("method", ["sparse", "dense", "pyg"])
def test_sbm_edge_counts_match_the_stated_probabilities(method, symmetrize):
    """Both samplers, every method: within/across edge counts within 5 sd of Binomial(#pairs, p′)."""
    if method == "pyg":
        pytest.importorskip("torch_geometric")
    n_nodes, c, p, q = 600, 3, 0.08, 0.01
    n = n_nodes // c
    within = across = 0
    for seed in range(3):
        ei, y = sbm_graph(n_nodes, c, p, q, seed=seed, method=method, symmetrize=symmetrize)
        assert _is_simple_undirected(ei, n_nodes)
        assert torch.equal(y, torch.arange(n_nodes) // n)
        w, a = edge_counts(ei, y)
        within, across = within + w, across + a
    e = expected_edge_counts(n_nodes, c, p, q, symmetrize)
    assert e["p_edge"] == pytest.approx(p if symmetrize == "none" else 2 * p - p * p, rel=1e-14)
    for count, mean, sd in ((within, e["within_mean"], e["within_sd"]), (across, e["across_mean"], e["across_sd"])):
        assert abs(count - 3 * mean) < 5 * math.sqrt(3) * sd, (count, 3 * mean, sd)


def test_the_official_construction_is_max_of_a_and_its_transpose():
    """method="dense", symmetrize="max" is the official SBM.generate_single_graph: Adj = rand < M, zero
    diagonal, max(Adj, Adjᵀ) — re-derived here from the same uniform draws."""
    n_nodes, c, p, q = 60, 2, 0.3, 0.05
    ei, y = sbm_graph(n_nodes, c, p, q, seed=4, method="dense", symmetrize="max")
    gen = torch.Generator().manual_seed(4)
    m = torch.where(y[:, None] == y[None, :], p, q)
    adj = (torch.rand(n_nodes, n_nodes, generator=gen, dtype=torch.float64) < m).int()
    adj = adj * (1 - torch.eye(n_nodes, dtype=torch.int))
    adj = torch.maximum(adj, adj.T)
    assert torch.equal(ei, adj.nonzero().T)
    assert edge_probability(0.025, "max") == pytest.approx(0.049375) and edge_probability(0.025) == 0.025
    with pytest.raises(ValueError, match="symmetrize"):
        edge_probability(0.1, "min")


def test_sbm_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = sbm_graph(200, 2, 0.1, 0.02, seed=5, method="dense", symmetrize="max")
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert torch.equal(a, sbm_graph(200, 2, 0.1, 0.02, seed=5, method="dense", symmetrize="max")[0])
    assert torch.equal(sbm_graph(200, 2, 0.1, 0.02, seed=5)[0], sbm_graph(200, 2, 0.1, 0.02, seed=5)[0])
    assert not torch.equal(sbm_graph(200, 2, 0.1, 0.02, seed=5)[0], sbm_graph(200, 2, 0.1, 0.02, seed=6)[0])


@pytest.mark.parametrize(
    "n_nodes,c,k_in,k_out", [(100, 2, 6, 2), (1000, 2, 12, 1), (120, 3, 5, 3), (80, 4, 3, 5), (60, 2, 29, 30)]
)
def test_regular_sbm_has_exact_degrees(n_nodes, c, k_in, k_out):
    ei, y = sbm_regular_graph(n_nodes, c, k_in, k_out, seed=1)
    assert _is_simple_undirected(ei, n_nodes)
    counts = degrees_per_class(ei, y, c)
    expected = torch.full((n_nodes, c), k_out)
    expected[torch.arange(n_nodes), y] = k_in
    assert torch.equal(counts, expected)


def test_regular_sbm_swaps_randomise_the_wiring():
    base, _ = sbm_regular_graph(200, 2, 6, 2, seed=3, swap_rounds=0)
    mixed, _ = sbm_regular_graph(200, 2, 6, 2, seed=3)
    assert not torch.equal(base, mixed)
    assert torch.equal(mixed, sbm_regular_graph(200, 2, 6, 2, seed=3)[0])


def test_regular_degrees_and_spec():
    assert regular_degrees(1000, 2, 0.025, 0.0017) == (12, 1)
    # the official SBMRegular: ceil(p N / C); 13·500 is even, so 13 stays; C = 4: ceil(25) = 25, ceil(1.7) = 2
    assert regular_degrees(1000, 2, 0.025, 0.0017, rule="ceil") == (13, 1)
    assert regular_degrees(1000, 4, 0.1, 0.0068, rule="ceil") == (25, 2)
    assert regular_degrees(30, 2, 0.2, 0.0, rule="ceil") == (2, 0)  # ceil(3) = 3, 15·3 odd and 3 > 2 -> 2
    spec = SBMSpec(kind="sbm-regular", num_nodes=1000, num_classes=2, p=0.025, q=0.0017)
    assert spec.effective_pq() == (12 / 499, 1 / 500)
    official = SBMSpec(kind="sbm", num_nodes=1000, num_classes=2, p=0.025, q=0.0017, symmetrize="max")
    assert official.effective_pq() == pytest.approx((0.049375, 1 - (1 - 0.0017) ** 2))
    ds = SBMDataset(SBMSpec(num_nodes=60, num_classes=2, p=0.2, q=0.05, feature_dim=3), 2, seed=0)
    assert len(ds) == 2 and ds[0].x.shape == (60, 3) and ds[0].x.dtype == torch.float32
    assert not torch.equal(ds[0].x, ds[1].x)
    stats = ds.edge_statistics()
    assert stats["within_measured"] == sum(edge_counts(g.edge_index, g.y)[0] for g in ds.graphs) / 2
    assert stats["within_mean"] == pytest.approx(2 * 30 * 29 / 2 * 0.2)
    reg = SBMDataset(SBMSpec(kind="sbm-regular", num_nodes=60, num_classes=2, p=0.2, q=0.05, degree_rule="ceil"), 1)
    rs = reg.edge_statistics()
    assert (rs["k_in"], rs["k_out"]) == (6, 2) and rs["within_measured"] == rs["within_mean"] == 60 * 6 / 2


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="divisible"):
        sbm_graph(101, 2, 0.1, 0.1)
    with pytest.raises(ValueError, match="probability"):
        sbm_graph(100, 2, 1.5, 0.1)
    with pytest.raises(ValueError, match="k_in"):
        sbm_regular_graph(30, 2, 3, 1)  # n*k_in = 15*3 odd
    with pytest.raises(ValueError, match="kind"):
        SBMSpec(kind="erdos")
    with pytest.raises(ValueError, match="degree_rule"):
        SBMSpec(degree_rule="floor")
    with pytest.raises(ValueError, match="method"):
        sbm_graph(100, 2, 0.1, 0.1, method="networkx")
