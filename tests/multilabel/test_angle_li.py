"""tagwise_angle_li: Li et al.'s official angle metric (utility.py angle_metric of Heimine/NC_MLab), re-derived."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nclens.core.metrics.multilabel import (
    compute_multilabel_metrics,
    multilabel_metrics,
    tagwise_angle_li,
    tagwise_angle_li_deg,
    tagwise_angle_ratio,
)
from nclens.core.metrics.registry import get_metric
from nclens.core.multilabel import MultiLabelStats
from nclens.multilabel.ufm import UFMConfig, solve_ufm


def official_angle_metric(features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``angle_metric`` and ``np.mean(cur_angle_list)`` of the official utility.py, transcribed (float64 NumPy).

    m1_feature_dict[k]: features of the samples whose label set is exactly {k}; m2_feature_dict: per pair set.
    """
    k = labels.shape[1]
    m1 = {t: [] for t in range(k)}
    m2: dict[tuple[int, int], list[np.ndarray]] = {}
    for h, y in zip(features, labels):
        tags = tuple(int(t) for t in np.flatnonzero(y))
        if len(tags) == 1:
            m1[tags[0]].append(h)
        elif len(tags) == 2:
            m2.setdefault(tags, []).append(h)
    numerator, denominator = [], []
    m1_means = [np.mean(np.stack(m1[t]), axis=0) for t in range(k)]
    m2_means = []
    for (i, j), feats in m2.items():
        s = m1_means[i] + m1_means[j]
        s = s / np.linalg.norm(s)
        mm = np.mean(np.stack(feats), axis=0)
        mm = mm / np.linalg.norm(mm)
        m2_means.append(mm)
        numerator.append(np.degrees(np.arccos(np.sum(s * mm))))
    for i in range(k):
        for j in range(i + 1, k):
            for mm in m2_means:
                s = m1_means[i] + m1_means[j]
                s = s / np.linalg.norm(s)
                denominator.append(np.degrees(np.arccos(np.sum(s * mm))))
    return float(np.mean(numerator) / np.mean(denominator)), float(np.mean(numerator))


def _labels(k: int, singles: int, pairs: list[tuple[int, int]], per_pair: int) -> np.ndarray:
    rows = [np.eye(k)[t] for t in range(k) for _ in range(singles)]
    rows += [np.eye(k)[i] + np.eye(k)[j] for i, j in pairs for _ in range(per_pair)]
    return np.stack(rows)


def test_equals_the_official_formula_on_a_hand_made_case():
    rng = np.random.default_rng(0)
    k, d = 5, 7
    pairs = [(0, 1), (0, 3), (1, 2), (2, 4), (3, 4)]  # not every pair is observed
    y = _labels(k, 3, pairs, 2)
    x = rng.normal(size=(y.shape[0], d)) + 2.0  # uncentred: an offset the metric must not remove
    stats = MultiLabelStats(k).update(torch.from_numpy(x), torch.from_numpy(y))
    ratio, deg = official_angle_metric(x, y)
    assert tagwise_angle_li(stats) == pytest.approx(ratio, rel=1e-12)
    assert tagwise_angle_li_deg(stats) == pytest.approx(deg, rel=1e-12)
    # batching does not matter (one pass, merged statistics)
    merged = MultiLabelStats(k).update(torch.from_numpy(x[:17]), torch.from_numpy(y[:17]))
    merged.merge(MultiLabelStats(k).update(torch.from_numpy(x[17:]), torch.from_numpy(y[17:])))
    assert tagwise_angle_li(merged) == pytest.approx(ratio, rel=1e-12)
    # nclens's centred variant is a different number on the same features
    assert abs(tagwise_angle_ratio(stats) - ratio) > 1e-3


def test_zero_at_the_pal_ufm_optimum_and_near_one_without_structure():
    sol = solve_ufm(UFMConfig(loss="pal", num_classes=4, dim=4, per_set=(3, 1)), progress=False)
    assert sol.grad_norm < 1e-10
    assert sol.metrics["tagwise_angle_li"] < 1e-7 and sol.metrics["tagwise_angle_li_deg"] < 1e-5
    # unstructured pair means: independent random directions, no relation to their tags
    rng = np.random.default_rng(1)
    k, d = 10, 64
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    y = _labels(k, 4, pairs, 1)
    x = rng.normal(size=(y.shape[0], d))
    value = compute_multilabel_metrics(torch.from_numpy(x), torch.from_numpy(y))["tagwise_angle_li"]
    assert value == pytest.approx(official_angle_metric(x, y)[0], rel=1e-12)
    assert 0.9 < value < 1.1


def test_registered_documented_and_in_measure_json(tmp_path):
    for name in ("tagwise_angle_li", "tagwise_angle_li_deg"):
        spec = get_metric(name, "multilabel")
        assert "utility.py" in spec.source and "angle_metric" in spec.source and spec.definition
    rng = np.random.default_rng(2)
    y = _labels(4, 5, [(0, 1), (2, 3), (1, 3)], 3)
    x = rng.normal(size=(y.shape[0], 6)).astype(np.float32)
    path = tmp_path / "ml.npz"
    np.savez(path, features=x, labels=y.astype(np.int64))
    from nclens.cli import app

    out = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["measure", str(path), "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())["results"][0]["metrics"]  # --json: {"results": [{metrics, provenance}]}
    ratio, deg = official_angle_metric(x.astype(np.float64), y)
    assert got["tagwise_angle_li"] == pytest.approx(ratio, rel=1e-5)
    assert got["tagwise_angle_li_deg"] == pytest.approx(deg, rel=1e-5)
    assert "tagwise_angle_ratio" in got
    # without pairs the pair metrics are left out, not NaN
    single = MultiLabelStats(4).update(torch.randn(8, 3), torch.eye(4).repeat(2, 1))
    assert "tagwise_angle_li" not in multilabel_metrics(single)
