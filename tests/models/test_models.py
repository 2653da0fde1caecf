"""Models: layer names, shapes, layouts, argument errors; ETF-like matrices against closed forms."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

from nclens.core.probe import default_layers
from nclens.models import CNN, MLP, etf_like_matrix, linear_layer_names, resnet18, resnet34


def test_mlp_names_shapes_and_options():
    net = MLP(64, 10, depth=3, width=16)
    assert [n for n, _ in net.named_children()] == [
        "fc1", "bn1", "act1", "fc2", "bn2", "act2", "fc3", "bn3", "act3", "classifier"
    ]
    assert net.linear_names() == ["fc1", "fc2", "fc3", "classifier"]
    assert net(torch.randn(5, 64)).shape == (5, 10)
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)  # images are flattened
    plain = MLP(64, 3, depth=2, width=8, batchnorm=False, bias=False, activation="tanh")
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    assert all(m.bias is None for m in plain.modules() if isinstance(m, nn.Linear))
    assert MLP(4, 2, depth=0).linear_names() == ["classifier"]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"depth": -1}, "depth"), ({"width": 0}, "width"), ({"activation": "swishy"}, "activation")],
)
def test_mlp_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(8, 3, **kwargs)
    with pytest.raises(ValueError, match="num_classes"):
        MLP(8, 1)


def test_cnn_flat_and_image_inputs_and_downsampling():
    net = CNN(10, (1, 8, 8), depth=4, width=8)
    assert [n for n in default_layers(net)] == ["conv1", "conv2", "conv3", "conv4", "classifier"]
    x = torch.randn(3, 64)
    assert torch.equal(net.eval()(x), net(x.view(3, 1, 8, 8)))
    big = CNN(4, (3, 16, 16), depth=6, width=4, downsample_at=[2, 4])
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
             for n, m in big.named_children() if n.startswith("conv")]
    big(torch.randn(2, 3, 16, 16))
    for h in hooks:
        h.remove()
    assert shapes["conv1"] == (2, 4, 16, 16) and shapes["conv2"] == (2, 4, 8, 8) and shapes["conv6"] == (2, 4, 4, 4)
    with pytest.raises(ValueError, match="downsample_at"):
        CNN(4, (1, 8, 8), depth=2, downsample_at=[3])
    with pytest.raises(ValueError, match="input_shape"):
        CNN(4, (8, 8))


def test_resnet_layouts_stem_and_names():
    net = resnet18(10, in_channels=1, width=4)
    convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    # stem + 8 blocks × 2 convs + 3 downsample shortcuts
    assert len(convs) == 1 + 16 + 3
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert "layer2.0.downsample.0" in convs and net.fc.in_features == 32
    assert net(torch.randn(2, 1, 12, 12)).shape == (2, 10)
    deep = resnet34(5, in_channels=3, width=2)
    blocks = [n for n, _ in deep.named_modules() if n.count(".") == 1 and n.startswith("layer")]
    assert len(blocks) == 3 + 4 + 6 + 3
    flat = resnet18(3, in_channels=1, width=2, input_shape=(1, 8, 8))
    assert flat(torch.randn(2, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="input_shape"):
        resnet18(3, in_channels=1, width=2)(torch.randn(2, 64))
    with pytest.raises(ValueError, match="impl"):
        resnet18(3, impl="keras")


def _torchvision_loads() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):  # built for another torch: its ops fail to register
        return False
    return True


@pytest.mark.skipif(_torchvision_loads(), reason="a working torchvision is installed")
def test_torchvision_impl_without_torchvision_is_a_clear_error():
    with pytest.raises(ImportError, match="torchvision"):
        resnet18(10, impl="torchvision")


def test_etf_like_square_matches_closed_form():
    d = 6
    w = etf_like_matrix(d, d, dtype=torch.float64)
    expected = math.sqrt(d / (d - 1)) * (torch.eye(d, dtype=torch.float64) - 1.0 / d)
    assert torch.allclose(w, expected, atol=1e-12)
    gram = w @ w.T
    off = gram[~torch.eye(d, dtype=torch.bool)]
    assert torch.allclose(gram.diagonal(), torch.ones(d, dtype=torch.float64))
    assert torch.allclose(off, torch.full_like(off, -1.0 / (d - 1)))


def test_etf_like_rectangular_is_simplex_with_unit_rows():
    w = etf_like_matrix(10, 32, dtype=torch.float64)
    gram = w @ w.T
    assert torch.allclose(gram.diagonal(), torch.ones(10, dtype=torch.float64))
    off = gram[~torch.eye(10, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1.0 / 9), atol=1e-12)
    tall = etf_like_matrix(20, 8, dtype=torch.float64)
    assert tall.shape == (20, 8) and torch.allclose(tall.norm(dim=1), torch.ones(20, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows >= 2"):
        etf_like_matrix(1, 4)


def test_linear_layer_names_order():
    assert linear_layer_names(MLP(8, 3, depth=2, width=4)) == ["fc1", "fc2", "classifier"]
