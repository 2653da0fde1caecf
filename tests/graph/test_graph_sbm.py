"""SBM / regular-SBM generators and the structural condition, against exact counts and binomial bounds."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("torch_geometric")

from nclens.graph.gufm import structural_condition  # noqa: E402
from nclens.graph.sbm import (  # noqa: E402
    SBMDataset,
    SBMSpec,
    _triu_pair,
    degrees_per_class,
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


@pytest.mark.parametrize("method", ["sparse", "pyg"])
def test_sbm_edge_densities_within_binomial_bounds(method):
    n_nodes, c, p, q = 600, 3, 0.08, 0.01
    n = n_nodes // c
    within_pairs, across_pairs = c * n * (n - 1) // 2, c * (c - 1) // 2 * n * n
    within = across = 0
    for seed in range(3):
        ei, y = sbm_graph(n_nodes, c, p, q, seed=seed, method=method)
        assert _is_simple_undirected(ei, n_nodes)
        assert torch.equal(y, torch.arange(n_nodes) // n)
        same = y[ei[0]] == y[ei[1]]
        within += int(same.sum()) // 2
        across += int((~same).sum()) // 2
    for count, pairs, prob in ((within, 3 * within_pairs, p), (across, 3 * across_pairs, q)):
        mean, sd = pairs * prob, math.sqrt(pairs * prob * (1 - prob))
        assert abs(count - mean) < 5 * sd, (count, mean, sd)


def test_sbm_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = sbm_graph(200, 2, 0.1, 0.02, seed=5, method="pyg")
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert torch.equal(a, sbm_graph(200, 2, 0.1, 0.02, seed=5, method="pyg")[0])
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


def test_structural_condition_regular_vs_plain():
    homo = structural_condition(*sbm_regular_graph(200, 2, 8, 2, seed=0))
    assert homo.holds and homo.gap == 0.0
    assert torch.allclose(homo.fractions, torch.tensor([[0.8, 0.2], [0.2, 0.8]], dtype=torch.float64))
    hetero = structural_condition(*sbm_regular_graph(200, 2, 2, 6, seed=0))  # heterophilic too
    assert hetero.holds
    plain = structural_condition(*sbm_graph(200, 2, 0.08, 0.02, seed=0))
    assert not plain.holds and plain.gap > 0.1


def test_structural_condition_gap_on_a_hand_made_graph():
    # Path 0-1-2-3 with labels 0,0,1,1: node 0 sees {0}: F=(1,0); node 1 sees {0,2}: F=(.5,.5).
    ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    res = structural_condition(ei, torch.tensor([0, 0, 1, 1]), 2)
    assert not res.holds and res.gap == pytest.approx(0.5)
    assert torch.allclose(res.fractions, torch.tensor([[0.75, 0.25], [0.25, 0.75]], dtype=torch.float64))


def test_regular_degrees_and_spec():
    assert regular_degrees(1000, 2, 0.025, 0.0017) == (12, 1)
    spec = SBMSpec(kind="sbm-regular", num_nodes=1000, num_classes=2, p=0.025, q=0.0017)
    assert spec.effective_pq() == (12 / 499, 1 / 500)
    ds = SBMDataset(SBMSpec(num_nodes=60, num_classes=2, p=0.2, q=0.05, feature_dim=3), 2, seed=0)
    assert len(ds) == 2 and ds[0].x.shape == (60, 3) and ds[0].x.dtype == torch.float32
    assert not torch.equal(ds[0].x, ds[1].x)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="divisible"):
        sbm_graph(101, 2, 0.1, 0.1)
    with pytest.raises(ValueError, match="probability"):
        sbm_graph(100, 2, 1.5, 0.1)
    with pytest.raises(ValueError, match="k_in"):
        sbm_regular_graph(30, 2, 3, 1)  # n*k_in = 15*3 odd
    with pytest.raises(ValueError, match="kind"):
        SBMSpec(kind="erdos")
