"""Classifier heads that exploit neural collapse.

:class:`FixedETFClassifier` is a linear head whose weight is a *fixed* simplex ETF (not trained):
neural collapse says a trained head converges to one anyway (Papyan et al. 2020), so fixing it
saves K·D parameters and their optimiser state, and with feature dimension D = K the penultimate
layer shrinks too. For multi-label learning with the pick-all-label loss, the optimum of the
unconstrained feature model has exactly this classifier (Li, Li, Wang & Qu, ICML 2024, Thm. 1), and
training with a fixed ETF head and D = K matches or beats a learned head (their §5.2). Related: Zhu
et al. 2021 (fixed ETF classifier, d = K); Yang et al. 2022 (ETF head for imbalance).

The weight rows are w_k = √(K/(K−1)) (e_k − 1/K) for D = K: unit norm, pairwise cosine −1/(K−1),
W Wᵀ = (K/(K−1)) (I − 11ᵀ/K). For D ≠ K the same frame is embedded by a seeded orthonormal map
P (D×K): W = √(K/(K−1)) (I − 11ᵀ/K) Pᵀ (D ≥ K − 1 is required). The bias is trainable (optional).

Example:
    >>> import torch
    >>> from nclens.nn.heads import FixedETFClassifier
    >>> head = FixedETFClassifier(in_features=4, num_classes=4)
    >>> torch.allclose(head.weight @ head.weight.T, torch.eye(4) * 4 / 3 - 1 / 3, atol=1e-6)
    True
    >>> sum(p.numel() for p in head.parameters() if p.requires_grad)   # only the bias trains
    4
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from nclens.core.geometry import simplex_etf

__all__ = ["FixedETFClassifier", "etf_classifier_weight", "ETFProjector", "etf_projector_weight", "FrozenLinear",
           "L2Normalize"]


def etf_classifier_weight(num_classes: int, in_features: int, *, seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """(K, D) simplex-ETF classifier with unit-norm rows.

    D = K: w_k = √(K/(K−1))(e_k − 1/K) exactly (no rotation); D ≠ K: that frame mapped by a seeded
    orthonormal P (D×K), or through a basis of 1^⊥ when D = K − 1.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not isinstance(in_features, int) or in_features < num_classes - 1:
        raise ValueError(
            f"a simplex ETF of K={num_classes} rows needs in_features >= K-1 = {num_classes - 1}, got {in_features!r}"
        )
    rotate = None if in_features == num_classes else seed
    return simplex_etf(num_classes, in_features, radius=1.0, seed=rotate).to(dtype)


