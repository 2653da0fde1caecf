"""Multi-class neural-collapse metrics: pure functions from :class:`~nclens.core.stats.ClassStats` (and
classifier weights) to numbers. Definitions and sources: the metric registry (``nclens metrics``).

Notation: μ_c class means, μ_G the mean of the class means (or the sample-weighted mean with
``weighted=True``), M̄ = [μ_c − μ_G] (K×D), Σ_W = S_W/N, Σ_B = M̄ᵀM̄/K, W (K×D) the classifier with
row k belonging to the k-th class in ascending label order.

No function allocates a K×K matrix: pairwise quantities (cdnv, equiangularity, ETF distances) are
exact reductions over row blocks, so K = 50,000 classes fit in memory; nc1 works in the rank-(K−1)
subspace of the means and never inverts a D×D matrix. ``cdnv``, ``nc2_equiangular`` and ``nc2_etf``
share ONE float64 pass over the Gram M̄M̄ᵀ (``_pairwise_reductions``), cached on the statistics until
their next update, so computing all three (or :func:`~nclens.core.metrics.compute_metrics`) costs one
O(K²·D/2) pass instead of three O(K²·D) ones.

Example:
    >>> import torch
    >>> from nclens.core.geometry import simplex_etf
    >>> from nclens.core.stats import ClassStats
    >>> from nclens.core.metrics import nc1, nc2_etf
    >>> means = simplex_etf(4, 8, radius=3.0)
    >>> y = torch.arange(400) % 4
    >>> x = means[y] + 0.1 * torch.randn(400, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> s = ClassStats(num_classes=4).update(x, y)
    >>> round(float(nc2_etf(s)), 2) < 0.1
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from nclens.core.errors import UndefinedMetricError
from nclens.core.geometry import etf_gram
from nclens.core.metrics.registry import register_metric
from nclens.core.stats import ClassStats

__all__ = [
    "centred_means",
    "sigma_w",
    "sigma_b",
    "nc1",
    "nc1_from_moments",
    "nc1_trace",
    "within_share",
    "cdnv",
    "nc2_equinorm",
    "nc2_equinorm_w",
    "nc2_equiangular",
    "nc2_equiangular_w",
    "nc2_etf",
    "nc2_etf_w",
    "nc3_duality",
    "nc3_etf",
    "ncc_predict",
    "nc4_ncc_mismatch",
    "effective_rank",
    "total_covariance",
    "etf_dist_of_product",
    "scatter_available",
]

#: Elements of one row block in the pairwise reductions (b×K float64 ≈ 128 MiB).
_BLOCK_ELEMENTS = 2**24
#: Elements of one Gram tile in the shared pairwise pass: a row block is computed tile by tile so
#: that the element-wise work stays cache-resident (2**17 float64 = 1 MiB).
_TILE_ELEMENTS = 2**17


def _checked(stats: ClassStats, min_classes: int = 2) -> ClassStats:
    if not isinstance(stats, ClassStats):
        raise TypeError(f"expected ClassStats, got {type(stats).__name__}")
    stats._require()
    empty = (stats.counts == 0).nonzero().flatten()
    if empty.numel():
        labels = stats.label_values[empty][:10].tolist()
        raise ValueError(
            f"classes {labels} have no samples ({empty.numel()} empty of K={stats.n_classes}); "
            f"pass stats.present() to measure only the classes seen"
        )
    if stats.n_classes < min_classes:
        raise ValueError(
            f"neural-collapse metrics need at least {min_classes} classes, got K={stats.n_classes}"
        )
    return stats


def _check_weight(weight: Tensor, k: int | None = None, d: int | None = None) -> Tensor:
    weight = torch.as_tensor(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (K×D), got shape {tuple(weight.shape)}")
    if k is not None and weight.shape[0] != k:
        raise ValueError(f"weight has {weight.shape[0]} rows but there are K={k} classes")
    if d is not None and weight.shape[1] != d:
        raise ValueError(f"weight has {weight.shape[1]} columns but features have D={d}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight contains NaN or Inf")
    if weight.shape[0] < 2:
        raise ValueError(f"weight needs at least 2 rows (classes), got {weight.shape[0]}")
    return weight.to(torch.float64)


def _row_blocks(k: int, other: int) -> Iterator[slice]:
    step = max(1, _BLOCK_ELEMENTS // max(other, 1))
    for start in range(0, k, step):
        yield slice(start, min(k, start + step))


def _offdiag_mean(a: Tensor, b: Tensor, fn: Callable[[Tensor, slice], Tensor]) -> Tensor:
    """Mean over ordered pairs c≠c′ of fn(a_c · b_c′ block), computed by row blocks (no K×K)."""
    k = a.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for rows in _row_blocks(k, b.shape[0]):
        block = fn(a[rows] @ b.T, rows)  # (b, K)
        idx = torch.arange(rows.start, rows.stop, device=a.device)
        block[idx - rows.start, idx] = 0.0
        total = total + block.sum()
    return total / (k * (k - 1))


# ----------------------------------------------------------------- moments
def centred_means(stats: ClassStats, *, weighted: bool = False) -> Tensor:
    """M̄ = [μ_c − μ_G] (K×D); μ_G = mean of class means, or sample-weighted with ``weighted``."""
    stats = _checked(stats)
    means = stats.means
    if weighted:
        mu_g = stats.sums.sum(0) / stats.counts.sum()
    else:
        mu_g = means.mean(0)
    return means - mu_g


def sigma_w(stats: ClassStats) -> Tensor:
    """Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ (D×D), from the pooled scatter."""
    stats = _checked(stats)
    if stats.scatter_w is None:
        raise UndefinedMetricError("Σ_W needs the full scatter; these statistics were kept with scatter='trace'")
    return stats.scatter_w / stats.total


def sigma_b(stats: ClassStats, *, weighted: bool = False) -> Tensor:
    """Σ_B = (1/K) Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ (D×D)."""
    m = centred_means(stats, weighted=weighted)
    return m.T @ m / m.shape[0]


def _trace_w(stats: ClassStats) -> Tensor:
    return stats.class_sq.sum() / stats.total


def _trace_b(m: Tensor) -> Tensor:
    return m.square().sum() / m.shape[0]


def _means_svd(m: Tensor) -> tuple[Tensor, Tensor]:
    """Right singular vectors V (D×r) and singular values s (r) of M̄ on its nonzero spectrum.

    Uses the SVD of the K×D matrix, or for very large K the eigendecomposition of the smaller
    D×D Gram M̄ᵀM̄ (never form K×K).
    """
    k, d = m.shape
    if k <= 4096 or d >= k:
        _, s, vh = torch.linalg.svd(m, full_matrices=False)
        v = vh.T
    else:
        evals, v = torch.linalg.eigh(m.T @ m)
        evals, v = evals.flip(0), v.flip(1)
        s = evals.clamp_min(0).sqrt()
    if s.numel() == 0 or float(s[0]) == 0.0:
        raise UndefinedMetricError("all class means coincide: Σ_B = 0, NC metrics are undefined")
    # M̄'s rows sum to zero (centred at μ_G, or weighted-sum to zero), so rank M̄ <= K−1: the K-th
    # singular value is rounding noise and is dropped structurally; the tolerance drops the rest.
    s, v = s[: k - 1], v[:, : k - 1]
    tol = s[0] * max(k, d) * torch.finfo(torch.float64).eps * (10.0 if k <= 4096 or d >= k else 1e5)
    keep = s > tol
    return v[:, keep], s[keep]


# -------------------------------------------------------------------- NC1
def nc1(stats: ClassStats, *, weighted: bool = False) -> float:
    """NC1 = Tr(Σ_W Σ_B⁺)/K (Papyan, Han & Donoho 2020).

    Σ_B⁺ is taken on Σ_B's nonzero eigenspace (rank ≤ K−1). With M̄ = U S Vᵀ, Σ_B = V (S²/K) Vᵀ, so
    Tr(Σ_W Σ_B⁺)/K = Σ_j v_jᵀ Σ_W v_j / s_j² — only the rank-r subspace of the means is used; no D×D
    matrix is inverted and K−1 ≥ D works.
    """
    stats = _checked(stats)
    return nc1_from_moments(sigma_w(stats), centred_means(stats, weighted=weighted))


def nc1_from_moments(sigma_within: Tensor, centred: Tensor) -> float:
    """Tr(Σ_W Σ_B⁺)/K from Σ_W (D×D) and centred means M̄ (K×D), Σ_B = M̄ᵀM̄/K.

    = Σ_j v_jᵀ Σ_W v_j / s_j² over the nonzero singular triplets of M̄ (rank ≤ K−1). Each term is
    clamped at 0: Σ_W is positive semi-definite, so a negative v_jᵀΣ_W v_j is rounding of an exact 0.
    Shared by the multi-class and multi-label (singleton) NC1.
    """
    v, s = _means_svd(centred)
    proj = ((sigma_within @ v) * v).sum(0).clamp_min(0.0)  # (r,) v_jᵀ Σ_W v_j
    return float((proj / s.square()).sum())


def nc1_trace(stats: ClassStats, *, weighted: bool = False) -> float:
    """Tr Σ_W / Tr Σ_B (Tirer et al. 2023; Rangamani et al. 2023)."""
    stats = _checked(stats)
    tb = _trace_b(centred_means(stats, weighted=weighted))
    if float(tb) == 0.0:
        raise UndefinedMetricError("all class means coincide: Tr Σ_B = 0")
    return float(_trace_w(stats) / tb)


def within_share(stats: ClassStats, *, weighted: bool = False) -> float:
    """Tr Σ_W / (Tr Σ_W + Tr Σ_B) (Rangamani et al. 2023): 0 = fully collapsed, 1 = no class signal."""
    stats = _checked(stats)
    tw, tb = _trace_w(stats), _trace_b(centred_means(stats, weighted=weighted))
    if float(tw + tb) == 0.0:
        raise UndefinedMetricError("within_share is undefined: Tr Σ_W + Tr Σ_B = 0 (all features are equal)")
    return float(tw / (tw + tb))


class _Pairwise(NamedTuple):
    """The three pairwise reductions of one shared pass over G = M̄M̄ᵀ."""

    cdnv: float  #: mean_{c≠c′} (σ_c² + σ_c′²)/(2‖μ_c − μ_c′‖²); NaN when a class has < 2 samples
    equiangular: float  #: mean_{c≠c′} |cos(μ̄_c, μ̄_c′) + 1/(K−1)|
    etf: float  #: ‖G/‖G‖_F − ETF_K‖_F


def _pairwise_reductions(stats: ClassStats, weighted: bool = False) -> _Pairwise:
    """cdnv, equiangularity and ETF distance of the class means from ONE pass over G = M̄M̄ᵀ.

    With m_c the rows of M̄ (centred as ``weighted`` says), s_c = ‖m_c‖², σ_c² = class_sq_c/n_c:

    * cdnv = Σ_{c≠c′} (σ_c² + σ_c′²)/(2 d²_cc′) / (K(K−1)), d²_cc′ = s_c + s_c′ − 2 G_cc′ = ‖μ_c − μ_c′‖²
      (translation invariant, so either centring gives it); computed only when every n_c ≥ 2, else NaN;
      a zero distance makes it non-finite (``cdnv`` turns both into its errors);
    * equiangularity = Σ_{c≠c′} |G_cc′/(‖m_c‖‖m_c′‖) + 1/(K−1)| / (K(K−1));
    * ETF distance = (Σ_{c,c′} (G_cc′/‖G‖_F − (ETF_K)_cc′)²)^½, with ‖G‖_F² = ‖M̄ᵀM̄‖_F² taken first
      from the D×D Gram (Zhu et al. 2021), so the squared differences are summed directly.

    When one block holds all of G (K² ≤ ``_BLOCK_ELEMENTS``, i.e. K ≤ 4096 by default) the dense
    float64 formulas run, bit-for-bit those of the separate metrics. Otherwise G is walked once in row
    blocks of min(``_BLOCK_ELEMENTS // K``, √``_TILE_ELEMENTS``) rows (never K×K), each block computed
    tile by tile (≤ ``_TILE_ELEMENTS`` elements, cache-resident) over the upper triangle only: every
    summand is symmetric in (c, c′), so tiles right of the diagonal block count twice. That is K²·D
    multiply-adds for all three metrics, where three separate passes took 3·K²·D.

    Everything is float64. A float32 GEMM would be ~2× faster on CPU but, measured at K = 1,000,
    D = 1,024, it gives relative errors of ~4e-4 in equiangularity and ETF distance near collapse
    (means an ETF + 1e-6 noise) and turns a pair of means 1e-4 apart into a zero distance for cdnv, so
    it is not used.

    The result is cached in ``stats._cache`` (cleared by every update, merge, all_reduce and load) under
    a key holding ``weighted`` and the block sizes, so ``cdnv``, ``nc2_equiangular``, ``nc2_etf`` and
    :func:`~nclens.core.metrics.compute_metrics` share it.
    """
    stats = _checked(stats)
    key = f"pairwise_reductions(weighted={bool(weighted)}, block={_BLOCK_ELEMENTS}, tile={_TILE_ELEMENTS})"
    return _Pairwise(*stats._cached(key, lambda: _pairwise_pass(stats, bool(weighted))).tolist())


def _pairwise_pass(stats: ClassStats, weighted: bool) -> Tensor:
    """(3,) float64 [cdnv, equiangularity, ETF distance]; see :func:`_pairwise_reductions`."""
    m = centred_means(stats, weighted=weighted)  # (K, D)
    k, dev = m.shape[0], m.device
    var = stats.class_sq / stats.counts if bool((stats.counts >= 2).all()) else None  # (K,) σ_c²
    sq = m.square().sum(1)  # (K,) s_c
    pairs, tiny = k * (k - 1), torch.finfo(torch.float64).tiny
    nan = torch.full((), float("nan"), dtype=torch.float64, device=dev)
    if k * k <= _BLOCK_ELEMENTS:  # dense: the formulas of the separate metrics, unchanged
        gram = m @ m.T  # (K, K)
        eye = torch.arange(k, device=dev)
        cd = nan
        if var is not None:
            dist2 = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0)
            dist2[dist2 == 0] = float("nan")
            term = (var[:, None] + var[None, :]) / (2.0 * dist2)
            term[eye, eye] = 0.0
            cd = term.sum() / pairs
        unit = m / m.norm(dim=1, keepdim=True).clamp_min(tiny)
        cos = (unit @ unit.T + 1.0 / (k - 1)).abs()
        cos[eye, eye] = 0.0
        eq = cos.sum() / pairs
        norm = torch.linalg.matrix_norm(gram)
        etf = torch.linalg.matrix_norm(gram / norm - etf_gram(k, device=dev))
        return torch.stack([cd, eq, etf]).cpu()

    mtm = m.T @ m  # (D, D)
    gnorm = (mtm * mtm).sum().clamp_min(0).sqrt()  # ‖G‖_F = ‖M̄ᵀM̄‖_F
    inv = 1.0 / m.norm(dim=1).clamp_min(tiny)  # (K,) 1/‖m_c‖
    shift = 1.0 / (k - 1)
    diag, off = (1 - 1 / k) / math.sqrt(k - 1), -1 / (k * math.sqrt(k - 1))  # ETF_K entries
    acc_cd, acc_eq, acc_etf = (torch.zeros((), dtype=torch.float64, device=dev) for _ in range(3))
    # row blocks within the budget, at most √_TILE_ELEMENTS tall so that the tiles stay near-square
    height = max(1, min(_BLOCK_ELEMENTS // k, math.isqrt(_TILE_ELEMENTS)))
    width = max(1, min(_TILE_ELEMENTS, _BLOCK_ELEMENTS) // height)
    for r0 in range(0, k, height):
        r1 = min(k, r0 + height)
        rows = slice(r0, r1)
        a = m[rows]  # (b, D)
        tiles = [(c, min(r1, c + width), 1.0) for c in range(r0, r1, width)]  # diagonal block: once
        tiles += [(c, min(k, c + width), 2.0) for c in range(r1, k, width)]  # right of it: twice
        for c0, c1, weight in tiles:
            g = a @ m[c0:c1].T  # (b, w) tile of G
            lo, hi = max(r0, c0), min(r1, c1)
            di = torch.arange(lo, hi, device=dev) if lo < hi else None  # diagonal entries c = c′
            # ETF distance: (G/‖G‖_F − ETF_K)² over every entry, the diagonal included
            e = g.div(gnorm).sub_(off)
            if di is not None:
                e[di - r0, di - c0] -= diag - off
            acc_etf = acc_etf + weight * e.square_().sum()
            # equiangularity: |G_cc′/(‖m_c‖‖m_c′‖) + 1/(K−1)| off the diagonal
            cos = g.mul(inv[rows, None]).mul_(inv[None, c0:c1]).add_(shift).abs_()
            if di is not None:
                cos[di - r0, di - c0] = 0.0
            acc_eq = acc_eq + weight * cos.sum()
            # cdnv: (σ_c² + σ_c′²)/d²_cc′ (the ½ is applied once at the end); d² = 0 gives inf/NaN
            if var is not None:
                dist2 = (sq[rows, None] + sq[None, c0:c1]).sub_(g, alpha=2.0).clamp_min_(0.0)
                term = (var[rows, None] + var[None, c0:c1]).div_(dist2)
                if di is not None:
                    term[di - r0, di - c0] = 0.0
                acc_cd = acc_cd + weight * term.sum()
    cd = 0.5 * acc_cd / pairs if var is not None else nan
    return torch.stack([cd, acc_eq / pairs, acc_etf.clamp_min(0).sqrt()]).cpu()


def cdnv(stats: ClassStats) -> float:
    """Class-distance normalised variance (Galanti et al. 2022).

    mean over c≠c′ of (σ_c² + σ_c′²)/(2‖μ_c − μ_c′‖²), σ_c² = mean_{i∈c} ‖h_i − μ_c‖². Distances come
    from the Gram of the centred means, ‖μ_c − μ_c′‖² = ‖μ̄_c‖² + ‖μ̄_c′‖² − 2 μ̄_c·μ̄_c′, in the pass over
    the K×K pairs shared with ``nc2_equiangular`` and ``nc2_etf`` (exact, no K×K allocation; cached on
    ``stats`` until its next update).

    Raises:
        ValueError: a class has fewer than 2 samples, or two classes have identical means.
    """
    stats = _checked(stats)
    single = (stats.counts < 2).nonzero().flatten()
    if single.numel():
        raise UndefinedMetricError(
            f"cdnv needs at least 2 samples per class to estimate σ_c²; classes "
            f"{stats.label_values[single][:10].tolist()} have fewer"
        )
    value = _pairwise_reductions(stats, weighted=False).cdnv
    if not math.isfinite(value):
        raise UndefinedMetricError("cdnv is undefined: two classes have identical means")
    return value


# -------------------------------------------------------------------- NC2
def _no_zero_rows(rows: Tensor) -> None:
    zero = (rows.norm(dim=1) == 0).nonzero().flatten()
    if zero.numel():
        raise UndefinedMetricError(
            f"angles are undefined: {zero.numel()} of {rows.shape[0]} rows (centred means or classifier rows) are 0, "
            f"e.g. rows {zero[:5].tolist()}"
        )


def _equinorm(rows: Tensor) -> float:
    norms = rows.norm(dim=1)
    if float(norms.mean()) == 0.0:
        raise UndefinedMetricError("equinormness is undefined: every row (centred class mean or classifier row) is 0")
    return float(norms.std(correction=0) / norms.mean())


def _equiangular(rows: Tensor) -> float:
    k = rows.shape[0]
    _no_zero_rows(rows)
    unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return float(_offdiag_mean(unit, unit, lambda g, _: (g + 1.0 / (k - 1)).abs()))


def etf_dist_of_product(a: Tensor, b: Tensor) -> Tensor:
    """ETFdist(A Bᵀ) = ‖G/‖G‖_F − ETF_K‖_F for G = A Bᵀ (K×K), by row blocks (no K×K allocation).

    ‖G‖_F² = ⟨AᵀA, BᵀB⟩_F uses the small D×D Grams; the distance is then summed block by block.
    """
    k = a.shape[0]
    if b.shape[0] != k:
        raise ValueError(f"ETF distance needs K×K products, got {a.shape[0]} and {b.shape[0]} rows")
    if k <= 4096:
        gram = a @ b.T
        norm = torch.linalg.matrix_norm(gram)
        return torch.linalg.matrix_norm(gram / norm - etf_gram(k, device=a.device))
    norm = ((a.T @ a) * (b.T @ b)).sum().clamp_min(0).sqrt()
    diag, off = (1 - 1 / k) / math.sqrt(k - 1), -1 / (k * math.sqrt(k - 1))
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for rows in _row_blocks(k, k):
        block = a[rows] @ b.T / norm - off
        idx = torch.arange(rows.start, rows.stop, device=a.device)
        block[idx - rows.start, idx] -= diag - off
        total = total + block.square().sum()
    return total.sqrt()


def nc2_equinorm(stats: ClassStats, *, weighted: bool = False) -> float:
    """std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖ (population std; Papyan et al. 2020)."""
    return _equinorm(centred_means(stats, weighted=weighted))


def nc2_equinorm_w(weight: Tensor) -> float:
    """std_k ‖w_k‖ / mean_k ‖w_k‖ over the rows of the classifier W (Papyan et al. 2020)."""
    return _equinorm(_check_weight(weight))


def nc2_equiangular(stats: ClassStats, *, weighted: bool = False) -> float:
    """mean over c≠c′ of |cos(μ̄_c, μ̄_c′) + 1/(K−1)| (Papyan et al. 2020).

    From the pass over the K×K pairs shared with ``cdnv`` and ``nc2_etf`` (cached on ``stats``).

    Raises:
        UndefinedMetricError: a centred class mean is 0 (its angle to the others is undefined).
    """
    _no_zero_rows(centred_means(stats, weighted=weighted))
    return _pairwise_reductions(stats, weighted=weighted).equiangular


def nc2_equiangular_w(weight: Tensor) -> float:
    """mean over k≠k′ of |cos(w_k, w_k′) + 1/(K−1)| on the rows of W (Papyan et al. 2020)."""
    return _equiangular(_check_weight(weight))


def nc2_etf(stats: ClassStats, *, weighted: bool = False) -> float:
    """ETFdist(M̄ M̄ᵀ) (Zhu et al. 2021).

    From the pass over the K×K pairs shared with ``cdnv`` and ``nc2_equiangular`` (cached on ``stats``).
    """
    value = _pairwise_reductions(stats, weighted=weighted).etf
    if not math.isfinite(value):
        raise UndefinedMetricError("nc2_etf is undefined: all class means coincide (M̄M̄ᵀ = 0)")
    return value


def nc2_etf_w(weight: Tensor) -> float:
    """ETFdist(W Wᵀ) (Zhu et al. 2021)."""
    w = _check_weight(weight)
    return float(etf_dist_of_product(w, w))


# -------------------------------------------------------------------- NC3
def nc3_duality(stats: ClassStats, weight: Tensor, *, weighted: bool = False) -> float:
    """‖Wᵀ/‖W‖_F − M̄ᵀ/‖M̄‖_F‖_F² (self-duality; Papyan et al. 2020)."""
    m = centred_means(stats, weighted=weighted)
    w = _check_weight(weight, *m.shape).to(m.device)
    if float(torch.linalg.matrix_norm(m)) == 0.0 or float(torch.linalg.matrix_norm(w)) == 0.0:
        raise UndefinedMetricError("nc3_duality is undefined: the centred means or the classifier are 0")
    return float((w / torch.linalg.matrix_norm(w) - m / torch.linalg.matrix_norm(m)).square().sum())


def nc3_etf(stats: ClassStats, weight: Tensor, *, weighted: bool = False) -> float:
    """ETFdist(W M̄ᵀ) (Zhu et al. 2021)."""
    m = centred_means(stats, weighted=weighted)
    w = _check_weight(weight, *m.shape).to(m.device)
    value = float(etf_dist_of_product(w, m))
    if not math.isfinite(value):
        raise UndefinedMetricError("nc3_etf is undefined: W M̄ᵀ = 0")
    return value


# -------------------------------------------------------------------- NC4
def ncc_predict(features: Tensor, means: Tensor) -> Tensor:
    """Nearest-class-mean prediction argmin_c ‖h − μ_c‖ (row indices of ``means``).

    Computed as argmin_c (‖μ_c − m‖² − 2 (h − m)·(μ_c − m)) with m the mean of the means, which
    drops the constant ‖h − m‖² and avoids cancellation when features share a large offset.
    """
    means = means.to(features.device, torch.float64)
    centre = means.mean(0)
    mc = means - centre
    hc = features.to(torch.float64) - centre
    return (mc.square().sum(1)[None, :] - 2.0 * hc @ mc.T).argmin(dim=1)


def nc4_ncc_mismatch(features: Tensor, weight: Tensor, bias: Tensor | None, means: Tensor) -> float:
    """Fraction of samples with argmax(W h + b) ≠ argmin_c ‖h − μ_c‖ (Papyan et al. 2020).

    ``means`` should come from the training data (``ClassStats.means``). For streaming use, sum
    ``mismatch_count`` over batches (as :func:`nclens.core.measure.measure` does with ``nc4=True``).
    """
    count, n = mismatch_count(features, weight, bias, means)
    if n == 0:
        raise ValueError("nc4_ncc_mismatch needs at least one sample")
    return count / n


def mismatch_count(features: Tensor, weight: Tensor, bias: Tensor | None, means: Tensor) -> tuple[int, int]:
    """(number of classifier/NCC disagreements, number of samples) for one batch."""
    from nclens.core.stats import validate_features

    features = validate_features(features)
    w = _check_weight(weight, means.shape[0], features.shape[1]).to(features.device)
    logits = features.to(torch.float64) @ w.T
    if bias is not None:
        bias = torch.as_tensor(bias).to(features.device, torch.float64)
        if bias.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},), got {tuple(bias.shape)}")
        logits = logits + bias
    disagree = logits.argmax(dim=1) != ncc_predict(features, means)
    return int(disagree.sum()), int(features.shape[0])


# ------------------------------------------------------------ spread / rank
def total_covariance(stats: ClassStats) -> Tensor:
    """Σ_T = S_W/N + Σ_c (n_c/N)(μ_c − μ)(μ_c − μ)ᵀ: the features' covariance around the sample mean."""
    stats = _checked(stats, min_classes=1)
    m = centred_means(stats, weighted=True) if stats.n_classes > 1 else stats.means * 0
    weights = (stats.counts / stats.total).sqrt()[:, None]
    between = (weights * m).T @ (weights * m)
    return sigma_w(stats) + between


def effective_rank(stats: ClassStats) -> float:
    """exp(H(p)), p = normalised eigenvalues of the total covariance (Roy & Vetterli 2007)."""
    evals = torch.linalg.eigvalsh(total_covariance(stats)).clamp_min(0.0)
    total = evals.sum()
    if float(total) == 0.0:
        return 0.0
    p = evals / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


# ------------------------------------------------------------- the registry
_PAPYAN, _ZHU = "Papyan, Han & Donoho 2020", "Zhu et al. 2021"
_R = dict(kind="multiclass")
register_metric("nc1", lambda s, w: nc1(s), needs={"scatter"}, family="NC1", source=_PAPYAN,
                definition="Tr(Σ_W Σ_B⁺)/K, Σ_B⁺ on its nonzero eigenspace (rank ≤ K−1)", **_R)
register_metric("nc1_trace", lambda s, w: nc1_trace(s), family="NC1", source="Tirer et al. 2023; Rangamani et al. 2023",
                definition="Tr Σ_W / Tr Σ_B", **_R)
register_metric("within_share", lambda s, w: within_share(s), family="NC1", source="Rangamani et al. 2023",
                definition="Tr Σ_W / (Tr Σ_W + Tr Σ_B)", **_R)
register_metric("cdnv", lambda s, w: cdnv(s), family="NC1", source="Galanti et al. 2022", min_per_class=2,
                definition="mean over c≠c′ of (σ_c² + σ_c′²)/(2‖μ_c − μ_c′‖²), σ_c² = mean ‖h − μ_c‖² in c", **_R)
register_metric("nc2_equinorm", lambda s, w: nc2_equinorm(s), family="NC2", source=_PAPYAN,
                definition="std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖ (population std)", **_R)
register_metric("nc2_equinorm_w", lambda s, w: nc2_equinorm_w(w), needs={"weight"}, family="NC2", source=_PAPYAN,
                definition="std_k ‖w_k‖ / mean_k ‖w_k‖ over the rows of W", **_R)
register_metric("nc2_equiangular", lambda s, w: nc2_equiangular(s), family="NC2", source=_PAPYAN,
                definition="mean over c≠c′ of |cos(μ̄_c, μ̄_c′) + 1/(K−1)|", **_R)
register_metric("nc2_equiangular_w", lambda s, w: nc2_equiangular_w(w), needs={"weight"}, family="NC2",
                source=_PAPYAN, definition="mean over k≠k′ of |cos(w_k, w_k′) + 1/(K−1)|", **_R)
register_metric("nc2_etf", lambda s, w: nc2_etf(s), family="NC2", source=_ZHU, definition="ETFdist(M̄M̄ᵀ)", **_R)
register_metric("nc2_etf_w", lambda s, w: nc2_etf_w(w), needs={"weight"}, family="NC2", source=_ZHU,
                definition="ETFdist(WWᵀ)", **_R)
register_metric("nc3_duality", nc3_duality, needs={"weight"}, family="NC3", source=_PAPYAN,
                definition="‖Wᵀ/‖W‖_F − M̄ᵀ/‖M̄‖_F‖_F²", **_R)
register_metric("nc3_etf", nc3_etf, needs={"weight"}, family="NC3", source=_ZHU, definition="ETFdist(WM̄ᵀ)", **_R)
register_metric("nc4_ncc_mismatch", None, needs={"weight", "samples"}, family="NC4", source=_PAPYAN,
                definition="fraction of samples with argmax(Wh + b) ≠ argmin_c ‖h − μ_c‖ (training means)",
                **_R)
register_metric("ncc_accuracy", None, needs={"samples"}, family="NC4", source="Rangamani et al. 2023",
                definition="fraction of samples with argmin_c ‖h − μ_c‖ = y (means from the training data)", **_R)
register_metric("effective_rank", lambda s, w: effective_rank(s), needs={"full_scatter"}, family="spread",
                source="Roy & Vetterli 2007; used by Harun et al. 2025",
                definition="exp(entropy of the normalised eigenvalues of the total covariance)", **_R)
register_metric("subspace_alignment", None, needs={"layer"}, family="alignment", source="Rangamani et al. 2023",
                definition="mean singular value of V_Wᵀ U_M: top-K right singular vectors of the layer's W vs "
                "top-K left singular vectors of its uncentred input class means (1 = aligned)", **_R)
register_metric("assoc_memory_alignment", None, needs={"layer"}, family="alignment",
                source="Rangamani et al. 2023 (discussion)",
                definition="Frobenius cosine of W_l and Σ_c μ_c^out μ_c^inᵀ (the layer's input/output class means)",
                **_R)


def scatter_available(stats: ClassStats) -> set[str]:
    """What ``stats`` offers among the registry's needs: ``{"scatter", "full_scatter"}``, a subset, or none."""
    mode = getattr(stats, "scatter", "full")
    if mode == "full":
        return {"scatter", "full_scatter"}
    if mode == "projected" and getattr(stats, "projection_phase", None) == "done":
        return {"scatter"}
    return set()
