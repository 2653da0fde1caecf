"""measure(..., scatter="projected" | "auto") and `nclens measure --scatter`: the two-pass exact nc1 of the
engine wired through the measurement entry points, against the full D×D scatter and a direct float64 reference."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nclens.cli import app
from nclens.core.measure import measure
from nclens.core.stats import estimate_memory


def data(n=240, d=12, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = 3 * torch.randn(k, d, generator=g, dtype=torch.float64)[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 4)).double()


def batches(x, y, size=50):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, x.shape[0], size)]


def test_projected_measure_equals_the_full_scatter():
    x, y = data()
    model, loader = net(), batches(*data())
    full = measure(model, loader, ["0", "2", "4"], num_classes=4, progress=False)
    proj = measure(model, loader, ["0", "2", "4"], num_classes=4, progress=False, scatter="projected")
    assert proj.info["scatter_per_layer"] == {"0": "projected", "2": "projected", "4": "projected"}
    assert proj.info["projection_pass_seconds"] >= 0.0
    for layer in ("0", "2", "4"):
        assert proj.metrics[layer]["nc1"] == pytest.approx(full.metrics[layer]["nc1"], rel=1e-10)
        for name in ("within_share", "cdnv", "nc2_etf"):
            assert proj.metrics[layer][name] == pytest.approx(full.metrics[layer][name], rel=1e-10)
        assert "effective_rank" in full.metrics[layer] and "effective_rank" not in proj.metrics[layer]
    # direct float64 reference at the last layer's input: Σ_W and pinv(Σ_B) explicitly
    with torch.no_grad():
        h = model[:4](x)
    means = torch.stack([h[y == c].mean(0) for c in range(4)])
    sw = sum((h[y == c] - means[c]).T @ (h[y == c] - means[c]) for c in range(4)) / h.shape[0]
    mb = means - means.mean(0)
    expected = float(torch.trace(sw @ torch.linalg.pinv(mb.T @ mb / 4, hermitian=True, rtol=1e-10)) / 4)
    assert proj.metrics["4"]["nc1"] == pytest.approx(expected, rel=1e-9)


def test_auto_chooses_projected_over_the_limit_and_says_so():
    model, loader = net(), batches(*data())
    limit = estimate_memory(30, 4, "full").peak  # D = 30 fits at peak, D = 40 does not
    assert estimate_memory(40, 4, "full").peak > limit
    with pytest.warns(ResourceWarning, match=r"layer '2'.*projected scatter"):
        report = measure(model, loader, ["2", "4"], num_classes=4, progress=False, scatter="auto",
                         max_scatter_bytes=limit)
    modes = report.info["scatter_per_layer"]
    assert modes["2"] == "projected" and modes["4"] == "full"  # D = 40 over the limit, D = 30 under it
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        quiet = measure(model, loader, ["2", "4"], num_classes=4, progress=False, scatter="auto")
    assert set(quiet.info["scatter_per_layer"].values()) == {"full"}
    assert report.metrics["2"]["nc1"] == pytest.approx(quiet.metrics["2"]["nc1"], rel=1e-10)


def test_projected_needs_a_reiterable_loader():
    model = net()
    with pytest.raises(ValueError, match="second pass"):
        measure(model, iter(batches(*data())), ["2"], progress=False, scatter="projected")
    with pytest.raises(ValueError, match="second pass"):
        measure(model, iter(batches(*data())), ["2"], progress=False, scatter="auto", max_scatter_bytes=1)


def test_cli_measure_scatter_projected_reads_the_file_twice(tmp_path):
    x, y = data(n=300, d=25, k=5, seed=1)
    path = tmp_path / "f.npz"
    np.savez(path, features=x.numpy(), labels=y.numpy())
    runner = CliRunner()
    values = {}
    for mode in ("full", "projected", "auto"):
        out = tmp_path / f"{mode}.json"
        result = runner.invoke(app, ["measure", str(path), "--scatter", mode, "--json", str(out), "-q"])
        assert result.exit_code == 0, result.output
        rec = json.loads(out.read_text())["results"][0]
        values[mode] = rec["metrics"]["nc1"]
        assert rec["scatter"] == ("full" if mode == "auto" else mode)
    assert values["projected"] == pytest.approx(values["full"], rel=1e-10) and values["auto"] == values["full"]
    bad = runner.invoke(app, ["measure", str(path), "--scatter", "sketch"])
    assert bad.exit_code == 2 and "--scatter must be one of" in bad.output
    both = runner.invoke(app, ["measure", str(path), "--scatter", "projected", "--trace-only"])
    assert both.exit_code == 2 and "contradict" in both.output
