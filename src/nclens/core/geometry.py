"""Simplex equiangular tight frames (ETFs) and the collapsed geometry.

ETF_K = (I − 11ᵀ/K)/√(K−1) is the Gram matrix (unit Frobenius norm) of K unit vectors with pairwise
cosine −1/(K−1): the configuration that class means and classifier rows converge to under neural
collapse (Papyan, Han & Donoho, PNAS 2020). ``ETFdist(G) = ‖G/‖G‖_F − ETF_K‖_F`` (Zhu et al.,
NeurIPS 2021) measures how far a Gram matrix is from it.

Example:
    >>> import torch
    >>> from nclens.core.geometry import simplex_etf, etf_gram, etf_dist
    >>> m = simplex_etf(4, 6, seed=0)            # 4 vertices in R^6, unit norm
    >>> float(etf_dist(m @ m.T)) < 1e-12
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["etf_gram", "etf_dist", "simplex_etf", "random_orthonormal"]


def etf_gram(k: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """ETF_K = (I − 11ᵀ/K)/√(K−1), the unit-Frobenius-norm simplex ETF Gram matrix (K×K)."""
    if k < 2:
        raise ValueError(f"a simplex ETF needs K >= 2, got K={k}")
    eye = torch.eye(k, dtype=dtype, device=device)
    return (eye - 1.0 / k) / math.sqrt(k - 1)


def etf_dist(gram: Tensor) -> Tensor:
    """ETFdist(G) = ‖G/‖G‖_F − ETF_K‖_F for a K×K matrix G (Zhu et al. 2021)."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"etf_dist needs a square matrix, got shape {tuple(gram.shape)}")
    g = gram.to(torch.float64)
    norm = torch.linalg.matrix_norm(g)
    if float(norm) == 0.0:
        raise ValueError("etf_dist is undefined for a zero matrix")
    return torch.linalg.matrix_norm(g / norm - etf_gram(g.shape[0], device=g.device))


def random_orthonormal(d: int, k: int, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A d×k matrix with orthonormal columns, drawn (Haar) from a seeded generator."""
    if k > d:
        raise ValueError(f"cannot have {k} orthonormal columns in dimension {d}")
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


def simplex_etf(
    k: int,
    d: int | None = None,
    *,
    radius: float = 1.0,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """K vertices of a simplex ETF in R^d (rows, K×d), each of norm ``radius``.

    M = radius · √(K/(K−1)) · (I_K − 11ᵀ/K) Pᵀ with P (d×K) orthonormal columns (a random rotation
    when ``seed`` is an int; the first K coordinate axes when ``seed`` is None). Needs d >= K−1;
    for d = K−1 the simplex is embedded through an orthonormal basis of 1^⊥.
    """
    if k < 2:
        raise ValueError(f"a simplex ETF needs K >= 2, got K={k}")
    d = k if d is None else d
    if d < k - 1:
        raise ValueError(f"a simplex ETF of K={k} vertices needs dimension d >= K-1 = {k - 1}, got d={d}")
    centred = torch.eye(k, dtype=torch.float64) - 1.0 / k  # (K, K), rows sum to 0
    if d >= k:
        basis = random_orthonormal(d, k, seed=seed) if seed is not None else torch.eye(d, k, dtype=torch.float64)
        m = centred @ basis.T  # (K, d)
    else:  # d == K-1: express the rows in an orthonormal basis of 1^⊥
        u, _, _ = torch.linalg.svd(centred)
        coords = centred @ u[:, : k - 1]  # (K, K-1)
        rot = random_orthonormal(d, d, seed=seed) if seed is not None else torch.eye(d, dtype=torch.float64)
        m = coords @ rot.T
    m = m * (radius * math.sqrt(k / (k - 1)))
    return m.to(dtype)
