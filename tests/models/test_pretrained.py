"""EfficientNet-Lite: architecture vs the official scaling rules, TF SAME padding, preprocessing, weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nclens.models.pretrained import PRETRAINED, EfficientNetLite, Preprocess, SameConv2d, pretrained

NAMES = sorted(PRETRAINED)


def _have_weights(name: str) -> bool:
    try:
        __import__(PRETRAINED[name].module)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_structure_follows_the_lite_builder(name):
    spec = PRETRAINED[name]
    net = EfficientNetLite(name)
    # official efficientnet_lite_builder: first/last group repeats not scaled, the others ceil(depth * r)
    repeats = [1, 2, 2, 3, 3, 4, 1]
    expected = [r if g in (0, 6) else math.ceil(spec.depth * r) for g, r in enumerate(repeats)]
    assert len(net._blocks) == sum(expected)
    assert net._conv_stem.out_channels == 32 and net._conv_head.out_channels == 1280  # fix_head_stem
    assert net._blocks[0]._depthwise_conv.in_channels == 32
    assert not any("_se_" in n for n, _ in net.named_modules())  # no squeeze-and-excitation in the lite models
    assert net.feature_layers() == ["stem", *[f"stage{i}" for i in range(1, 8)], "pool"]
    x = torch.randn(2, 3, spec.resolution, spec.resolution)
    feats = {}
    hooks = [getattr(net, n).register_forward_hook(lambda m, a, o, n=n: feats.setdefault(n, o))
             for n in net.feature_layers()]
    with torch.no_grad():
        logits = net.eval()(x)
    for h in hooks:
        h.remove()
    assert tuple(logits.shape) == (2, 1000) and tuple(feats["pool"].shape) == (2, 1280)
    assert feats["stem"].shape[-1] == math.ceil(spec.resolution / 2)
    assert feats["stage7"].shape[-1] == math.ceil(spec.resolution / 32)  # total stride 32
    torch.testing.assert_close(net._fc(feats["pool"]), logits)  # pool is the classifier's input


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 2), (10, 3, 2), (10, 5, 2), (7, 5, 1), (8, 1, 1), (6, 3, 1)])
def test_same_padding_is_tensorflow_same(size, kernel, stride):
    conv = SameConv2d(2, 3, kernel, stride=stride, bias=False)
    x = torch.randn(1, 2, size, size + 1)
    out = conv(x)
    # TF "SAME": out = ceil(i/s), total pad = max((out-1)s + k - i, 0), the odd pixel at the end
    ref_parts = []
    for i in (size, size + 1):
        o = math.ceil(i / stride)
        pad = max((o - 1) * stride + kernel - i, 0)
        ref_parts.append((pad // 2, pad - pad // 2))
    (top, bottom), (left, right) = ref_parts
    ref = F.conv2d(F.pad(x, [left, right, top, bottom]), conv.weight, None, stride)
    assert out.shape[-2:] == (math.ceil(size / stride), math.ceil((size + 1) / stride))
    torch.testing.assert_close(out, ref)


def test_preprocess_normalisation_and_channels():
    img = torch.tensor([[[[0, 127], [255, 64]]]], dtype=torch.uint8)  # (1, 1, 2, 2)
    out = Preprocess(2, crop=False)(img)
    assert tuple(out.shape) == (1, 3, 2, 2) and out.dtype == torch.float32
    expected = (img.float() - 127.0) / 128.0
    for c in range(3):
        torch.testing.assert_close(out[:, c : c + 1], expected)
    with pytest.raises(TypeError, match="uint8"):
        Preprocess(2)(img.float())


def test_preprocess_centre_crop_then_bicubic():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8, generator=g)
    out = Preprocess(224)(img)
    side = int(224 / 256 * 28)  # 24: preprocessing.py's padded_center_crop_size
    off = (28 - side + 1) // 2
    crop = img[..., off : off + side, off : off + side].float()
    ref = F.interpolate(crop, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 255)
    torch.testing.assert_close(out, (ref - 127.0) / 128.0)
    ragged = Preprocess(224)([img[0], img[1, :, :20, :]])  # differently sized images
    assert tuple(ragged.shape) == (2, 3, 224, 224)
    torch.testing.assert_close(ragged[0], out[0])


@pytest.mark.parametrize("name", NAMES)
def test_packaged_weights_load_every_key_and_match_the_reference(name):
    if not _have_weights(name):
        pytest.skip(f"{PRETRAINED[name].package} (nclens[pretrained]) is not installed")
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch is not installed")
    net = pretrained(name)
    state = torch.load(net.weights_path, map_location="cpu", weights_only=True)
    assert set(state) == set(net.state_dict())  # strict=True loaded every key, none left over
    ref = ref_pkg.EfficientNet.from_name(name)
    ref.load_state_dict(state, strict=True)
    ref.eval()
    r = PRETRAINED[name].resolution
    x = torch.randn(2, 3, r, r, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), ref(x),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_recognises_a_palace(name):
    """scikit-learn's bundled photo of the Summer Palace: ImageNet class 698 ('palace') in the top 3."""
    if not _have_weights(name):
        pytest.skip(f"{PRETRAINED[name].package} (nclens[pretrained]) is not installed")
    from sklearn.datasets import load_sample_image

    photo = torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1)[None]  # (1, 3, 427, 640)
    net = pretrained(name)
    with torch.no_grad():
        top = net(net.preprocess(photo)).topk(3).indices[0].tolist()
    assert 698 in top


def test_unknown_names():
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        EfficientNetLite("efficientnet-b0")
    with pytest.raises(ValueError, match="unknown pretrained model"):
        pretrained("resnet50")
