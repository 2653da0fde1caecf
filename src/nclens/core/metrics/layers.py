"""Layer metrics of intermediate neural collapse: weight/mean subspace alignment, associative
memory alignment and weight singular spectra (Rangamani, Lindegaard, Galanti & Poggio, ICML 2023).

Notation: a Linear layer W_l (d_out×d_in) with input class means μ_c^{in} ∈ R^{d_in} (uncentred)
stacked as M = [μ_1 … μ_K] (d_in×K). Functions take the means as rows, (K, d_in), exactly as
:attr:`nclens.core.stats.ClassStats.means` stores them.

* ``subspace_alignment(W, means)`` = mean of the singular values of V_Wᵀ U_M, where V_W are the
  top-k right singular vectors of W (d_in×k) and U_M the top-k left singular vectors of M
  (d_in×k), k = K by default. The singular values are the cosines of the principal angles between
  the two subspaces: 1 = the class means live in the span that W reads; for independent uniformly
  random subspaces the expectation is small (k = 1: E|cos| = Γ(d/2)/(√π Γ((d+1)/2))).
* Conv layers (the official code's conventions): the weight (C_out, C_in, kh, kw) is reshaped to
  C_in × (C_out·kh·kw) and the input maps' class means (K, C_in, H, W) to C_in × (K·H·W) (each
  class contributes its C_in × (H·W) block); the alignment is between their top-k *left* singular
  subspaces in R^{C_in} (the rows of the reshaped weight play the role of W's input space).
  When k reaches the input dimension (e.g. C_in ≤ K channels) both subspaces are the whole space
  and the value is 1 by construction: the metric is informative only for d_in (or C_in) > K.
* ``assoc_memory_alignment(W, in, out)`` = cos_F(W, Σ_c μ_c^{out} μ_c^{in ᵀ}): the Frobenius cosine
  between the weight and the Hebbian / Willshaw (1969) associative memory built from the layer's
  class-mean input/output pairs. For conv layers the memory is summed over positions too:
  Σ_c Σ_p y_c[:, p] x_c[:, patch p]ᵀ (C_out × C_in·kh·kw), from ``F.unfold`` of the class-mean maps.
  The output means default to the layer applied to the input means — exact, because a Linear or
  conv layer is affine, so the class mean of its output is the layer applied to the class mean.
* ``weight_spectrum(W)``: singular values, descending (conv weights in the C_in × (C_out·kh·kw) form).

Example:
    >>> import torch
    >>> from nclens.core.metrics.layers import subspace_alignment
    >>> g = torch.Generator().manual_seed(0)
    >>> means = torch.randn(3, 20, generator=g, dtype=torch.float64)   # K=3 class means in R^20
    >>> w = torch.randn(5, 3, generator=g, dtype=torch.float64) @ means  # W reads exactly span(M)
    >>> round(subspace_alignment(w, means), 6)
    1.0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "conv_weight_matrix",
    "conv_means_matrix",
    "subspace_alignment",
    "subspace_alignment_conv",
    "assoc_memory_alignment",
    "assoc_memory_alignment_conv",
    "weight_spectrum",
    "layer_alignment",
    "random_subspace_alignment_k1",
]


def _as64(x: Tensor, name: str, ndim: int) -> Tensor:
    x = torch.as_tensor(x)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return x.detach().to(torch.float64)


def _top_left(a: Tensor, k: int) -> Tensor:
    """Top-k left singular vectors of ``a`` (rows×k)."""
    u, _, _ = torch.linalg.svd(a, full_matrices=False)
    return u[:, :k]


def _principal_cosines(basis_a: Tensor, basis_b: Tensor) -> Tensor:
    return torch.linalg.svdvals(basis_a.T @ basis_b).clamp(0.0, 1.0)


def _resolve_k(k: int | None, default: int, limits: tuple[int, ...]) -> int:
    k = default if k is None else k
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return min(k, *limits)


def conv_weight_matrix(weight: Tensor) -> Tensor:
    """Reshape a conv weight (C_out, C_in, kh, kw) to C_in × (C_out·kh·kw) (float64)."""
    w = _as64(weight, "conv weight", weight.ndim if weight.ndim >= 3 else 4)
    c_out, c_in = w.shape[:2]
    return w.transpose(0, 1).reshape(c_in, -1)  # (C_out, C_in, *k) -> (C_in, C_out·∏k)


def conv_means_matrix(mean_maps: Tensor) -> Tensor:
    """Reshape class-mean input maps (K, C_in, H, W) to C_in × (K·H·W) (float64).

    Column block c·H·W … (c+1)·H·W − 1 is class c's map as C_in × (H·W).
    """
    m = _as64(mean_maps, "class-mean maps", mean_maps.ndim if mean_maps.ndim >= 3 else 4)
    k, c_in = m.shape[:2]
    return m.transpose(0, 1).reshape(c_in, -1)  # (K, C_in, *spatial) -> (C_in, K·∏spatial)


def subspace_alignment(weight: Tensor, means: Tensor, k: int | None = None) -> float:
    """Alignment of W's top-k right singular subspace with the span of the class means.

    mean_j σ_j(V_Wᵀ U_M), V_W = top-k right singular vectors of W (d_out×d_in), U_M = top-k left
    singular vectors of M = meansᵀ (d_in×K, uncentred); k = K by default, clipped to
    min(d_out, d_in). Rangamani et al. 2023 (the canonical definition).

    Args:
        weight: (d_out, d_in) Linear weight.
        means: (K, d_in) input class means (rows, as ``ClassStats.means``).
        k: subspace dimension (default K).

    Returns:
        A value in [0, 1]; 1 when the subspaces coincide.
    """
    w = _as64(weight, "weight", 2)
    m = _as64(means, "means", 2).to(w.device)
    if m.shape[1] != w.shape[1]:
        raise ValueError(f"means have dimension {m.shape[1]} but weight has d_in={w.shape[1]} columns")
    kk = _resolve_k(k, m.shape[0], (w.shape[0], w.shape[1], m.shape[0]))
    v_w = _top_left(w.T, kk)  # (d_in, k) right singular vectors of W
    u_m = _top_left(m.T, kk)  # (d_in, k) left singular vectors of M
    return float(_principal_cosines(v_w, u_m).mean())


def subspace_alignment_conv(weight: Tensor, mean_maps: Tensor, k: int | None = None) -> float:
    """Conv-layer subspace alignment (reshape conventions of the module docstring).

    Top-k left singular vectors of the weight as C_in × (C_out·kh·kw) vs top-k left singular vectors
    of the class-mean maps as C_in × (K·H·W); k = K (number of classes) by default, clipped to the
    ranks available.

    Args:
        weight: (C_out, C_in, kh, kw).
        mean_maps: (K, C_in, H, W) class means of the layer's input maps.
        k: subspace dimension (default K).
    """
    wm = conv_weight_matrix(weight)
    mm = conv_means_matrix(mean_maps).to(wm.device)
    if mm.shape[0] != wm.shape[0]:
        raise ValueError(f"mean maps have {mm.shape[0]} channels but the weight has C_in={wm.shape[0]}")
    kk = _resolve_k(k, mean_maps.shape[0], (wm.shape[0], wm.shape[1], mm.shape[1]))
    return float(_principal_cosines(_top_left(wm, kk), _top_left(mm, kk)).mean())


def _frobenius_cosine(a: Tensor, b: Tensor) -> float:
    na, nb = torch.linalg.matrix_norm(a), torch.linalg.matrix_norm(b)
    if float(na) == 0.0 or float(nb) == 0.0:
        raise ValueError("the Frobenius cosine is undefined for a zero matrix")
    return float((a * b).sum() / (na * nb))


def assoc_memory_alignment(
    weight: Tensor, in_means: Tensor, out_means: Tensor | None = None, bias: Tensor | None = None
) -> float:
    """Frobenius cosine between W and the associative memory Σ_c μ_c^{out} μ_c^{in ᵀ}.

    cos_F(A, B) = ⟨A, B⟩_F / (‖A‖_F ‖B‖_F); the memory (d_out×d_in) is the Hebbian outer-product
    store of the class-mean pairs (Willshaw et al. 1969; discussed by Rangamani et al. 2023).

    Args:
        weight: (d_out, d_in).
        in_means: (K, d_in) class means of the layer's input.
        out_means: (K, d_out) class means of its output; default ``in_means Wᵀ + b`` (exact).
        bias: (d_out,) bias used for the default output means.
    """
    w = _as64(weight, "weight", 2)
    mi = _as64(in_means, "in_means", 2).to(w.device)
    if mi.shape[1] != w.shape[1]:
        raise ValueError(f"in_means have dimension {mi.shape[1]} but weight has d_in={w.shape[1]}")
    if out_means is None:
        mo = mi @ w.T + (0.0 if bias is None else _as64(bias, "bias", 1).to(w.device))
    else:
        mo = _as64(out_means, "out_means", 2).to(w.device)
        if mo.shape != (mi.shape[0], w.shape[0]):
            raise ValueError(f"out_means must have shape {(mi.shape[0], w.shape[0])}, got {tuple(mo.shape)}")
    return _frobenius_cosine(w, mo.T @ mi)  # (d_out, K) @ (K, d_in)


def assoc_memory_alignment_conv(conv: nn.Conv2d, in_mean_maps: Tensor, out_mean_maps: Tensor | None = None) -> float:
    """Conv version: cos_F(W, Σ_c Σ_p y_c[:, p] x_c[:, patch p]ᵀ) with W as C_out × (C_in·kh·kw).

    Patches come from ``F.unfold`` with the layer's kernel size, stride, padding and dilation, so
    that y_c = conv(x_c) position by position; the default output maps are the conv applied to the
    class-mean input maps (exact class means of the outputs).
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1 or not isinstance(conv.padding, tuple):
        raise ValueError(f"only groups=1 and explicit padding are supported, got groups={conv.groups}, "
                         f"padding={conv.padding!r}")
    x = _as64(in_mean_maps, "in_mean_maps", 4)
    w = conv.weight.detach().to(x.device, torch.float64)
    patches = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    # patches: (K, C_in·kh·kw, L)
    if out_mean_maps is None:
        bias = conv.bias.detach().to(x.device, torch.float64) if conv.bias is not None else None
        y = F.conv2d(x, w, bias, conv.stride, conv.padding, conv.dilation).flatten(2)  # (K, C_out, L)
    else:
        y = _as64(out_mean_maps, "out_mean_maps", 4).to(x.device).flatten(2)  # (K, C_out, L)
        if y.shape[2] != patches.shape[2] or y.shape[1] != w.shape[0]:
            raise ValueError(f"out_mean_maps {tuple(out_mean_maps.shape)} do not match the conv output")
    memory = torch.einsum("kol,kpl->op", y, patches)  # (C_out, C_in·kh·kw)
    return _frobenius_cosine(w.reshape(w.shape[0], -1), memory)


