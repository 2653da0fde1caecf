"""ResNet-18/34 for small images (CIFAR-style): 3×3 stem, no max-pool, configurable width; and the
torchvision shape (7×7 stride-2 stem, max-pool; ResNet-18/34/50) that Rangamani et al.'s official code trains.

He et al. (CVPR 2016) ResNets as used for 32×32 images (and by Rangamani et al. 2023 for MNIST,
FashionMNIST and CIFAR-10): the stem is a 3×3 stride-1 convolution without max-pooling, followed by
four stages of BasicBlocks with ``width·(1, 2, 4, 8)`` channels (strides 1, 2, 2, 2), global average
pooling and a Linear head named ``fc`` (as torchvision's). Module names follow torchvision
(``conv1``, ``layer2.0.conv1``, ``layer2.0.downsample.0``, ``fc``), so layer lists carry over.

``stem="imagenet"`` keeps torchvision's stem — 7×7 stride-2 conv, BatchNorm, ReLU, 3×3 stride-2
max-pool — as the official code of Rangamani et al. does (``get_model`` in ``src/Models.py`` of
``mariuslindegaard/Intermediate_Neural_Collapse``, branch ICML2023: ``torchvision.models.resnetN()``
with ``conv1`` rebuilt for the data's channels and ``fc`` for K classes); ResNet-50 uses Bottleneck
blocks (stride on the 3×3 conv, torchvision's v1.5). ``impl="torchvision"`` builds torchvision's
ResNet (when installed; for ``stem="small"`` its stem is swapped for the 3×3 conv / no max-pool);
``impl="own"`` (default) needs nothing beyond torch and has the same module names and shapes.

Example:
    >>> import torch
    >>> from nclens.models import resnet18
    >>> net = resnet18(num_classes=10, in_channels=1, width=8)
    >>> tuple(net(torch.randn(2, 1, 16, 16)).shape)
    (2, 10)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "build_resnet", "STEMS"]

STEMS = ("small", "imagenet")


class BasicBlock(nn.Module):
    """Two 3×3 convs with BatchNorm and an identity (or 1×1 conv) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 convs with BatchNorm, ``expansion = 4``, and a 1×1 conv shortcut (torchvision's)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with a 3×3 stem and no max-pool for small images, or torchvision's 7×7 / max-pool stem.

    Args:
        blocks: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        num_classes: K.
        in_channels: input channels (1 for MNIST, 3 for CIFAR).
        width: channels of the first stage (64 in the standard network).
        input_shape: (C, H, W) that flat inputs are reshaped to (optional).
        stem: ``"small"`` (3×3 stride-1 conv, no max-pool) or ``"imagenet"`` (7×7 stride-2 conv, max-pool).
        block: :class:`BasicBlock` (ResNet-18/34) or :class:`Bottleneck` (ResNet-50).
    """

    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int,
        *,
        in_channels: int = 3,
        width: int = 64,
        input_shape: Sequence[int] | None = None,
        stem: str = "small",
        block: type[nn.Module] = BasicBlock,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be four positive counts, got {tuple(blocks)}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        if stem == "small":
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        planes, in_planes = width, width
        expansion = getattr(block, "expansion", 1)
        for stage, count in enumerate(blocks, start=1):
            stride = 1 if stage == 1 else 2
            layer = []
            for i in range(count):
                layer.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * expansion
            self.add_module(f"layer{stage}", nn.Sequential(*layer))
            planes *= 2
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        if x.ndim == 2:
            if self.input_shape is None:
                raise ValueError("flat inputs need input_shape=(C, H, W) to be reshaped into images")
            x = x.view(x.shape[0], *self.input_shape)  # (B, C·H·W) -> (B, C, H, W)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))  # (B, C, 1, 1) -> (B, C)


def _torchvision_resnet(depth: int, num_classes: int, in_channels: int, width: int, stem: str = "small") -> nn.Module:
    try:
        import torchvision
    except (ImportError, RuntimeError) as exc:  # pragma: no cover - absent, or built for another torch
        raise ImportError(
            f"impl='torchvision' needs a torchvision built for torch {torch.__version__} "
            f"(pip install 'nclens[vision]'; loading it failed: {exc}); use impl='own' otherwise"
        ) from exc
    if width != 64:
        raise ValueError(f"torchvision's ResNet has width 64; got width={width} (use impl='own')")
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=num_classes)
    if stem == "small":
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != net.conv1.in_channels:  # the official get_model: same conv, the data's channels
        old = net.conv1
        net.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                              padding=old.padding, bias=old.bias is not None)
    return net


def build_resnet(
    depth: int,
    num_classes: int,
    *,
    in_channels: int = 3,
    width: int = 64,
    input_shape: Sequence[int] | None = None,
    impl: str = "own",
    stem: str = "small",
) -> nn.Module:
    """ResNet-18/-34 (``stem`` small or imagenet) or ResNet-50 (imagenet stem); ``impl`` own or torchvision."""
    layouts = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
    if depth not in layouts:
        raise ValueError(f"ResNet depth must be one of {sorted(layouts)}, got {depth!r}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if depth == 50 and stem != "imagenet":
        raise ValueError("ResNet-50 is built with the torchvision (imagenet) stem only")
    if impl == "torchvision":
        return _torchvision_resnet(depth, num_classes, in_channels, width, stem)
    if impl != "own":
        raise ValueError(f"impl must be 'own' or 'torchvision', got {impl!r}")
    return ResNet(layouts[depth], num_classes, in_channels=in_channels, width=width, input_shape=input_shape,
                  stem=stem, block=Bottleneck if depth == 50 else BasicBlock)


def resnet18(num_classes: int = 10, *, in_channels: int = 3, width: int = 64, **kwargs) -> nn.Module:
    """ResNet-18 (BasicBlocks 2-2-2-2) for small images."""
    return build_resnet(18, num_classes, in_channels=in_channels, width=width, **kwargs)


def resnet34(num_classes: int = 10, *, in_channels: int = 3, width: int = 64, **kwargs) -> nn.Module:
    """ResNet-34 (BasicBlocks 3-4-6-3) for small images."""
    return build_resnet(34, num_classes, in_channels=in_channels, width=width, **kwargs)
