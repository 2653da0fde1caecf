"""Metrics other NC tools report, registered like the rest: GNC2, UNC3, NC5 and per-pair CDNV.

Definitions follow the official code of Wu & Papyan's ``neural-collapse`` library (the measurement
code of "Linguistic Collapse", Wu & Papyan, NeurIPS 2024), repository ``rhubarbwu/neural-collapse``,
files ``neural_collapse/kernels.py`` (``log_kernel``, ``riesz_kernel``, ``kernel_stats``,
``class_dist_norm_vars``) and ``neural_collapse/measure.py`` (``similarities``,
``orthogonality_deviation``), commit c05a0b8. Notation as in the README's metric section; μ̂_c = (μ_c − μ_G)/‖μ_c − μ_G‖
(the centred class means on the unit sphere), d_cc′ = ‖μ̂_c − μ̂_c′‖, pairs are the K(K−1)/2 pairs c < c′.

* **GNC2, hyperspherical uniformity** (Liu et al., ICLR 2023, "Generalizing and decoupling neural
  collapse via hyperspherical uniformity gap"): the kernels log(1/d) (``log``) and
  sign(s)·d^(−s) with s = D − 2 (``riesz``) over the pairs. ``gnc2_log`` / ``gnc2_riesz`` are the
  *variance* over pairs (population variance, what ``kernel_stats(...)[1]`` returns and the
  Linguistic-Collapse paper reports: 0 when the means are equidistant, as a simplex ETF);
  ``gnc2_log_energy`` / ``gnc2_riesz_energy`` the *mean* over pairs (Liu et al.'s hyperspherical
  energy per pair: lower = more uniform).
* **UNC3, uniform duality** (Wu & Papyan 2024): the variance over classes of w_c·(μ_c − μ_G)
  (``unc3_uniform_duality``; sample variance, divisor K − 1, as the official ``similarities(...).var()``)
  and of cos(w_c, μ_c − μ_G) (``unc3_uniform_duality_cos``): 0 when every class is equally dual.
* **NC5, ID/OOD orthogonality** (Ammar et al., ICLR 2024, "NECO"): mean_c |cos(μ_c, μ_G^OOD)| with
  the *uncentred* in-distribution class means μ_c and the mean μ_G^OOD of out-of-distribution
  features, as the official ``orthogonality_deviation(means, mG_ood)``; 0 = orthogonal. It needs OOD
  features: :func:`nclens.core.measure.measure` computes it with ``ood=loader``.
* **Per-pair CDNV** (Galanti et al. 2022): :func:`cdnv_pairs` with ``reduction="none"`` gives the K×K
  matrix (σ_c² + σ_c′²)/(2‖μ_c − μ_c′‖²) (diagonal NaN), ``"mean"`` equals ``cdnv``; ``cdnv_max``
  (registered) is the least separable pair.

Everything is float64 and walks the pairs in row blocks (no K×K allocation except ``reduction="none"``).

Example:
    >>> import torch
    >>> from nclens.core.geometry import simplex_etf
    >>> from nclens.core.stats import ClassStats
    >>> from nclens.core.metrics.extra import hyperspherical_uniformity
    >>> means = simplex_etf(4, 6, radius=2.0)
    >>> s = ClassStats(num_classes=4).update(means.repeat(3, 1), torch.arange(4).repeat(3))
    >>> abs(hyperspherical_uniformity(s, "log", reduction="var")) < 1e-12   # equidistant: no variance
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nclens.core.errors import UndefinedMetricError
from nclens.core.metrics.multiclass import _check_weight, _checked, centred_means
from nclens.core.metrics.registry import register_metric
from nclens.core.stats import ClassStats

__all__ = [
    "hyperspherical_uniformity",
    "uniform_duality",
    "nc5_ood_orthogonality",
    "cdnv_pairs",
    "KERNELS",
]

KERNELS = ("log", "riesz")
_BLOCK_ELEMENTS = 2**22


def _unit_means(stats: ClassStats, weighted: bool = False) -> Tensor:
    m = centred_means(stats, weighted=weighted)
    norms = m.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise UndefinedMetricError("a centred class mean is 0: its direction on the sphere is undefined")
    return m / norms


def _merge(acc: tuple[float, float, float], n: int, mean: float, m2: float) -> tuple[float, float, float]:
    """Chan et al.'s merge of (count, mean, sum of squared deviations)."""
    na, ma, sa = acc
    if n == 0:
        return acc
    total = na + n
    delta = mean - ma
    return total, ma + delta * n / total, sa + m2 + delta * delta * na * n / total


