"""Probe hooks and measure(): same features as a manual forward, hooks always removed, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nclens.core.measure import CollapseReport, measure
from nclens.core.probe import Probe, default_layers
from reference import reference_metrics


class SmallCNN(nn.Module):
    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(4, 8)
        self.head = nn.Linear(8, k)

    def forward(self, x):
        z = self.act(self.conv(x)).mean(dim=(2, 3))
        return self.head(torch.relu(self.fc1(z)))


def _data(n=96, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g), torch.arange(n) % k


def test_hooks_capture_manual_forward():
    torch.manual_seed(0)
    net = SmallCNN()
    x, _ = _data()
    with Probe(net, ["conv", "fc1", "head"], mode="output", pool="flatten") as probe:
        net(x)
    conv_out = net.conv(x)
    torch.testing.assert_close(probe.features["conv"], conv_out.flatten(1))
    hidden = net.fc1(net.act(conv_out).mean(dim=(2, 3)))
    torch.testing.assert_close(probe.features["fc1"], hidden)
    torch.testing.assert_close(probe.features["head"], net(x))
    with Probe(net, ["conv", "head"], mode="input", pool="avg") as probe:
        net(x)
    torch.testing.assert_close(probe.features["conv"], x.mean(dim=(2, 3)))
    torch.testing.assert_close(probe.features["head"], torch.relu(hidden))
    assert not probe.features["head"].requires_grad


def test_hooks_removed_even_when_forward_raises():
    net = SmallCNN()
    with pytest.raises(RuntimeError):
        with Probe(net, ["fc1"]):
            net(torch.randn(2, 3, 5, 5))  # wrong channel count
    assert all(not m._forward_hooks for m in net.modules())
    probe = Probe(net, ["fc1"]).attach().attach()  # no double registration
    assert len(net.fc1._forward_hooks) == 1
    probe.detach()
    assert not net.fc1._forward_hooks


def test_unknown_layer_lists_valid_names():
    with pytest.raises(KeyError, match=r"valid names are: \['conv', 'act', 'fc1', 'head'\]"):
        Probe(SmallCNN(), ["fc2"])
    with pytest.raises(ValueError, match="more than once"):
        Probe(SmallCNN(), ["fc1", "fc1"])
    assert default_layers(SmallCNN()) == ["conv", "fc1", "head"]


def test_measure_equals_reference_on_captured_features():
    torch.manual_seed(1)
    net = SmallCNN().double()
    x, y = _data()
    x = x.double()
    loader = DataLoader(TensorDataset(x, y), batch_size=17)
    report = measure(net, loader, nc4=True, progress=False)
    assert isinstance(report, CollapseReport) and report.layers == ["conv", "fc1", "head"]
    with torch.no_grad():
        h = torch.relu(net.fc1(net.act(net.conv(x)).mean(dim=(2, 3))))
    ref = reference_metrics(h.numpy(), y.numpy(), net.head.weight.detach().numpy(), net.head.bias.detach().numpy())
    for name, value in ref.items():
        assert math.isclose(report.metrics["head"][name], value, rel_tol=1e-7, abs_tol=1e-12), name
    assert "nc3_duality" not in report.metrics["fc1"]  # fc1 has 8 outputs, not K=3
    frame = report.to_dataframe()
    assert list(frame.index) == ["conv", "fc1", "head"] and "nc1" in frame.columns
    assert report.to_dict()["info"]["samples"] == 96


def test_measure_restores_training_mode_and_handles_errors():
    net = SmallCNN()
    net.train()
    x, y = _data()
    with pytest.raises(TypeError, match=r"\(inputs, labels\)"):
        measure(net, [x], progress=False)
    assert net.training and all(not m._forward_hooks for m in net.modules())
    with pytest.raises(ValueError, match="no samples"):
        measure(net, [], progress=False)


def test_measure_nc4_with_reference_means(tmp_path):
    net = SmallCNN()
    x, y = _data()
    train = measure(net, [(x[:64], y[:64])], layers=["head"], nc4=True, progress=False)
    test = measure(net, [(x[64:], y[64:])], layers=["head"], nc4=True, reference=train, progress=False)
    from nclens.core.metrics import nc4_ncc_mismatch

    with Probe(net, ["head"]) as probe:
        net(x[64:])
    expected = nc4_ncc_mismatch(probe.features["head"], net.head.weight.detach(), net.head.bias.detach(),
                                train.stats["head"].means)
    assert test.metrics["head"]["nc4_ncc_mismatch"] == pytest.approx(expected)
    test.to_json(tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text().startswith("{")


def test_hooks_removed_when_the_statistics_reject_a_batch():
    """An error raised while consuming captured features (NaN features) still removes every hook."""
    net = SmallCNN()
    x, y = _data()
    x[3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        measure(net, [(x, y)], progress=False)
    assert all(not m._forward_hooks for m in net.modules())


def test_top_level_api_measure_is_callable_and_still_a_module():
    import nclens
    import nclens.core.measure as measure_module

    net = SmallCNN()
    x, y = _data()
    report = nclens.measure(net, [(x, y)], layers=["head"], progress=False)
    assert isinstance(report, nclens.CollapseReport) and report.layers == ["head"]
    assert measure_module.CollapseReport is nclens.CollapseReport
    assert nclens.ClassStats is not None and callable(nclens.compute_metrics)
