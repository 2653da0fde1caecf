"""A plain deep CNN (no skip connections) with clean layer names for per-layer collapse.

Layers: ``conv1 … convL`` (3×3, padding 1; a stride of 2 at the layers listed in ``downsample_at``),
``bn1 …``, ``act1 …``, then global average pooling (``pool``) and a Linear ``classifier``.
Flat inputs (B, C·H·W), such as the 64-pixel digits, are reshaped to ``input_shape`` first.

Example:
    >>> import torch
    >>> from nclens.models import CNN
    >>> net = CNN(num_classes=10, input_shape=(1, 8, 8), depth=4, width=16)
    >>> tuple(net(torch.randn(3, 64)).shape)
    (3, 10)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from nclens.models.mlp import ACTIVATIONS

__all__ = ["CNN"]


class CNN(nn.Module):
    """``depth`` conv layers of ``width`` channels, global average pooling, a K-way Linear classifier.

    Args:
        num_classes: K.
        input_shape: (C, H, W) of one input; flat inputs are reshaped to it.
        depth: number of conv layers (>= 1).
        width: channels of every conv layer.
        downsample_at: 1-based conv indices with stride 2 (default: none for inputs up to 8 pixels,
            else every third layer).
        batchnorm: BatchNorm2d after each conv.
        bias: bias of the conv and Linear layers.
        activation: one of :data:`nclens.models.mlp.ACTIVATIONS`.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int] = (1, 8, 8),
        depth: int = 6,
        width: int = 32,
        *,
        downsample_at: Sequence[int] | None = None,
        batchnorm: bool = True,
        bias: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if downsample_at is None:
            downsample_at = [] if max(shape[1:]) <= 8 else list(range(3, depth + 1, 3))
        bad = [i for i in downsample_at if not 1 <= int(i) <= depth]
        if bad:
            raise ValueError(f"downsample_at entries must lie in [1, {depth}], got {bad}")
        self.input_shape = shape
        self.num_classes = num_classes
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        prev = shape[0]
        for i in range(1, depth + 1):
            stride = 2 if i in set(int(j) for j in downsample_at) else 1
            layers[f"conv{i}"] = nn.Conv2d(prev, width, 3, stride=stride, padding=1, bias=bias)
            if batchnorm:
                layers[f"bn{i}"] = nn.BatchNorm2d(width)
            layers[f"act{i}"] = ACTIVATIONS[activation]()
            prev = width
        for name, module in layers.items():
            self.add_module(name, module)
        self._body = list(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, num_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        if x.ndim == 2:
            x = x.view(x.shape[0], *self.input_shape)  # (B, C·H·W) -> (B, C, H, W)
        for name in self._body:
            x = getattr(self, name)(x)
        return self.classifier(self.pool(x).flatten(1))  # (B, C, 1, 1) -> (B, C)
