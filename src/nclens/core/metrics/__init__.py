"""Neural-collapse metrics: pure functions of statistics (and weights) — never of raw samples.

:func:`compute_metrics` evaluates every applicable metric of the registry at once.

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

from nclens.core.metrics import registry
from nclens.core.metrics.multiclass import (
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
    scatter_available,
    sigma_b,
    sigma_w,
    total_covariance,
    within_share,
)
from nclens.core.metrics.registry import get_metric, metric_names, metric_specs, register_metric
from nclens.core.stats import ClassStats

__all__ = [
    "compute_metrics",
    "MULTICLASS_METRIC_NAMES",
    "registry",
    "register_metric",
    "get_metric",
    "metric_names",
    "metric_specs",
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

#: The multi-class metric names of the registry, in table order (kept for 0.1 callers).
MULTICLASS_METRIC_NAMES: tuple[str, ...] = metric_names("multiclass")


def compute_metrics(
    stats: ClassStats,
    weight: Tensor | None = None,
    *,
    names: Iterable[str] | None = None,
    on_undefined: str = "nan",
    bias: Tensor | None = None,
) -> dict[str, float]:
    """Every applicable multi-class metric of the registry for ``stats`` (and ``weight``/``bias`` when given).

    Args:
        stats: per-class statistics of one layer.
        weight: optional classifier W (K×D), row k for the k-th class in ascending label order.
        names: restrict to these metric names (an unknown name, or one whose needs are not met, is an
            error that says why).
        on_undefined: ``"nan"`` — an undefined metric (coinciding means, a class with fewer samples
            than the metric needs) is NaN and one :class:`~nclens.core.errors.UndefinedMetricWarning`
            names it and why; ``"raise"`` — the :class:`~nclens.core.errors.UndefinedMetricError`
            propagates.
        bias: optional classifier bias b (K,) (with ``weight``), for the metrics that need it
            (``nc4_bias``).

    Returns:
        ``{name: value}`` in registry order. Metrics needing the D×D scatter are left out for
        ``scatter="trace"`` statistics, metrics needing ``weight`` without it; metrics needing a pass
        over samples (nc4, NCC accuracy) come from :func:`nclens.core.measure.measure`.
    """
    if not isinstance(stats, ClassStats):
        raise TypeError(f"compute_metrics expects ClassStats, got {type(stats).__name__}")
    have = scatter_available(stats) | ({"weight"} if weight is not None else set())
    if weight is not None and bias is not None:
        have.add("bias")
    return registry.evaluate(stats, weight, kind="multiclass", have=have, names=names, on_undefined=on_undefined,
                             bias=bias)


# the multi-label metrics and the official variants of Rangamani et al. 2023 (within_share_classavg,
# nc1_official, ...) register themselves on import; load them so the registry is complete
from nclens.core.metrics import multilabel as _multilabel  # noqa: E402,F401
from nclens.core.metrics import official as _official  # noqa: E402,F401
from nclens.core.metrics import official_nc4 as _official_nc4  # noqa: E402,F401  (Harun et al.'s NC4)
from nclens.core.metrics import orthogonal as _orthogonal  # noqa: E402,F401  (OF variants, default=False)
