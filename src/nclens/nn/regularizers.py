"""Regularisers that control neural collapse: the KoLeo (Kozachenko–Leonenko) entropy regulariser.

The Kozachenko–Leonenko estimator of the differential entropy of a sample is, up to constants,
the mean log distance of every point to its nearest neighbour. Maximising it spreads the
features of a batch out on the unit sphere, which counteracts within-class collapse (NC1).
Sablayrolles et al. ("Spreading vectors for similarity search", ICLR 2019) introduced it as a
loss; DINOv2 (Oquab et al. 2023) uses it, and Harun, Gallardo & Kanan ("Controlling Neural
Collapse Enhances Out-of-Distribution Detection and Transfer Learning", ICML 2025) add it to the
encoder's pooled feature to mitigate neural collapse and improve transfer.

For a batch x_1..x_B (B ≥ 2)::

    z_i = x_i / ‖x_i‖,     NN(i) = argmin_{j≠i} ‖z_i − z_j‖,
    L_KoLeo = −(1/B) Σ_i log(‖z_i − z_NN(i)‖ + ε)

The nearest neighbours are found without gradient (one B×B Gram matrix, the diagonal excluded);
the loss is differentiated through the distances to them, as in DINOv2's implementation.

Example:
    >>> import math, torch
    >>> from nclens.nn.regularizers import koleo_loss
    >>> square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    >>> round(float(koleo_loss(square, eps=0.0)), 6) == round(-math.log(math.sqrt(2.0)), 6)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["koleo_loss", "nearest_neighbour_distances", "KoLeoLoss"]


def _check_batch(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (B×D), got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"the KoLeo regulariser needs at least 2 samples in the batch, got {x.shape[0]}")
    if not x.is_floating_point():
        raise TypeError(f"features must have a floating dtype, got {x.dtype}")
    return x


def nearest_neighbour_distances(x: Tensor, *, normalise: bool = True) -> tuple[Tensor, Tensor]:
    """Distance of every row to its nearest *other* row, and that row's index.

    Args:
        x: (B, D) features, B ≥ 2.
        normalise: L2-normalise the rows first (the KoLeo convention).

    Returns:
        ``(distances (B,), indices (B,))``; distances carry gradient, indices do not.

    Example:
        >>> d, i = nearest_neighbour_distances(torch.tensor([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]]))
        >>> i.tolist()
        [1, 0, 1]
    """
    x = _check_batch(x)
    z = F.normalize(x, dim=1) if normalise else x
    with torch.no_grad():
        sq = z.square().sum(1)
        dist2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)  # (B, B) squared distances, for argmin only
        dist2.fill_diagonal_(float("inf"))
        idx = dist2.argmin(dim=1)
    diff = z - z[idx]  # (B, D)
    # ‖·‖ with a zero-safe gradient (duplicates in a batch give a zero difference, not NaN).
    dist = torch.sqrt(diff.square().sum(1).clamp_min(torch.finfo(diff.dtype).tiny))
    dist = torch.where(diff.abs().sum(1) == 0, torch.zeros_like(dist), dist)
    return dist, idx


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo entropy regulariser L = −mean_i log(‖z_i − z_NN(i)‖ + ε), z = x/‖x‖ (to *minimise*).

    Minimising L maximises the Kozachenko–Leonenko entropy estimate of the normalised features
    (Sablayrolles et al. 2019; Harun et al. 2025, entropy regularisation of the encoder).

    Args:
        x: (B, D) features of one batch, B ≥ 2 (any scale: rows are normalised).
        eps: ε inside the log (keeps duplicates finite); ε ≥ 0.

    Returns:
        A scalar tensor (differentiable in ``x``).

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.5, 0.5 * 3 ** 0.5], [-1.0, 0.0]])  # angles 0°, 60°, 180°
        >>> round(float(koleo_loss(x, eps=0.0)), 6) == round(-torch.log(torch.tensor(3.0)).item() / 6, 6)
        True
    """
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    dist, _ = nearest_neighbour_distances(x, normalise=True)
    return -torch.log(dist + eps).mean()


class KoLeoLoss(nn.Module):
    """Module form of :func:`koleo_loss`, optionally scaled by a weight α (``α · L_KoLeo``).

    Args:
        weight: α, the multiplier of the loss (Harun et al. 2025 add α·L_KoLeo to the CE loss).
        eps: ε inside the log.

    Example:
        >>> reg = KoLeoLoss(weight=0.5)
        >>> float(reg(torch.eye(3))) == 0.5 * float(koleo_loss(torch.eye(3)))
        True
    """

    def __init__(self, weight: float = 1.0, eps: float = 1e-8) -> None:
        super().__init__()
        if not weight >= 0.0:
            raise ValueError(f"weight must be >= 0, got {weight!r}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        self.weight = float(weight)
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        return self.weight * koleo_loss(x, eps=self.eps)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, eps={self.eps}"