class FixedETFClassifier(nn.Module):
    """Linear head z = W h + b with W a fixed (frozen, non-trainable) simplex ETF and b trainable.

    Args:
        in_features: feature dimension D (D ≥ K − 1; D = K is the efficient choice of Li et al. 2024).
        num_classes: K ≥ 2.
        bias: learn a bias b (K,) (default True).
        seed: rotation seed of the embedding when D ≠ K.

    Attributes:
        weight: (K, D) buffer (saved in ``state_dict``, moved by ``.to``, never trained).
        bias: (K,) parameter or ``None``.
    """

    weight: Tensor

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.seed = seed
        self.register_buffer("weight", etf_classifier_weight(num_classes, in_features, seed=seed))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def forward(self, features: Tensor) -> Tensor:
        if features.shape[-1] != self.in_features:
            raise ValueError(f"features have dimension {features.shape[-1]}, expected {self.in_features}")
        return nn.functional.linear(features, self.weight.to(features.dtype),
                                    None if self.bias is None else self.bias.to(features.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"bias={self.bias is not None}, fixed ETF")


def etf_projector_weight(out_dim: int, in_dim: int, c: int | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """√(c/(c−1)) (I_{out×in} − (1/c)·11ᵀ) (Harun, Gallardo & Kanan, ICML 2025).

    I_{out×in} is the rectangular identity (ones on the main diagonal) and 11ᵀ the out×in matrix of
    ones. ``c`` defaults to ``out_dim``. The official code (``yousuf907/NC-OOD``,
    ``resnet/resnet_etf.py``, ``ResNet.__init__``) uses, for *both* layers of the projector, c = the
    projector's **output** dimension (``c = output_dim``): :class:`ETFProjector` passes ``c=dim``. For
    out = in = c the rows are unit vectors with pairwise cosine −1/(c−1): a simplex ETF of c vertices.

    Example:
        >>> w = etf_projector_weight(4, 4)
        >>> torch.allclose(w @ w.T, (4 / 3) * (torch.eye(4) - 0.25))
        True
        >>> etf_projector_weight(3, 2, c=2)            # √2 (I_{3×2} − ½): the official first layer for d = 2
        tensor([[ 0.7071, -0.7071],
                [-0.7071,  0.7071],
                [-0.7071, -0.7071]])
    """
    for label, value in (("out_dim", out_dim), ("in_dim", in_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    c = out_dim if c is None else c
    if not isinstance(c, int) or isinstance(c, bool) or c < 2:
        raise ValueError(f"an ETF projector layer needs c >= 2 (c/(c−1) is undefined for c=1), got c={c!r}")
    eye = torch.eye(out_dim, in_dim, dtype=torch.float64)
    return ((c / (c - 1)) ** 0.5 * (eye - 1.0 / c)).to(dtype)


class FrozenLinear(nn.Module):
    """y = x Wᵀ with W a fixed buffer (never trained, saved in ``state_dict``, moved by ``.to``)."""

    weight: Tensor

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        return x @ self.weight.to(x.dtype).T

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, frozen=True"


class L2Normalize(nn.Module):
    """Row-wise x / max(‖x‖₂, ε)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        return nn.functional.normalize(x, dim=1, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class ETFProjector(nn.Module):
    """Frozen simplex-ETF projector: d → 4d → d bias-free MLP with ReLU, then L2 normalisation.

    Harun, Gallardo & Kanan ("Controlling Neural Collapse Enhances Out-of-Distribution Detection and
    Transfer Learning", ICML 2025) place it between the encoder and a learnable linear classifier to
    *enforce* neural collapse in the projector's output (better OOD detection) while the encoder
    keeps more spread features (better transfer)::

        ETFProjector(x) = normalise(W₂ ReLU(W₁ x)),  W_l = √(c/(c−1)) (I_{out×in} − (1/c)·11ᵀ),  c = d

    with W₁ (hidden×d), W₂ (d×hidden), hidden = ``expansion``·d and — as in the official code
    (``yousuf907/NC-OOD``, ``resnet/resnet_etf.py``: ``shape, c = self.projection_head[i].weight.shape,
    output_dim`` for both layers) — c = d, the projector's output dimension, for **both** layers. The
    normalisation uses ε = 1e-8 (``F.normalize(xe, eps=1e-8)`` there).

    The pieces are named modules so that a forward hook can read each: ``fc1`` (W₁), ``relu``, ``fc2``
    (W₂: the output *before* L2 normalisation — the official ``projection_head.2``, where the paper
    measures collapse) and ``norm`` (the normalised output the classifier sees). The weights are
    *buffers*: never trained (no gradient, absent from ``parameters()``), yet saved in ``state_dict``
    and moved by ``.to(device)``.

    Args:
        dim: d, input and output dimension (≥ 2).
        expansion: hidden width multiplier (4 in the paper: 512 → 2048 → 512).
        normalize: L2-normalise the output (the paper does).
        eps: floor of the norm in the normalisation.

    Example:
        >>> proj = ETFProjector(8)
        >>> out = proj(torch.randn(5, 8))
        >>> tuple(out.shape), list(proj.parameters())
        ((5, 8), [])
        >>> torch.allclose(out.norm(dim=1), torch.ones(5))
        True
        >>> [name for name, _ in proj.named_children()]
        ['fc1', 'relu', 'fc2', 'norm']
    """

    def __init__(self, dim: int, expansion: int = 4, *, normalize: bool = True, eps: float = 1e-8) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2:
            raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
        if not isinstance(expansion, int) or isinstance(expansion, bool) or expansion < 1:
            raise ValueError(f"expansion must be a positive integer, got {expansion!r}")
        self.dim, self.expansion, self.normalize, self.eps = dim, expansion, normalize, float(eps)
        hidden = expansion * dim
        self.fc1 = FrozenLinear(etf_projector_weight(hidden, dim, c=dim))  # (4d, d)
        self.relu = nn.ReLU()
        self.fc2 = FrozenLinear(etf_projector_weight(dim, hidden, c=dim))  # (d, 4d)
        self.norm: nn.Module = L2Normalize(eps) if normalize else nn.Identity()

    @property
    def weight1(self) -> Tensor:
        """W₁ (hidden×d)."""
        return self.fc1.weight

    @property
    def weight2(self) -> Tensor:
        """W₂ (d×hidden)."""
        return self.fc2.weight

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Module API
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ETFProjector expects (B, {self.dim}) inputs, got shape {tuple(x.shape)}")
        return self.norm(self.fc2(self.relu(self.fc1(x))))  # (B, d) -> (B, 4d) -> (B, d)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.expansion * self.dim}, c={self.dim}, normalize={self.normalize}, "
                "frozen=True")