def weight_spectrum(weight: Tensor) -> Tensor:
    """Singular values (descending, float64) of a Linear weight, or of a conv weight as C_in × (C_out·kh·kw)."""
    w = torch.as_tensor(weight).detach()
    mat = _as64(w, "weight", 2) if w.ndim == 2 else conv_weight_matrix(w)
    return torch.linalg.svdvals(mat)


def layer_alignment(module: nn.Module, in_means: Tensor, k: int | None = None) -> dict[str, float]:
    """``subspace_alignment`` and ``assoc_memory_alignment`` of a Linear or Conv2d layer.

    Args:
        module: ``nn.Linear`` (``in_means`` (K, d_in)) or ``nn.Conv2d`` (``in_means`` (K, C_in, H, W)).
        in_means: class means of the module's input.
        k: subspace dimension (default K).
    """
    if isinstance(module, nn.Linear):
        w = module.weight.detach()
        b = module.bias.detach() if module.bias is not None else None
        return {
            "subspace_alignment": subspace_alignment(w, in_means, k),
            "assoc_memory_alignment": assoc_memory_alignment(w, in_means, bias=b),
        }
    if isinstance(module, nn.Conv2d):
        return {
            "subspace_alignment": subspace_alignment_conv(module.weight.detach(), in_means, k),
            "assoc_memory_alignment": assoc_memory_alignment_conv(module, in_means),
        }
    raise TypeError(f"layer alignment needs nn.Linear or nn.Conv2d, got {type(module).__name__}")


def random_subspace_alignment_k1(d: int) -> float:
    """E|⟨u, v⟩| for independent uniform unit vectors in R^d: Γ(d/2) / (√π Γ((d+1)/2)).

    The expected ``subspace_alignment`` with k = 1 between independent random directions.
    """
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    return math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
