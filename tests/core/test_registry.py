"""The metric registry and the one policy for undefined metrics."""

import math
import warnings

import pytest
import torch

from nclens.core.errors import UndefinedMetricError, UndefinedMetricWarning
from nclens.core.geometry import simplex_etf
from nclens.core.metrics import compute_metrics, nc1
from nclens.core.metrics.registry import get_metric, metric_names, metric_specs, metric_table, register_metric
from nclens.core.stats import ClassStats


def _stats(n_per=20, k=4, d=6, scatter="full"):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n_per * k) % k
    x = simplex_etf(k, d, radius=2.0)[y] + 0.3 * torch.randn(n_per * k, d, generator=g, dtype=torch.float64)
    return ClassStats(scatter=scatter).update(x, y), x, y


def test_registry_entries_are_complete_and_unique():
    for kind in ("multiclass", "multilabel"):
        specs = metric_specs(kind)
        assert len({s.name for s in specs}) == len(specs)
        for s in specs:
            assert s.definition and s.source and s.family, s.name
    assert {r["kind"] for r in metric_table()} == {"multiclass", "multilabel"}
    with pytest.raises(ValueError, match="already registered"):
        register_metric("nc1", lambda s, w: 0.0)
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        get_metric("nope")


def test_compute_metrics_follows_registry_order_and_needs():
    stats, _, _ = _stats()
    w = simplex_etf(4, 6)
    got = compute_metrics(stats, w)
    order = [n for n in metric_names() if n in got]
    assert list(got) == order
    assert "nc3_duality" in got and "nc4_ncc_mismatch" not in got  # samples metrics come from measure()
    assert "nc3_duality" not in compute_metrics(stats)  # needs weight: left out, not NaN
    trace, _, _ = _stats(scatter="trace")
    got_t = compute_metrics(trace)
    assert "nc1" not in got_t and "effective_rank" not in got_t and "nc1_trace" in got_t
    with pytest.raises(ValueError, match="needs scatter"):
        compute_metrics(trace, names=["nc1"])
    with pytest.raises(ValueError, match="pass weight=W"):
        compute_metrics(stats, names=["nc3_etf"])


def test_undefined_policy_nan_warns_once_and_raise_propagates():
    # identical class means: every between-class quantity is undefined, the within-class one is not
    a = torch.randn(20, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, y = torch.cat([a, a]), torch.cat([torch.zeros(20), torch.ones(20)]).long()  # both classes: the same rows
    stats = ClassStats().update(x, y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = compute_metrics(stats)
    undefined = [w for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    assert len(undefined) == 1 and "nc1" in str(undefined[0].message)
    assert math.isnan(got["nc1"]) and math.isnan(got["nc2_equiangular"]) and math.isnan(got["nc2_equinorm"])
    assert math.isfinite(got["effective_rank"])
    with pytest.raises(UndefinedMetricError, match="class means coincide"):
        compute_metrics(stats, on_undefined="raise")
    with pytest.raises(UndefinedMetricError):
        nc1(stats)  # the metric functions themselves always raise
    with pytest.raises(ValueError, match="on_undefined must be one of"):
        compute_metrics(stats, on_undefined="ignore")


def test_single_sample_class_only_cdnv_undefined():
    stats, x, y = _stats()
    x2 = torch.cat([x, x[:1] + 5.0])
    y2 = torch.cat([y, torch.tensor([7])])
    s = ClassStats().update(x2, y2)
    with pytest.warns(UndefinedMetricWarning, match="cdnv"):
        got = compute_metrics(s)
    assert math.isnan(got["cdnv"])
    assert all(math.isfinite(v) for k, v in got.items() if k != "cdnv")
