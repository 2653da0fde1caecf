"""torchmetrics NeuralCollapse: a real Metric (states, update/compute/reset, merge_state, sync) equal to measure()."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

pytest.importorskip("torchmetrics")

from nclens.core.distributed import ShardSampler, spawn  # noqa: E402
from nclens.core.measure import measure  # noqa: E402
from nclens.core.probe import Probe  # noqa: E402
from nclens.integrations.torchmetrics import NeuralCollapse  # noqa: E402


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4)).double()
    g = torch.Generator().manual_seed(1)
    y = torch.arange(200) % 4
    x = torch.randn(200, 6, generator=g, dtype=torch.float64) + 2 * torch.randn(4, 6, generator=g,
                                                                                dtype=torch.float64)[y]
    return net, [(x[i:i + 25], y[i:i + 25]) for i in range(0, 200, 25)]


def _close(a: dict, b: dict, rel: float = 1e-11) -> None:
    assert a.keys() == b.keys()
    for k in b:
        assert math.isclose(float(a[k]), b[k], rel_tol=rel, abs_tol=1e-13), k


def test_metric_equals_measure_on_the_same_model_and_data():
    net, batches = _setup()
    metric = NeuralCollapse(num_classes=4, dim=12, weight=net[2].weight)
    with Probe(net, ["2"]) as probe, torch.no_grad():
        for x, y in batches:
            net(x)
            metric.update(probe.features["2"], y)
    exact = measure(net, batches, layers=["2"], progress=False).metrics["2"]
    _close(metric.compute(), exact)
    assert set(metric._defaults) == {"counts", "sums", "class_sq", "scatter_w"}
    metric.reset()
    with pytest.raises(ValueError, match="before any update"):
        metric.compute()


def test_merge_state_equals_one_pass_and_trace_mode():
    net, batches = _setup()
    with Probe(net, ["2"]) as probe, torch.no_grad():
        feats = []
        for x, y in batches:
            net(x)
            feats.append((probe.features["2"], y))
    whole, a, b = (NeuralCollapse(4, 12) for _ in range(3))
    for i, (f, y) in enumerate(feats):
        whole.update(f, y)
        (a if i < 3 else b).update(f, y)
    a.merge_state(b)
    assert a.counts.shape == (2, 4)  # two shards, merged exactly in compute()
    _close(a.compute(), {k: float(v) for k, v in whole.compute().items()}, rel=1e-12)
    trace = NeuralCollapse(4, 12, scatter="trace")
    for f, y in feats:
        trace.update(f, y)
    assert "nc1" not in trace.compute() and "scatter_w" not in trace._defaults
    with pytest.raises(ValueError, match=r"features must be \(B, 12\)"):
        trace.update(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))


def _sync_worker(rank: int, out_dir: str) -> None:
    net, batches = _setup()
    metric = NeuralCollapse(num_classes=4, dim=12)
    mine = [batches[i] for i in range(rank, len(batches), 2)]
    with Probe(net, ["2"]) as probe, torch.no_grad():
        for x, y in mine:
            net(x)
            metric.update(probe.features["2"], y)
    values = {k: float(v) for k, v in metric.compute().items()}  # syncs across the 2 ranks
    torch.save(values, os.path.join(out_dir, f"tm{rank}.pt"))


@pytest.mark.distributed
def test_sync_across_two_processes_equals_one(tmp_path):
    spawn(_sync_worker, 2, (str(tmp_path),))
    net, batches = _setup()
    one = NeuralCollapse(4, 12)
    with Probe(net, ["2"]) as probe, torch.no_grad():
        for x, y in batches:
            net(x)
            one.update(probe.features["2"], y)
    expected = {k: float(v) for k, v in one.compute().items()}
    for r in range(2):
        _close(torch.load(tmp_path / f"tm{r}.pt", weights_only=True), expected, rel=1e-10)
    assert ShardSampler  # the per-rank split above is the round-robin of whole batches
