"""Neural-collapse metrics: pure functions of statistics (and weights) — never of raw samples.

:func:`compute_metrics` evaluates every applicable metric of DESIGN.md's table at once.

Example:
    >>> import torch
    >>> from nclens.core.stats import ClassStats
    >>> from nclens.core.metrics import compute_metrics
    >>> g = torch.Generator().manual_seed(0)
    >>> s = ClassStats(num_classes=3).update(torch.randn(90, 4, generator=g), torch.arange(90) % 3)
    >>> sorted(compute_metrics(s))[:3]
    ['cdnv', 'effective_rank', 'nc1']
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor

from nclens.core.metrics.multiclass import (
    STATS_METRICS,
    WEIGHT_METRICS,
    cdnv,
    centred_means,
    effective_rank,
    etf_dist_of_product,
    mismatch_count,
    nc1,
    nc1_trace,
    nc2_equiangular,
    nc2_equiangular_w,
    nc2_equinorm,
    nc2_equinorm_w,
    nc2_etf,
    nc2_etf_w,
    nc3_duality,
    nc3_etf,
    nc4_ncc_mismatch,
    ncc_predict,
    sigma_b,
    sigma_w,
    total_covariance,
    within_share,
)
from nclens.core.stats import ClassStats

__all__ = [
    "compute_metrics",
    "MULTICLASS_METRIC_NAMES",
    "cdnv",
    "centred_means",
    "effective_rank",
    "etf_dist_of_product",
    "mismatch_count",
    "nc1",
    "nc1_trace",
    "nc2_equiangular",
    "nc2_equiangular_w",
    "nc2_equinorm",
    "nc2_equinorm_w",
    "nc2_etf",
    "nc2_etf_w",
    "nc3_duality",
    "nc3_etf",
    "nc4_ncc_mismatch",
    "ncc_predict",
    "sigma_b",
    "sigma_w",
    "total_covariance",
    "within_share",
]

#: The multi-class metric names of DESIGN.md, in table order.
MULTICLASS_METRIC_NAMES: tuple[str, ...] = (
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
    "nc4_ncc_mismatch",
)

_NEEDS_FULL_SCATTER = {"nc1", "effective_rank"}


def compute_metrics(
    stats: ClassStats,
    weight: Tensor | None = None,
    *,
    names: Iterable[str] | None = None,
    effective_rank_too: bool = True,
) -> dict[str, float]:
    """Every applicable multi-class metric of ``stats`` (and of ``weight`` when given).

    Args:
        stats: per-class statistics of one layer.
        weight: optional classifier W (K×D), row k for the k-th class in ascending label order.
        names: restrict to these metric names (an unknown name is an error listing the valid ones).
        effective_rank_too: add ``effective_rank`` (needs the full scatter).

    Returns:
        ``{name: value}``; metrics needing the D×D scatter are left out for ``scatter='trace'``
        statistics, and metrics needing ``weight`` are left out without it. nc4 needs samples and is
        computed by :func:`nclens.core.measure.measure` or the CLI, not here.
    """
    valid = set(STATS_METRICS) | set(WEIGHT_METRICS) | {"effective_rank"}
    wanted = list(names) if names is not None else None
    if wanted is not None:
        unknown = [n for n in wanted if n not in valid]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; valid names: {sorted(valid)}")
    trace_only = stats.scatter_w is None

    def keep(name: str) -> bool:
        if wanted is not None and name not in wanted:
            return False
        return not (trace_only and name in _NEEDS_FULL_SCATTER)

    out: dict[str, float] = {}
    for name, fn in STATS_METRICS.items():
        if keep(name):
            out[name] = fn(stats)
    if weight is not None:
        for name, fn in WEIGHT_METRICS.items():
            if keep(name):
                out[name] = fn(stats, weight)
    if effective_rank_too and keep("effective_rank"):
        out["effective_rank"] = effective_rank(stats)
    return out