def hyperspherical_uniformity(
    stats: ClassStats,
    kernel: str = "log",
    *,
    reduction: str = "var",
    s: float | None = None,
    weighted: bool = False,
) -> float:
    """GNC2: the log or Riesz kernel of distances between normalised centred means, over pairs c < c′.

    log kernel: log(1/d_cc′); Riesz kernel: sign(s)·d_cc′^(−s), s = D − 2 by default (official code).
    ``reduction="var"`` (population variance over pairs; the Linguistic-Collapse GNC2) or ``"mean"``
    (the hyperspherical energy per pair, Liu et al. 2023).

    Raises:
        UndefinedMetricError: two normalised means coincide (d = 0) or a centred mean is 0.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if reduction not in ("var", "mean"):
        raise ValueError(f"reduction must be 'var' or 'mean', got {reduction!r}")
    stats = _checked(stats)
    u = _unit_means(stats, weighted)  # (K, D)
    k, d = u.shape
    power = float(d - 2 if s is None else s)
    acc = (0, 0.0, 0.0)
    step = max(1, _BLOCK_ELEMENTS // k)
    for r0 in range(0, k - 1, step):
        r1 = min(k - 1, r0 + step)
        g = u[r0:r1] @ u.T  # (b, K) cosines
        dist = (2.0 - 2.0 * g).clamp_min(0.0).sqrt()
        cols = torch.arange(k, device=u.device)[None, :]
        rows = torch.arange(r0, r1, device=u.device)[:, None]
        values = dist[cols > rows]  # pairs c < c′
        if bool((values == 0).any()):
            raise UndefinedMetricError(f"gnc2 ({kernel}) is undefined: two normalised centred class means coincide")
        kv = -values.log() if kernel == "log" else math.copysign(1.0, power) * values.pow(-power)
        if not bool(torch.isfinite(kv).all()):
            raise UndefinedMetricError(f"gnc2 ({kernel}, s={power:g}) overflows for these means")
        mean = float(kv.mean())
        acc = _merge(acc, kv.numel(), mean, float((kv - mean).square().sum()))
    n, mean, m2 = acc
    return mean if reduction == "mean" else m2 / n


def uniform_duality(stats: ClassStats, weight: Tensor, *, cos: bool = False, weighted: bool = False) -> float:
    """UNC3: sample variance (divisor K − 1) over classes of w_c·(μ_c − μ_G), or of their cosine with ``cos``."""
    m = centred_means(stats, weighted=weighted)
    w = _check_weight(weight, *m.shape).to(m.device)
    sims = (w * m).sum(dim=1)  # (K,)
    if cos:
        norms = w.norm(dim=1) * m.norm(dim=1)
        if bool((norms == 0).any()):
            raise UndefinedMetricError("unc3 (cos) is undefined: a classifier row or a centred mean is 0")
        sims = sims / norms
    return float(sims.var(correction=1))


def nc5_ood_orthogonality(stats: ClassStats, ood_mean: Tensor, *, centred: bool = False) -> float:
    """NC5: mean_c |cos(μ_c, μ_G^OOD)| (Ammar et al. 2024; official ``orthogonality_deviation``).

    ``centred=True`` subtracts the in-distribution μ_G (mean of class means) from both first (a variant).
    """
    stats = _checked(stats)
    means = stats.means
    ood = torch.as_tensor(ood_mean, dtype=torch.float64, device=means.device).reshape(-1)
    if ood.shape[0] != means.shape[1]:
        raise ValueError(f"the OOD mean has dimension {ood.shape[0]} but the features have D={means.shape[1]}")
    if centred:
        mu_g = means.mean(0)
        means, ood = means - mu_g, ood - mu_g
    norms = means.norm(dim=1) * ood.norm()
    if bool((norms == 0).any()):
        raise UndefinedMetricError("nc5 is undefined: a class mean or the OOD mean is 0")
    return float(((means @ ood) / norms).abs().mean())


def cdnv_pairs(stats: ClassStats, reduction: str = "none") -> Tensor | float:
    """Per-pair CDNV (σ_c² + σ_c′²)/(2‖μ_c − μ_c′‖²) (Galanti et al. 2022).

    ``reduction``: ``"none"`` → the (K, K) float64 matrix (diagonal NaN; allocates K×K), ``"mean"``
    (over c ≠ c′; equals :func:`~nclens.core.metrics.cdnv`), ``"max"`` (the least separable pair) or ``"min"``.

    Raises:
        UndefinedMetricError: a class has < 2 samples, or two class means coincide.
    """
    if reduction not in ("none", "mean", "max", "min"):
        raise ValueError(f"reduction must be 'none', 'mean', 'max' or 'min', got {reduction!r}")
    stats = _checked(stats)
    if bool((stats.counts < 2).any()):
        bad = stats.label_values[(stats.counts < 2)][:10].tolist()
        raise UndefinedMetricError(f"per-pair cdnv needs at least 2 samples per class; classes {bad} have fewer")
    m = centred_means(stats)
    var = stats.class_sq / stats.counts  # (K,)
    sq = m.square().sum(1)
    k = m.shape[0]
    full = torch.empty(k, k, dtype=torch.float64, device=m.device) if reduction == "none" else None
    total, best = 0.0, (-math.inf if reduction == "max" else math.inf)
    step = max(1, _BLOCK_ELEMENTS // k)
    for r0 in range(0, k, step):
        r1 = min(k, r0 + step)
        dist2 = (sq[r0:r1, None] + sq[None, :] - 2.0 * (m[r0:r1] @ m.T)).clamp_min(0.0)
        idx = torch.arange(r0, r1, device=m.device)
        off = torch.ones_like(dist2, dtype=torch.bool)
        off[idx - r0, idx] = False
        if bool((dist2[off] == 0).any()):
            raise UndefinedMetricError("per-pair cdnv is undefined: two classes have identical means")
        term = (var[r0:r1, None] + var[None, :]) / (2.0 * dist2)
        term[~off] = float("nan")
        if full is not None:
            full[r0:r1] = term
        vals = term[off]
        total += float(vals.sum())
        if vals.numel():
            best = max(best, float(vals.max())) if reduction == "max" else min(best, float(vals.min()))
    if reduction == "none":
        return full
    if reduction == "mean":
        return total / (k * (k - 1))
    return best


# ------------------------------------------------------------------ registry
_WU = "Wu & Papyan 2024 (official: rhubarbwu/neural-collapse, neural_collapse/kernels.py)"
_R = dict(kind="multiclass", default=False)
register_metric("gnc2_log", lambda s, w: hyperspherical_uniformity(s, "log"), family="NC2",
                source=f"Liu et al. 2023; {_WU}",
                definition="variance over pairs c<c′ of log(1/‖μ̂_c − μ̂_c′‖), μ̂_c = (μ_c − μ_G)/‖μ_c − μ_G‖", **_R)
register_metric("gnc2_log_energy", lambda s, w: hyperspherical_uniformity(s, "log", reduction="mean"), family="NC2",
                source=f"Liu et al. 2023; {_WU}", definition="mean over pairs c<c′ of log(1/‖μ̂_c − μ̂_c′‖)", **_R)
register_metric("gnc2_riesz", lambda s, w: hyperspherical_uniformity(s, "riesz"), family="NC2",
                source=f"Liu et al. 2023; {_WU}",
                definition="variance over pairs c<c′ of sign(s)‖μ̂_c − μ̂_c′‖^(−s), s = D − 2", **_R)
register_metric("gnc2_riesz_energy", lambda s, w: hyperspherical_uniformity(s, "riesz", reduction="mean"),
                family="NC2", source=f"Liu et al. 2023; {_WU}",
                definition="mean over pairs c<c′ of sign(s)‖μ̂_c − μ̂_c′‖^(−s), s = D − 2", **_R)
register_metric("unc3_uniform_duality", lambda s, w: uniform_duality(s, w), needs={"weight"}, family="NC3",
                source="Wu & Papyan 2024 (official: neural_collapse/measure.py similarities)",
                definition="sample variance over c of w_c·(μ_c − μ_G)", **_R)
register_metric("unc3_uniform_duality_cos", lambda s, w: uniform_duality(s, w, cos=True), needs={"weight"},
                family="NC3", source="Wu & Papyan 2024 (official: neural_collapse/measure.py similarities)",
                definition="sample variance over c of cos(w_c, μ_c − μ_G)", **_R)
register_metric("nc5_ood_orthogonality", None, needs={"samples"}, family="NC5",
                source="Ammar et al. 2024 (official: neural_collapse/measure.py orthogonality_deviation)",
                definition="mean_c |cos(μ_c, μ_G^OOD)|, uncentred class means vs the mean of OOD features", **_R)
register_metric("cdnv_max", lambda s, w: cdnv_pairs(s, "max"), family="NC1", min_per_class=2,
                source="Galanti et al. 2022 (per pair)",
                definition="max over c≠c′ of (σ_c² + σ_c′²)/(2‖μ_c − μ_c′‖²): the least separable pair", **_R)
