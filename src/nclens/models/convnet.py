"""The ConvNet of Rangamani et al. (ICML 2023): a plain deep CNN with a Linear head on the flattened maps.

The official ``ConvNet`` (``src/Models.py`` of ``mariuslindegaard/Intermediate_Neural_Collapse``,
branch ICML2023; ``convnet_deep`` = 20 blocks of 128 channels, ``convnet_huge`` = 20 of 512): blocks
``b0 … b{L−1}``, each ``conv`` → ``bn`` (BatchNorm2d) → ``relu``, where

* ``b0`` and ``b1`` downsample: 2×2 convs with stride 2 and no padding (``downsampling_layers=[2, 2]``);
  ``b0`` has no ReLU;
* the others are 3×3 convs, stride 1, padding 1;
* convs have no bias (``use_bias`` is off unless the model name says ``bias``);
* then ``flatten`` and a Linear ``fc`` (with bias) from C·H·W to K — no global average pooling.

Module names follow the official ones (``b3.conv``, ``fc``) so that the official layer selection
("every ``conv`` and ``fc``") reads the same. Flat inputs (B, C·H·W) are reshaped to ``input_shape``.

Example:
    >>> import torch
    >>> from nclens.models import ConvNet
    >>> net = ConvNet(10, (1, 32, 32), depth=4, width=8)
    >>> tuple(net(torch.randn(2, 1, 32, 32)).shape), net.fc.in_features   # 32 -> 16 -> 8: 8·8·8
    ((2, 10), 512)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["ConvNet", "ConvBlock"]


class ConvBlock(nn.Module):
    """conv → BatchNorm2d → ReLU; a 2×2 stride-2 conv when ``downsample`` (the official ``_ConvBlock``)."""

    def __init__(self, in_ch: int, out_ch: int, *, downsample: int | None = None, batchnorm: bool = True,
                 bias: bool = False, relu: bool = True) -> None:
        super().__init__()
        if downsample:
            self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=downsample, stride=downsample, padding=0, bias=bias)
        else:
            self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(out_ch) if batchnorm else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.relu(x) if self.relu is not None else x


class ConvNet(nn.Module):
    """The official ConvNet: ``depth`` blocks of ``width`` channels, the first two downsampling by 2.

    Args:
        num_classes: K.
        input_shape: (C, H, W) of one input.
        depth: number of conv blocks (>= 2; the official ``convnet_deep`` has 20).
        width: channels of every block (official 128).
        downsample: kernel = stride of the leading downsampling blocks (official ``[2, 2]``).
        batchnorm: BatchNorm2d after each conv (official: yes unless ``nobn``).
        bias: bias of the convs (official: no); ``fc`` always has one, as in the official code.
    """

    def __init__(self, num_classes: int, input_shape: Sequence[int] = (1, 32, 32), depth: int = 20,
                 width: int = 128, *, downsample: Sequence[int] = (2, 2), batchnorm: bool = True,
                 bias: bool = False) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}")
        if not isinstance(depth, int) or depth < len(downsample):
            raise ValueError(f"depth must be an integer >= {len(downsample)} (the downsampling blocks), got {depth!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.input_shape = shape
        h, w = shape[1:]
        prev = shape[0]
        for i in range(depth):
            ds = int(downsample[i]) if i < len(downsample) else None
            if ds is not None and (h < ds or w < ds):
                raise ValueError(f"input {shape} is too small for {len(downsample)} downsampling blocks")
            self.add_module(f"b{i}", ConvBlock(prev, width, downsample=ds, batchnorm=batchnorm, bias=bias,
                                              relu=i != 0))
            if ds is not None:
                h, w = h // ds, w // ds
            prev = width
        self.depth = depth
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width * h * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        if x.ndim == 2:
            x = x.view(x.shape[0], *self.input_shape)  # (B, C·H·W) -> (B, C, H, W)
        for i in range(self.depth):
            x = getattr(self, f"b{i}")(x)
        return self.fc(self.flatten(x))  # (B, C, H, W) -> (B, C·H·W) -> (B, K)
