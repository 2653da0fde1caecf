"""The networks of the multi-label experiments: a small CNN with three heads, and Li et al.'s fixed ETF head.

Variants (one budget for all, :mod:`nclens.multilabel.experiment`):

* ``learned`` — ``nn.Linear(D, K)`` head on D features;
* ``fixed_etf`` — the official frozen ETF head on D features (``--etf`` of ``train_param_eff.py``);
* ``fixed_etf_dimk`` — the frozen ETF head with the last block reduced to K outputs (``--etf --fix_dim``).

The official ETF weight (``models/resnet.py`` and ``models/model.py`` of github.com/Heimine/NC_MLab):
W = √(K/(K−1)) (I_K − 11ᵀ/K), rescaled so that (1/K)‖W‖_F² = 1 (unit rows; already so), and for D > K
embedded as W·I_{K×D} — the first K feature coordinates, no rotation. The weight is frozen
(``requires_grad=False``), the bias is trained (``fc_bias=True``).

Example:
    >>> import torch
    >>> w = li_etf_weight(4, 6)
    >>> torch.allclose(w @ w.T, torch.eye(4) * 4 / 3 - 1 / 3, atol=1e-6), bool((w[:, 4:] == 0).all())
    (True, True)
    >>> net = build_model("fixed_etf_dimk", num_tags=4, in_channels=1, image_size=16, channels=(4, 8),
    ...                   hidden=16, feature_dim=32)
    >>> tuple(net(torch.zeros(2, 1, 16, 16)).shape), net.feature_dim
    ((2, 4), 4)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from nclens.nn.heads import FixedETFClassifier

__all__ = ["li_etf_weight", "li_etf_head", "MLabNet", "build_model", "count_trainable"]


def li_etf_weight(num_tags: int, feature_dim: int) -> Tensor:
    """(K, D) the official fixed ETF weight: √(K/(K−1))(I − 11ᵀ/K) normalised to unit rows, then ·I_{K×D}.

    Raises:
        ValueError: K < 2 or D < K (the official embedding needs D ≥ K).
    """
    k, d = int(num_tags), int(feature_dim)
    if k < 2 or d < k:
        raise ValueError(f"the official ETF head needs K >= 2 and feature dim D >= K, got K={k}, D={d}")
    w = (k / (k - 1)) ** 0.5 * (torch.eye(k, dtype=torch.float64) - 1.0 / k)
    w = w / torch.sqrt(w.square().sum() / k)  # weight /= sqrt(1/K ‖weight‖_F²) (a no-op: rows are unit)
    return (w @ torch.eye(k, d, dtype=torch.float64)).to(torch.float32)


def li_etf_head(num_tags: int, feature_dim: int) -> FixedETFClassifier:
    """A :class:`~nclens.nn.heads.FixedETFClassifier` (frozen weight, trained bias) holding :func:`li_etf_weight`."""
    head = FixedETFClassifier(feature_dim, num_tags)
    with torch.no_grad():
        head.weight.copy_(li_etf_weight(num_tags, feature_dim))
    return head


class MLabNet(nn.Module):
    """CNN: conv blocks, a hidden layer, the last block (Linear to D features) and a head.

    ``forward(x)`` returns the logits (N, K); ``forward(x, return_features=True)`` returns
    ``(logits, features)`` — also through ``DistributedDataParallel``; ``features(x)`` the (N, D)
    penultimate features on which MLab NC is measured.
    """

    def __init__(self, in_channels: int, image_size: int, head: nn.Module, feature_dim: int,
                 channels: Sequence[int] = (16, 32), hidden: int = 256, batch_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out) if batch_norm else nn.Identity(),
                       nn.ReLU(), nn.MaxPool2d(2)]
            c, size = out, size // 2
        if size < 1:
            raise ValueError(f"{len(channels)} pooling blocks shrink a {image_size}-pixel image to nothing")
        layers += [nn.Flatten(), nn.Linear(c * size * size, hidden),
                   nn.BatchNorm1d(hidden) if batch_norm else nn.Identity(), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.last = nn.Linear(hidden, feature_dim)  # the last block: D output channels
        self.head = head
        self.feature_dim = feature_dim

    def features(self, x: Tensor) -> Tensor:
        """(N, D) penultimate features."""
        return self.last(self.body(x))

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        h = self.features(x)
        z = self.head(h)
        return (z, h) if return_features else z


def build_model(variant: str, *, num_tags: int, in_channels: int, image_size: int, channels: Sequence[int],
                hidden: int, feature_dim: int, batch_norm: bool = True) -> MLabNet:
    """The network of ``variant`` (module docstring); ``feature_dim`` is D (``fixed_etf_dimk`` uses D = K)."""
    k = int(num_tags)
    if variant == "learned":
        d, head = feature_dim, nn.Linear(feature_dim, k)
    elif variant == "fixed_etf":
        d, head = feature_dim, li_etf_head(k, feature_dim)
    elif variant == "fixed_etf_dimk":
        d, head = k, li_etf_head(k, k)
    else:
        raise ValueError(f"unknown variant {variant!r}; valid: learned, fixed_etf, fixed_etf_dimk")
    return MLabNet(in_channels, image_size, head, d, channels, hidden, batch_norm)


def count_trainable(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
