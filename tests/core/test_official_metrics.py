"""The official variants of Rangamani et al. 2023 against the formulas of the official code, re-derived
(``mariuslindegaard/Intermediate_Neural_Collapse@ICML2023``, ``src/Measurer.py``), and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from nclens.core.errors import UndefinedMetricError
from nclens.core.metrics import compute_metrics, nc1, within_share
from nclens.core.metrics.layers import random_subspace_alignment_k1, subspace_alignment, subspace_alignment_conv
from nclens.core.metrics.official import (
    activation_stable_rank_official,
    between_cov_spectrum,
    class_covariance_spectra,
    official_alignment_ranks,
    random_subspace_alignment,
    subspace_alignment_ranks,
    weight_rank,
    weight_singular_values_official,
    within_cov_stable_rank,
    within_share_classavg,
    within_stable_rank,
)
from nclens.core.metrics.registry import get_metric
from nclens.core.stats import ClassStats


def imbalanced(seed=0, k=4, d=6, counts=(10, 40, 80, 200)):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g, dtype=torch.float64) * 2
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0][:k], dtype=torch.float64)
    xs, ys = [], []
    for c, n in enumerate(counts):
        xs.append(centres[c] + scales[c] * torch.randn(n, d, generator=g, dtype=torch.float64))
        ys.append(torch.full((n,), c))
    return torch.cat(xs), torch.cat(ys)


def official_traces(x, y, k):
    """Measurer.Traces, re-derived: per-class sums of squared norms / n_c / K; μ_G sample-weighted."""
    n = torch.bincount(y, minlength=k).double()
    means = torch.stack([x[y == c].mean(0) for c in range(k)])
    global_mean = (means.T @ n / n.sum())  # calc_global_mean
    within = sum(float(((x[y == c] - means[c]) ** 2).sum()) / float(n[c]) / k for c in range(k))
    between = sum(float(((means[c] - global_mean) ** 2).sum()) / k for c in range(k))
    return within, between


def test_within_share_classavg_is_the_official_traces_ratio_and_differs_when_imbalanced():
    x, y = imbalanced()
    stats = ClassStats(4).update(x, y)
    w, b = official_traces(x, y, 4)
    assert within_share_classavg(stats) == pytest.approx(w / (w + b), rel=1e-12)
    assert abs(within_share_classavg(stats) - within_share(stats)) > 0.02  # unequal classes: the definitions differ
    balanced = ClassStats(4).update(*imbalanced(counts=(50, 50, 50, 50)))
    assert within_share_classavg(balanced) == pytest.approx(within_share(balanced), rel=1e-12)  # equal classes
    assert compute_metrics(stats, names=["within_share_classavg"])["within_share_classavg"] == within_share_classavg(
        stats)


def test_nc1_official_is_the_official_nc1_measure():
    x, y = imbalanced(seed=1)
    k = 4
    stats = ClassStats(k).update(x, y)
    n = torch.bincount(y, minlength=k).double()
    means = torch.stack([x[y == c].mean(0) for c in range(k)])
    mu_g = means.T @ n / n.sum()
    cov = torch.stack([((x[y == c] - means[c]).T @ (x[y == c] - means[c])) / n[c] for c in range(k)])
    s_within = torch.mean(cov * n[:, None, None] / n.sum(), axis=0).numpy()  # as NC1.measure
    rel = (means - mu_g).numpy()
    s_between = rel.T @ rel / k
    eigvecs, eigvals, _ = scipy.linalg.svd(s_between)
    inv = eigvals ** -1
    inv[k - 1:] = 0
    expected = np.trace(s_within @ eigvecs @ np.diag(inv) @ eigvecs.T)
    value = compute_metrics(stats, names=["nc1_official"])["nc1_official"]
    assert value == pytest.approx(expected, rel=1e-9)
    assert value != pytest.approx(nc1(stats), rel=1e-3)  # the canonical nc1 centres on the mean of class means


def test_official_alignment_ranks_and_sweep():
    assert official_alignment_ranks(128, 10) == list(range(1, 100)) + [100, 110, 120]
    assert official_alignment_ranks(40, 10) == list(range(1, 41))
    g = torch.Generator().manual_seed(0)
    # Linear: the default rank is K and equals the canonical alignment
    w = torch.randn(20, 30, generator=g, dtype=torch.float64)
    m = torch.randn(5, 30, generator=g, dtype=torch.float64)
    assert subspace_alignment_ranks(w, m) == {5: pytest.approx(subspace_alignment(w, m), abs=1e-12)}
    # conv: the rank-K entry equals the canonical conv alignment; the sweep re-derives AngleBetweenSubspaces
    conv_w = torch.randn(12, 16, 3, 3, generator=g, dtype=torch.float64)
    maps = torch.randn(3, 16, 4, 4, generator=g, dtype=torch.float64)
    sweep = subspace_alignment_ranks(conv_w, maps)
    assert list(sweep) == list(range(1, 17))
    assert sweep[3] == pytest.approx(subspace_alignment_conv(conv_w, maps), abs=1e-12)
    u_w = torch.linalg.svd(conv_w.transpose(1, 0).flatten(start_dim=1))[0]
    u_m = torch.linalg.svd(maps.transpose(1, 0).flatten(start_dim=1))[0]
    for rank in (1, 7, 16):
        s = torch.linalg.svdvals(u_w[:, :rank].t() @ u_m[:, :rank]).numpy()
        assert sweep[rank] == pytest.approx(np.sum(s) / rank, abs=1e-12)
    assert sweep[16] == pytest.approx(1.0, abs=1e-12)  # full space: 1 by construction
    with pytest.raises(ValueError, match="ranks"):
        subspace_alignment_ranks(conv_w, maps, ranks=[17])


def test_random_subspace_alignment_baseline():
    mean, sd = random_subspace_alignment(50, 1, draws=4000, seed=1)
    assert abs(mean - random_subspace_alignment_k1(50)) < 4 * sd / math.sqrt(4000)
    assert random_subspace_alignment(10, 10)[0] == pytest.approx(1.0, abs=1e-12)
    assert random_subspace_alignment(256, 10) == random_subspace_alignment(256, 10)  # seeded
    low, _ = random_subspace_alignment(512, 10)
    assert low < 0.2  # random 10-subspaces of R^512 are nearly orthogonal
    with pytest.raises(ValueError, match="rank"):
        random_subspace_alignment(5, 6)


def power_iteration_stable_rank(a, iters=20, omega=0.5, threshold=0.999):
    """ActivationStableRank.measure for one class, re-derived (whole class in one batch)."""
    n = a.shape[0]
    frob = float(torch.trace(a @ a.T))
    prev = torch.ones(a.shape[1], dtype=a.dtype) / a.shape[1] ** 0.5
    for _ in range(iters):
        curr = (a @ prev) @ a / n
        eig = curr.norm()
        normed = curr / eig
        if float(prev @ normed) > threshold:
            break
        new = normed * (1 + omega) - omega * prev
        prev = new / new.norm()
    return frob / float(eig)


def test_stable_ranks_against_direct_svd_and_the_official_power_iteration():
    g = torch.Generator().manual_seed(3)
    k, d = 3, 8
    scales = torch.tensor([4.0, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05], dtype=torch.float64)  # clear top gap
    x = torch.randn(90, d, generator=g, dtype=torch.float64) * scales + torch.randn(k, d, generator=g,
                                                                                      dtype=torch.float64)[
        torch.arange(90) % k]
    y = torch.arange(90) % k
    means = torch.stack([x[y == c].mean(0) for c in range(k)])
    scatter = torch.stack([(x[y == c] - means[c]).T @ (x[y == c] - means[c]) for c in range(k)])
    counts = torch.bincount(y).double()
    spectra = class_covariance_spectra(scatter, counts)
    direct = []
    for c in range(k):
        a = (x[y == c] - means[c]).numpy()
        sv = np.linalg.svd(a, compute_uv=False)
        direct.append((sv ** 2).sum() / sv[0] ** 2)
        cov_sv = np.linalg.svd(a.T @ a / a.shape[0], compute_uv=False)
        assert spectra[c].numpy() == pytest.approx(cov_sv, rel=1e-9, abs=1e-12)
    assert within_stable_rank(spectra) == pytest.approx(np.mean(direct), rel=1e-10)
    cov_sr = [float((s ** 2).sum() / s[0] ** 2) for s in spectra]
    assert within_cov_stable_rank(spectra) == pytest.approx(np.mean(cov_sr), rel=1e-12)
    official = np.mean([power_iteration_stable_rank(x[y == c] - means[c]) for c in range(k)])
    assert activation_stable_rank_official(spectra, counts) == pytest.approx(official, rel=2e-3)
    assert activation_stable_rank_official(spectra, counts) == pytest.approx(30 * within_stable_rank(spectra))
    with pytest.raises(UndefinedMetricError):
        within_stable_rank(torch.zeros(2, 3, dtype=torch.float64))


def test_between_spectrum_and_official_weight_singular_values():
    x, y = imbalanced(seed=2)
    stats = ClassStats(4).update(x, y)
    n = torch.bincount(y).double()
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    rel = means - means.T @ n / n.sum()
    expected = torch.linalg.svdvals(rel.T @ rel / 4)[:4]
    assert torch.allclose(between_cov_spectrum(stats), expected, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    conv = torch.randn(6, 4, 3, 3, generator=g)
    out = weight_singular_values_official(conv)
    s = scipy.linalg.svd(conv.flatten(start_dim=1).numpy(), compute_uv=False)  # WeightSVs: flatten(start_dim=1)
    assert np.allclose(out["singular_values"], s, rtol=1e-5)
    assert np.allclose(out["relative"], s / s.sum(), rtol=1e-5)
    assert np.allclose(out["cumulative"], np.cumsum(s) / s.sum(), rtol=1e-5)
    lowrank = torch.randn(10, 2, generator=g) @ torch.randn(2, 7, generator=g)
    assert weight_rank(lowrank) == 2 and weight_rank(torch.eye(5)) == 5
    assert weight_rank(torch.diag(torch.tensor([100.0, 1.0, 0.001]))) == 1  # 100/101.001 >= 0.99
    assert weight_rank(torch.diag(torch.tensor([100.0, 2.0, 0.001]))) == 2


def test_official_variants_are_registered_with_their_sources():
    for name in ("within_share_classavg", "nc1_official", "subspace_alignment_ranks", "subspace_alignment_random",
                 "within_stable_rank", "activation_stable_rank_official", "within_cov_stable_rank", "weight_rank_99"):
        spec = get_metric(name)
        assert spec.definition and spec.source and not spec.default
    assert "Measurer.py" in get_metric("within_share_classavg").source
    x, y = imbalanced()
    assert "within_share_classavg" not in compute_metrics(ClassStats(4).update(x, y))  # not a default metric
