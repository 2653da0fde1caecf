"""Multi-layer perceptron with clean, stable layer names for layer-by-layer collapse measurements.

Layers are named ``fc1 … fcL`` (hidden Linear layers), ``bn1 …`` (BatchNorm1d, optional),
``act1 …`` (activations) and ``classifier`` (the last Linear, K outputs), so that
``Probe(model, ["fc1", "classifier"])`` reads naturally and names are the same for every depth.

Rangamani et al. (ICML 2023, "Feature learning in deep classifiers through Intermediate Neural
Collapse") train such MLPs and measure each Linear layer's input.

Example:
    >>> import torch
    >>> from nclens.models import MLP
    >>> net = MLP(64, 10, depth=3, width=32)
    >>> [n for n, m in net.named_children()][:4]
    ['fc1', 'bn1', 'act1', 'fc2']
    >>> tuple(net(torch.randn(5, 64)).shape)
    (5, 10)
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

__all__ = ["MLP", "ACTIVATIONS", "etf_like_matrix", "linear_layer_names"]

#: Activation name → constructor.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


class MLP(nn.Sequential):
    """``depth`` hidden Linear layers of ``width`` units (+ BatchNorm + activation), then a K-way classifier.

    Args:
        in_dim: input dimension (inputs of more than two dimensions are flattened).
        num_classes: K, outputs of ``classifier``.
        depth: number of hidden Linear layers (>= 0); the network has ``depth + 1`` Linear layers.
        width: hidden width.
        batchnorm: add ``BatchNorm1d`` after each hidden Linear layer.
        bias: bias of the Linear layers (the classifier too).
        activation: one of :data:`ACTIVATIONS`.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        depth: int = 4,
        width: int = 128,
        *,
        batchnorm: bool = True,
        bias: bool = True,
        activation: str = "relu",
    ) -> None:
        for label, value, low in (("in_dim", in_dim, 1), ("num_classes", num_classes, 2), ("width", width, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ValueError(f"depth must be an integer >= 0, got {depth!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        prev = in_dim
        for i in range(1, depth + 1):
            layers[f"fc{i}"] = nn.Linear(prev, width, bias=bias)
            if batchnorm:
                layers[f"bn{i}"] = nn.BatchNorm1d(width)
            layers[f"act{i}"] = ACTIVATIONS[activation]()
            prev = width
        layers["classifier"] = nn.Linear(prev, num_classes, bias=bias)
        super().__init__(layers)
        self.in_dim, self.num_classes, self.depth, self.width = in_dim, num_classes, depth, width

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        if x.ndim > 2:
            x = x.flatten(1)  # (B, *shape) -> (B, in_dim)
        return super().forward(x)

    def linear_names(self) -> list[str]:
        """Names of the Linear layers, input to output: ``fc1 … fcL, classifier``."""
        return linear_layer_names(self)


def linear_layer_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` module of ``model`` in registration order."""
    return [name for name, module in model.named_modules() if name and isinstance(module, nn.Linear)]


def etf_like_matrix(rows: int, cols: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """An ETF-like weight (rows×cols) with unit rows, for freezing layers (Rangamani et al. 2023).

    Square case (rows = cols = d): √(d/(d−1)) (I − 11ᵀ/d), whose rows have unit norm and pairwise
    cosine −1/(d−1) — a simplex ETF of d vertices spanning the d−1 dimensional space 1^⊥.
    Rectangular case: the rows of a simplex ETF of ``rows`` vertices in R^cols
    (:func:`nclens.core.geometry.simplex_etf`, unit norm, seeded rotation) when rows <= cols + 1, else
    the square ETF's first ``cols`` columns repeated/cut to shape and rows renormalised.

    Example:
        >>> w = etf_like_matrix(4, 4)
        >>> torch.allclose(w.norm(dim=1), torch.ones(4))
        True
    """
    if rows < 2 or cols < 1:
        raise ValueError(f"an ETF-like matrix needs rows >= 2 and cols >= 1, got {rows}×{cols}")
    if rows == cols:
        d = rows
        w = math.sqrt(d / (d - 1)) * (torch.eye(d, dtype=torch.float64) - 1.0 / d)
    elif rows <= cols + 1:
        from nclens.core.geometry import simplex_etf

        w = simplex_etf(rows, cols, radius=1.0, seed=seed)
    else:
        square = math.sqrt(rows / (rows - 1)) * (torch.eye(rows, dtype=torch.float64) - 1.0 / rows)
        w = square[:, :cols]
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)  # rows normalised
    return w.to(dtype)
