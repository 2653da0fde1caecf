"""OnlineCollapse: statistics from the training forwards equal measure() when the weights are frozen."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nclens
from nclens.core.measure import measure
from nclens.core.online import OnlineCollapse
from nclens.core.probe import LayerSpec


def _data(n=120, d=5, k=3, b=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 2 * torch.randn(k, d, generator=g, dtype=torch.float64)[y]
    return [(x[i:i + b], y[i:i + b]) for i in range(0, n, b)]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)).double()


def test_frozen_weights_equal_measure_over_the_same_batches():
    net, batches = _net(), _data()
    got = []
    with nclens.OnlineCollapse(net, ["0", "2"], every_n_steps=len(batches),
                               on_result=lambda step, r: got.append((step, r))) as online:
        for x, y in batches:
            net.train()
            out = net(x)
            assert out.requires_grad  # the training forward is untouched: gradients still flow
            online.update(y)
    assert [s for s, _ in got] == [len(batches)]
    exact = measure(net, batches, layers=["0", "2"], progress=False)
    report = got[0][1]
    for layer in ("0", "2"):
        assert report.metrics[layer].keys() == exact.metrics[layer].keys()
        for name, value in exact.metrics[layer].items():
            assert math.isclose(report.metrics[layer][name], value, rel_tol=1e-12, abs_tol=1e-14), (layer, name)
    assert report.info["steps"] == [1, len(batches)] and report.info["samples"] == 120
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_windows_reset_and_cumulative_and_a_moving_model():
    net, batches = _net(), _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with OnlineCollapse(net, ["2"], every_n_steps=2) as online:
        for x, y in batches[:4]:
            loss = nn.functional.cross_entropy(net(x), y)
            online.update(y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert [(s, r.info["steps"], r.info["samples"]) for s, r in online.results] == [(2, [1, 2], 48), (4, [3, 4], 48)]
    net = _net()
    with OnlineCollapse(net, ["2"], every_n_steps=2, window="cumulative") as online:
        for x, y in batches[:4]:
            net(x)
            online.update(y)
    assert [r.info["samples"] for _, r in online.results] == [48, 96]
    with OnlineCollapse(net, ["2"], every_n_steps=2, window="cumulative") as online:
        net(batches[0][0])
        online.update(batches[0][1])
        assert online.result().info["samples"] == 24


def test_errors():
    net, batches = _net(), _data()
    online = OnlineCollapse(net, ["2"])
    with pytest.raises(RuntimeError, match="not active"):
        online.update(batches[0][1])
    with online:
        with pytest.raises(RuntimeError, match="needs a forward of the model since the last update"):
            online.update(batches[0][1])
        with pytest.raises(ValueError, match="no samples yet"):
            online.result()
    with pytest.raises(ValueError, match="every_n_steps must be a positive integer"):
        OnlineCollapse(net, ["2"], every_n_steps=0)
    with pytest.raises(ValueError, match="window must be one of"):
        OnlineCollapse(net, ["2"], window="sliding")


def test_token_layers_use_the_attention_mask_of_the_forward():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(9, 4)
            self.block = nn.Linear(4, 4)

        def forward(self, input_ids, attention_mask=None):
            return self.block(self.emb(input_ids))

    torch.manual_seed(1)
    net = Seq().double()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 9, (30, 6), generator=g)
    mask = (torch.arange(6)[None] < torch.randint(2, 7, (30, 1), generator=g)).long()
    y = torch.arange(30) % 3
    batches = [{"input_ids": ids[i:i + 10], "attention_mask": mask[i:i + 10], "labels": y[i:i + 10]}
               for i in range(0, 30, 10)]
    spec = LayerSpec("block", mode="output", tokens="mean")
    with OnlineCollapse(net, [spec], every_n_steps=3) as online:
        for b in batches:
            net(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            online.update(b["labels"])
    exact = measure(net, batches, layers=[spec], progress=False)
    assert online.results[0][1].metrics["block"] == pytest.approx(exact.metrics["block"], rel=1e-12)
