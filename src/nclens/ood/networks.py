"""The networks of the OOD experiment: encoder → (frozen ETF projector) → linear classifier.

``OODNet.forward(x)`` returns the logits (what the one :class:`~nclens.train.Trainer` evaluates) and
keeps the encoder's pooled feature of the last forward in ``feature`` — the vector the KoLeo term
acts on (``emb`` / ``xe0`` of the official ``resnet/pretrain_resnet_nc.py``), read by the training
step without a second forward or a hook, and also under DDP (the wrapper calls the module's forward).

Encoders:

* :class:`MLPEncoder` (vector inputs): Linear → BatchNorm1d → ReLU blocks ``blocks.0`` … ``blocks.L``,
  the last of width ``feature_dim``;
* :class:`ConvEncoder` (images): stages ``stages.i`` = Conv3×3 → BatchNorm2d → ReLU → MaxPool2
  (channel widths ``channels``), then a global average pool, as the ResNet encoder of the paper
  (its pooled 512-d feature); the feature dimension is the last stage's width.

:func:`feature_layers` lists the layers the experiment evaluates, as (row name, module name, how the
captured output is turned into a vector) — the official hooks (``nc_eval/retrieve_resnet_layer.py``,
``get_activation``): conv maps are average-pooled to 2×2 (4C features), 2-D outputs taken as they are;
the encoder's own output is the globally pooled feature; the projector is read at ``projector.fc2``,
*before* its L2 normalisation (``projection_head.2``), and after it (``projector``, named
``projector_l2``).

Example:
    >>> import torch
    >>> net = OODNet(ConvEncoder(1, (8, 16)), num_classes=3, projector=True)
    >>> net(torch.zeros(2, 1, 28, 28)).shape, net.feature.shape
    (torch.Size([2, 3]), torch.Size([2, 16]))
    >>> [row for row, _, _ in feature_layers(net, per_layer=True)]
    ['encoder.stages.0', 'encoder.stages.1', 'encoder', 'projector.fc1', 'projector', 'projector_l2']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nclens.nn.heads import ETFProjector

__all__ = ["MLPEncoder", "ConvEncoder", "OODNet", "feature_layers", "official_pool"]


class MLPEncoder(nn.Module):
    """Flatten, then ``blocks.i`` = Linear → (BatchNorm1d) → ReLU for widths ``(*hidden, feature_dim)``."""

    def __init__(self, in_dim: int, hidden: Sequence[int], feature_dim: int, batchnorm: bool = True) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        blocks = []
        prev = in_dim
        for width in (*hidden, feature_dim):
            layers: list[nn.Module] = [nn.Linear(prev, width)]
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            blocks.append(nn.Sequential(*layers))
            prev = width
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.blocks(self.flatten(x))


class ConvEncoder(nn.Module):
    """Conv stages (Conv3×3 → BN → ReLU → MaxPool2) and a global average pool: (B, C, H, W) → (B, channels[-1])."""

    def __init__(self, in_channels: int, channels: Sequence[int], batchnorm: bool = True) -> None:
        super().__init__()
        stages = []
        prev = in_channels
        for width in channels:
            layers: list[nn.Module] = [nn.Conv2d(prev, width, 3, padding=1, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
            stages.append(nn.Sequential(*layers))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.out_dim = int(channels[-1])

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.stages(x).mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)


class OODNet(nn.Module):
    """``encoder → projector (ETFProjector, or none) → classifier``; modules named for probing.

    Args:
        encoder: a module with ``out_dim`` (its pooled feature's width).
        num_classes: K.
        projector: insert the frozen :class:`~nclens.nn.heads.ETFProjector` (d → expansion·d → d, L2-normalised).
        expansion: the projector's hidden multiplier (4 in the paper).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, projector: bool, expansion: int = 4) -> None:
        super().__init__()
        dim = int(encoder.out_dim)
        self.encoder = encoder
        self.projector = ETFProjector(dim, expansion) if projector else None
        self.classifier = nn.Linear(dim, num_classes)
        self.has_projector = projector
        self.feature: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        feat = self.encoder(x)
        self.feature = feat
        return self.classifier(self.projector(feat) if self.projector is not None else feat)


def feature_layers(model: OODNet, per_layer: bool = False) -> list[tuple[str, str, str]]:
    """The evaluated layers: ``(row name, module name, "official" | "l2")``.

    ``per_layer=False``: the encoder's pooled feature (and, with a projector, its output before and
    after L2 normalisation). ``per_layer=True`` adds every encoder block / conv stage and the
    projector's hidden layer (``projector.fc1``), as the official full hook lists do.
    """
    rows: list[tuple[str, str, str]] = []
    enc = model.encoder
    if per_layer:
        blocks = enc.stages if isinstance(enc, ConvEncoder) else getattr(enc, "blocks", None)
        if blocks is not None:
            prefix = "encoder.stages" if isinstance(enc, ConvEncoder) else "encoder.blocks"
            last = len(blocks) - (0 if isinstance(enc, ConvEncoder) else 1)  # an MLP's last block is the encoder
            rows += [(f"{prefix}.{i}", f"{prefix}.{i}", "official") for i in range(last)]
    rows.append(("encoder", "encoder", "official"))
    if model.projector is not None:
        if per_layer:
            rows.append(("projector.fc1", "projector.fc1", "official"))
        rows.append(("projector", "projector.fc2", "official"))  # before L2 normalisation (the paper's point)
        rows.append(("projector_l2", "projector", "l2"))  # after it (what the classifier sees)
    return rows


def official_pool(flat: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The official hook's vector of a captured output (``retrieve_resnet_layer.py``, ``get_activation``).

    ``flat`` is (B, prod(shape)) (a :class:`~nclens.core.probe.Probe` with ``pool="flatten"``) and
    ``shape`` the per-sample shape. A vector stays; a (C, H, W) map with H > 2 is average-pooled to
    2×2 (``F.adaptive_avg_pool2d(output, 2)``) and flattened to 4C features; a smaller map is flattened.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> official_pool(x.flatten(1), (1, 4, 4)).tolist()
        [[2.5, 4.5, 10.5, 12.5]]
    """
    if len(shape) <= 1:
        return flat
    if len(shape) == 3 and shape[1] > 2:
        return F.adaptive_avg_pool2d(flat.reshape(flat.shape[0], *shape), 2).flatten(1)  # (B, 4C)
    return flat


@torch.no_grad()
def forward_features(model: OODNet, x: Tensor, rows: Sequence[tuple[str, str, str]], batch_size: int,
                     device: torch.device) -> tuple[dict[str, Tensor], Tensor]:
    """Features of ``rows`` (float32, CPU) and the model's logits for inputs ``x``, in eval mode."""
    from nclens.core.probe import Probe

    model.eval()
    modules = list(dict.fromkeys(module for _, module, _ in rows))
    out: dict[str, list[Tensor]] = {row: [] for row, _, _ in rows}
    logits = []
    with Probe(model, modules, mode="output", pool="flatten") as probe:
        for start in range(0, x.shape[0], batch_size):
            probe.clear()
            logits.append(model(x[start:start + batch_size].to(device)).float().cpu())
            for row, module, _ in rows:
                out[row].append(official_pool(probe.features[module], probe.shapes[module]).float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(logits)
