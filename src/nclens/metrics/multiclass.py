"""Multi-class neural-collapse metrics: pure functions from :class:`~nclens.stats.ClassStats` (and
classifier weights) to numbers. Definitions are DESIGN.md's canonical table.

Notation: μ_c class means, μ_G the mean of the class means (or the sample-weighted mean with
``weighted=True``), M̄ = [μ_c − μ_G] (K×D), Σ_W = S_W/N, Σ_B = M̄ᵀM̄/K, W (K×D) the classifier with
row k belonging to the k-th class in ascending label order.

No function allocates a K×K matrix: pairwise quantities (cdnv, equiangularity, ETF distances) are
exact reductions over row blocks, so K = 50,000 classes fit in memory; nc1 works in the rank-(K−1)
subspace of the means and never inverts a D×D matrix. ``cdnv``, ``nc2_equiangular`` and ``nc2_etf``
share ONE float64 pass over the Gram M̄M̄ᵀ (``_pairwise_reductions``), cached on the statistics until
their next update, so computing all three (or :func:`~nclens.metrics.compute_metrics`) costs one
O(K²·D/2) pass instead of three O(K²·D) ones.

Example:
    >>> import torch
    >>> from nclens.geometry import simplex_etf
    >>> from nclens.stats import ClassStats
    >>> from nclens.metrics import nc1, nc2_etf
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

from nclens.geometry import etf_gram
from nclens.stats import ClassStats

__all__ = [
    "centred_means",
    "sigma_w",
    "sigma_b",
    "nc1",
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
    "STATS_METRICS",
    "WEIGHT_METRICS",
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
        raise ValueError(f"neural-collapse metrics need at least {min_classes} classes, got K={stats.n_classes}")
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
        raise ValueError("Σ_W needs the full scatter; these statistics were kept with scatter='trace'")
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
    D×D Gram M̄ᵀM̄ (DESIGN.md: never form K×K).
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
        raise ValueError("all class means coincide: Σ_B = 0, NC metrics are undefined")
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
    sw = sigma_w(stats)
    v, s = _means_svd(centred_means(stats, weighted=weighted))
    proj = ((sw @ v) * v).sum(0)  # (r,) v_jᵀ Σ_W v_j
    return float((proj / s.square()).sum())


def nc1_trace(stats: ClassStats, *, weighted: bool = False) -> float:
    """Tr Σ_W / Tr Σ_B (Tirer et al. 2023; Rangamani et al. 2023)."""
    stats = _checked(stats)
    tb = _trace_b(centred_means(stats, weighted=weighted))
    if float(tb) == 0.0:
        raise ValueError("all class means coincide: Tr Σ_B = 0")
    return float(_trace_w(stats) / tb)


def within_share(stats: ClassStats, *, weighted: bool = False) -> float:
    """Tr Σ_W / (Tr Σ_W + Tr Σ_B) (Rangamani et al. 2023): 0 = fully collapsed, 1 = no class signal."""
    stats = _checked(stats)
    tw, tb = _trace_w(stats), _trace_b(centred_means(stats, weighted=weighted))
    return float(tw / (tw + tb))


def cdnv(stats: ClassStats) -> float:
    """Class-distance normalised variance (Galanti et al. 2022).

    mean over c≠c′ of (σ_c² + σ_c′²)/(2‖μ_c − μ_c′‖²), σ_c² = mean_{i∈c} ‖h_i − μ_c‖². Distances come
    from the centred means by row blocks (exact, no K×K allocation).
    """
    stats = _checked(stats)
    single = (stats.counts < 2).nonzero().flatten()
    if single.numel():
        raise ValueError(
            f"cdnv needs at least 2 samples per class to estimate σ_c²; classes "
            f"{stats.label_values[single][:10].tolist()} have fewer"
        )
    var = stats.class_sq / stats.counts  # (K,)
    m = centred_means(stats)
    sq = m.square().sum(1)

    def term(gram: Tensor, rows: slice) -> Tensor:
        dist2 = (sq[rows, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0)
        dist2[dist2 == 0] = float("nan")
        return (var[rows, None] + var[None, :]) / (2.0 * dist2)

    value = _offdiag_mean(m, m, term)
    if not math.isfinite(float(value)):
        raise ValueError("cdnv is undefined: two classes have identical means")
    return float(value)


# -------------------------------------------------------------------- NC2
def _equinorm(rows: Tensor) -> float:
    norms = rows.norm(dim=1)
    return float(norms.std(correction=0) / norms.mean())


def _equiangular(rows: Tensor) -> float:
    k = rows.shape[0]
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
    """mean over c≠c′ of |cos(μ̄_c, μ̄_c′) + 1/(K−1)| (Papyan et al. 2020)."""
    return _equiangular(centred_means(stats, weighted=weighted))


def nc2_equiangular_w(weight: Tensor) -> float:
    """mean over k≠k′ of |cos(w_k, w_k′) + 1/(K−1)| on the rows of W (Papyan et al. 2020)."""
    return _equiangular(_check_weight(weight))


def nc2_etf(stats: ClassStats, *, weighted: bool = False) -> float:
    """ETFdist(M̄ M̄ᵀ) (Zhu et al. 2021)."""
    m = centred_means(stats, weighted=weighted)
    return float(etf_dist_of_product(m, m))


def nc2_etf_w(weight: Tensor) -> float:
    """ETFdist(W Wᵀ) (Zhu et al. 2021)."""
    w = _check_weight(weight)
    return float(etf_dist_of_product(w, w))


# -------------------------------------------------------------------- NC3
def nc3_duality(stats: ClassStats, weight: Tensor, *, weighted: bool = False) -> float:
    """‖Wᵀ/‖W‖_F − M̄ᵀ/‖M̄‖_F‖_F² (self-duality; Papyan et al. 2020)."""
    m = centred_means(stats, weighted=weighted)
    w = _check_weight(weight, *m.shape).to(m.device)
    return float((w / torch.linalg.matrix_norm(w) - m / torch.linalg.matrix_norm(m)).square().sum())


def nc3_etf(stats: ClassStats, weight: Tensor, *, weighted: bool = False) -> float:
    """ETFdist(W M̄ᵀ) (Zhu et al. 2021)."""
    m = centred_means(stats, weighted=weighted)
    w = _check_weight(weight, *m.shape).to(m.device)
    return float(etf_dist_of_product(w, m))


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
    ``mismatch_count`` over batches (see :class:`nclens.measure.NCCMismatch`).
    """
    count, n = mismatch_count(features, weight, bias, means)
    if n == 0:
        raise ValueError("nc4_ncc_mismatch needs at least one sample")
    return count / n


def mismatch_count(features: Tensor, weight: Tensor, bias: Tensor | None, means: Tensor) -> tuple[int, int]:
    """(number of classifier/NCC disagreements, number of samples) for one batch."""
    from nclens.stats import validate_features

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


#: Metrics computed from statistics alone, by name.
STATS_METRICS: dict[str, Callable[[ClassStats], float]] = {
    "nc1": nc1,
    "nc1_trace": nc1_trace,
    "within_share": within_share,
    "cdnv": cdnv,
    "nc2_equinorm": nc2_equinorm,
    "nc2_equiangular": nc2_equiangular,
    "nc2_etf": nc2_etf,
}

#: Metrics that also need the classifier weight W (K×D).
WEIGHT_METRICS: dict[str, Callable[[ClassStats, Tensor], float]] = {
    "nc2_equinorm_w": lambda s, w: nc2_equinorm_w(w),
    "nc2_equiangular_w": lambda s, w: nc2_equiangular_w(w),
    "nc2_etf_w": lambda s, w: nc2_etf_w(w),
    "nc3_duality": nc3_duality,
    "nc3_etf": nc3_etf,
}
