"""Large-K code paths of the metrics, exercised on small data and checked against dense float64 references.

* Row-block reductions (cdnv, equiangularity): ``_BLOCK_ELEMENTS`` is lowered so that a handful of
  classes already spans many blocks, including a last, partial one; the result must equal the
  dense definition and must not depend on the block size.
* K > 4096 (the tiled ETF distance and the eigh branch of ``_means_svd`` that never forms K×K):
  K = 4,100 classes in D = 6, against NumPy references built from the definitions.
* (slow) K = 50,000 in a subprocess: peak memory stays far below one K×K float64 matrix.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import nclens.core.metrics.multiclass as mc
from nclens.core import metrics
from nclens.core.stats import ClassStats
from reference import etf, float32_scatter_bound, reference_metrics


def _gaussian(k: int, d: int, per_class: int, seed: int, spread: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    y = torch.arange(k * per_class) % k
    return centres[y] + torch.randn(k * per_class, d, generator=g, dtype=torch.float64), y


def _close(a: float, b: float, rtol: float = 1e-9) -> bool:
    return abs(a - b) <= rtol * max(abs(b), 1e-300)


# ------------------------------------------------------------------ tiled reductions, small K
@pytest.mark.parametrize("block", [1, 7, 50, 37 * 37 - 1])
def test_blocked_pairwise_metrics_equal_dense(monkeypatch, block):
    k, d = 37, 5
    x, y = _gaussian(k, d, 4, seed=0)
    w = torch.randn(k, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = reference_metrics(x.numpy(), y.numpy(), w.numpy())
    stats = ClassStats(num_classes=k).update(x, y)
    monkeypatch.setattr(mc, "_BLOCK_ELEMENTS", block)  # row blocks of max(1, block // K) rows
    assert _close(metrics.cdnv(stats), ref["cdnv"])
    assert _close(metrics.nc2_equiangular(stats), ref["nc2_equiangular"])
    assert _close(metrics.nc2_equiangular_w(w), ref["nc2_equiangular_w"])


def test_row_blocks_cover_every_row_once(monkeypatch):
    for block, k, other in [(1, 5, 5), (10, 23, 3), (2**24, 7, 7), (100, 1000, 7)]:
        monkeypatch.setattr(mc, "_BLOCK_ELEMENTS", block)
        rows = [list(range(k))[s] for s in mc._row_blocks(k, other)]
        assert [i for r in rows for i in r] == list(range(k))
        assert max(len(r) for r in rows) == min(k, max(1, block // other))


# --------------------------------------------------------------------- K > 4096 branches
K_LARGE, D_SMALL = 4100, 6



@pytest.fixture(scope="module")
def large_k():
    x, y = _gaussian(K_LARGE, D_SMALL, 2, seed=2, spread=1.5)
    stats = ClassStats(num_classes=K_LARGE).update(x.float(), y)  # float32 features, float64 statistics
    x64 = x.float().double().numpy()
    ynp = y.numpy()
    counts = np.bincount(ynp, minlength=K_LARGE).astype(np.float64)
    means = np.zeros((K_LARGE, D_SMALL))
    np.add.at(means, ynp, x64)
    means /= counts[:, None]
    centred = x64 - means[ynp]
    w = np.random.default_rng(3).standard_normal((K_LARGE, D_SMALL))
    return stats, means, centred, counts, w, ynp


def _pairwise_reference(means: np.ndarray, var: np.ndarray, chunk: int = 256) -> tuple[float, float]:
    """(cdnv, equiangularity) by direct pairwise differences / cosines, in row chunks (float64)."""
    k = means.shape[0]
    mbar = means - means.mean(0)
    unit = mbar / np.linalg.norm(mbar, axis=1, keepdims=True)
    cd = eq = 0.0
    for lo in range(0, k, chunk):
        hi = min(k, lo + chunk)
        dist2 = ((means[lo:hi, None, :] - means[None, :, :]) ** 2).sum(-1)  # (chunk, K) direct differences
        cos = unit[lo:hi] @ unit.T
        off = np.ones_like(dist2, dtype=bool)
        off[np.arange(hi - lo), np.arange(lo, hi)] = False
        cd += ((var[lo:hi, None] + var[None, :]) / (2 * np.where(off, dist2, 1.0)))[off].sum()
        eq += np.abs(cos + 1 / (k - 1))[off].sum()
    return cd / (k * (k - 1)), eq / (k * (k - 1))


def _etf_dist_dense(a: np.ndarray, b: np.ndarray) -> float:
    g = a @ b.T  # (K, K) dense
    g /= np.linalg.norm(g)
    k = g.shape[0]
    g += 1.0 / (k * np.sqrt(k - 1))  # subtract ETF_K in place: off-diagonal −1/(K√(K−1))
    g[np.diag_indices(k)] -= 1.0 / np.sqrt(k - 1)  # diagonal (1 − 1/K)/√(K−1)
    return float(np.linalg.norm(g))


def test_etf_reference_helper_matches_definition():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((9, 4)), rng.standard_normal((9, 4))
    g = a @ b.T
    assert _close(_etf_dist_dense(a, b), float(np.linalg.norm(g / np.linalg.norm(g) - etf(9))), 1e-12)


def test_large_k_etf_distances_tiled(large_k, monkeypatch):
    stats, means, _, _, w, _ = large_k
    mbar = means - means.mean(0)
    monkeypatch.setattr(mc, "_BLOCK_ELEMENTS", 2**16)  # 15-row blocks: 274 of them
    wt = torch.from_numpy(w)
    assert _close(metrics.nc2_etf(stats), _etf_dist_dense(mbar, mbar))
    assert _close(metrics.nc2_etf_w(wt), _etf_dist_dense(w, w))
    assert _close(metrics.nc3_etf(stats, wt), _etf_dist_dense(w, mbar))


def test_large_k_nc1_through_eigh(large_k):
    stats, means, centred, counts, _, ynp = large_k
    mbar = means - means.mean(0)
    v, s = mc._means_svd(torch.from_numpy(mbar))
    assert v.shape == (D_SMALL, D_SMALL)  # K−1 ≥ D: full rank D, from the D×D Gram
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(mbar, compute_uv=False), rtol=1e-10)
    sigma_b = mbar.T @ mbar / K_LARGE
    pinv_b = np.linalg.pinv(sigma_b, hermitian=True)
    # the eigh path itself, on the statistics' own Σ_W: float64-exact
    same_sw = stats.scatter_w.numpy() / counts.sum()
    assert _close(metrics.nc1(stats), float(np.trace(same_sw @ pinv_b) / K_LARGE), 1e-9)
    # and the definition from the raw samples (Σ_W two-pass in float64; the scatter's GEMM is float32)
    sigma_w = centred.T @ centred / counts.sum()
    assert _close(metrics.nc1(stats), float(np.trace(sigma_w @ pinv_b) / K_LARGE), 1e-6)


def test_large_k_eigh_drops_null_space():
    """Means spanning only 3 of D = 8 directions: the eigh branch keeps exactly rank 3."""
    g = torch.Generator().manual_seed(4)
    basis = torch.linalg.qr(torch.randn(8, 3, generator=g, dtype=torch.float64))[0]  # (8, 3)
    m = torch.randn(K_LARGE, 3, generator=g, dtype=torch.float64) @ basis.T
    m = m - m.mean(0)
    v, s = mc._means_svd(m)
    assert v.shape == (8, 3)
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(m.numpy(), compute_uv=False)[:3], rtol=1e-9)


def test_large_k_pairwise_metrics(large_k, monkeypatch):
    stats, means, centred, counts, _, ynp = large_k
    var = np.bincount(ynp, weights=(centred**2).sum(1), minlength=K_LARGE) / counts
    cd_ref, eq_ref = _pairwise_reference(means, var)
    default_cd, default_eq = metrics.cdnv(stats), metrics.nc2_equiangular(stats)
    assert _close(default_cd, cd_ref, 1e-8)
    assert _close(default_eq, eq_ref, 1e-9)
    monkeypatch.setattr(mc, "_BLOCK_ELEMENTS", 40 * K_LARGE + 5)  # 40-row blocks, last one partial
    assert _close(metrics.cdnv(stats), default_cd, 1e-12)
    assert _close(metrics.nc2_equiangular(stats), default_eq, 1e-12)


def test_large_k_statistics_equal_two_pass(large_k):
    stats, means, centred, counts, _, ynp = large_k
    np.testing.assert_array_equal(stats.counts.numpy(), counts)
    # default mode: float32 class sums of h − s within the batch, exact to float32 precision of the spread
    u = 2.0**-24
    per_class = np.zeros_like(means)
    np.add.at(per_class, ynp, np.abs(centred) + u * np.abs(means[ynp]))
    gamma = (counts.max() + 2) * u / (1 - (counts.max() + 2) * u)
    assert (np.abs(stats.means.numpy() - means) <= gamma * per_class / counts[:, None]).all()
    # the fully exact mode: float64 sums of the float32 inputs
    x32 = torch.from_numpy(centred + means[ynp]).float()
    exact = ClassStats(num_classes=K_LARGE, exact_sums=True).update(x32, torch.from_numpy(ynp))
    np.testing.assert_allclose(exact.means.numpy(), means, rtol=1e-12, atol=1e-12)
    ref = centred.T @ centred
    error = np.abs(stats.scatter_w.numpy() - ref)
    bound = float32_scatter_bound(centred, means[ynp], batch=centred.shape[0])  # one update of all rows
    assert (error <= bound).all(), float((error / bound).max())
    # the bound is not vacuous: an error of 1e-3 of the spread (e.g. a wrong shift correction) exceeds it
    assert (bound < 1e-3 * np.sqrt(np.outer(np.diag(ref), np.diag(ref)))).all()


# ----------------------------------------------------------------------------- memory (slow)
@pytest.mark.slow
def test_k50000_metrics_memory_stays_far_below_k_squared():
    """K = 50,000, D = 16 in a fresh process: peak RSS < 2 GiB, while one K×K float64 matrix is 18.6 GiB."""
    code = textwrap.dedent(
        """
        import torch
        from nclens.core import metrics
        from nclens.core.stats import ClassStats
        torch.set_num_threads(1)
        k, d = 50_000, 16
        g = torch.Generator().manual_seed(0)
        y = torch.arange(2 * k) % k
        x = torch.randn(k, d, generator=g)[y] * 3 + torch.randn(2 * k, d, generator=g)
        s = ClassStats(num_classes=k).update(x, y)
        for name in ("nc1", "nc2_etf", "nc2_equiangular", "cdnv"):
            assert getattr(metrics, name)(s) > 0
        print([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1])
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3000, check=True)
    peak_gib = int(out.stdout.strip().splitlines()[-1]) / 2**20
    assert peak_gib < 2.0, peak_gib


# ------------------------------------------------- one shared pass for cdnv / equiangular / ETF
def _dense_pairwise(means: np.ndarray, var: np.ndarray | None, mbar: np.ndarray) -> tuple[float, float, float]:
    """(cdnv, equiangularity, ETF distance) from dense K×K float64 NumPy matrices, straight from the definitions."""
    k = means.shape[0]
    off = ~np.eye(k, dtype=bool)
    cd = float("nan")
    if var is not None:
        dist2 = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)  # (K, K) direct differences
        cd = float(((var[:, None] + var[None, :]) / (2 * np.where(off, dist2, 1.0)))[off].mean())
    norms = np.linalg.norm(mbar, axis=1)
    cos = mbar @ mbar.T / np.outer(norms, norms)
    eq = float(np.abs(cos + 1 / (k - 1))[off].mean())
    g = mbar @ mbar.T
    return cd, eq, float(np.linalg.norm(g / np.linalg.norm(g) - etf(k)))


def _unequal_classes(k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian classes with 2..5 samples each (so the weighted and unweighted centrings differ)."""
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    rest = torch.arange(k).repeat_interleave(1 + torch.arange(k) % 4)  # 1..4 more samples per class
    y = torch.cat([torch.arange(k), rest[torch.randperm(rest.shape[0], generator=g)]])  # (N,) each class first once
    return centres[y] + torch.randn(y.shape[0], d, generator=g, dtype=torch.float64), y


def _numpy_moments(x: torch.Tensor, y: torch.Tensor, k: int):
    x64, ynp = x.double().numpy(), y.numpy()
    counts = np.bincount(ynp, minlength=k).astype(np.float64)
    means = np.zeros((k, x64.shape[1]))
    np.add.at(means, ynp, x64)
    means /= counts[:, None]
    var = np.bincount(ynp, weights=((x64 - means[ynp]) ** 2).sum(1), minlength=k) / counts
    weighted_mean = x64.sum(0) / counts.sum()
    return means, var, means - means.mean(0), means - weighted_mean


@pytest.mark.parametrize(
    ("block", "tile"),
    [
        (203 * 13 + 7, 2**17),  # 13-row blocks (last one partial), one tile per block side
        (203 * 13 + 7, 50),  # 13-row blocks in 3-column tiles: the diagonal block spans several tiles
        (203, 1),  # one row at a time, one entry per tile
        (203 * 64, 1000),  # 64-row blocks in 15-column tiles
    ],
)
def test_shared_pass_equals_dense_references_small_blocks(monkeypatch, block, tile):
    k, d = 203, 7
    x, y = _unequal_classes(k, d, seed=5)
    means, var, mbar, mbar_w = _numpy_moments(x, y, k)
    monkeypatch.setattr(mc, "_BLOCK_ELEMENTS", block)
    monkeypatch.setattr(mc, "_TILE_ELEMENTS", tile)
    stats = ClassStats(num_classes=k).update(x, y)
    assert k * k > mc._BLOCK_ELEMENTS  # the tiled path, not the dense one
    shared = mc._pairwise_reductions(stats, weighted=False)
    cd, eq, dist = _dense_pairwise(means, var, mbar)
    assert _close(shared.cdnv, cd, 1e-10)
    assert _close(shared.equiangular, eq, 1e-11)
    assert _close(shared.etf, dist, 1e-11)
    # the public metrics return exactly the shared values
    assert (metrics.cdnv(stats), metrics.nc2_equiangular(stats), metrics.nc2_etf(stats)) == tuple(shared)
    # weighted centring (μ_G = sample mean): a different M̄ (counts differ), cdnv unchanged (translation invariant)
    shared_w = mc._pairwise_reductions(stats, weighted=True)
    cd_w, eq_w, dist_w = _dense_pairwise(means, var, mbar_w)
    assert abs(eq_w - eq) > 1e-6 * eq  # the two centrings really differ here
    assert _close(shared_w.equiangular, eq_w, 1e-11)
    assert _close(shared_w.etf, dist_w, 1e-11)
    assert _close(shared_w.cdnv, cd, 1e-10)
    assert metrics.nc2_equiangular(stats, weighted=True) == shared_w.equiangular
    assert metrics.nc2_etf(stats, weighted=True) == shared_w.etf


def test_shared_pass_dense_branch_is_bit_for_bit_the_separate_formulas():
    """K² ≤ one block: the values are exactly those of the separate (pre-sharing) reductions."""
    k, d = 203, 7
    x, y = _unequal_classes(k, d, seed=6)
    stats = ClassStats(num_classes=k).update(x, y)
    assert k * k <= mc._BLOCK_ELEMENTS
    m = mc.centred_means(stats)
    var = stats.class_sq / stats.counts
    sq = m.square().sum(1)

    def term(gram: torch.Tensor, rows: slice) -> torch.Tensor:
        dist2 = (sq[rows, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0)
        dist2[dist2 == 0] = float("nan")
        return (var[rows, None] + var[None, :]) / (2.0 * dist2)

    assert metrics.cdnv(stats) == float(mc._offdiag_mean(m, m, term))
    assert metrics.nc2_equiangular(stats) == mc._equiangular(m)
    assert metrics.nc2_etf(stats) == float(metrics.etf_dist_of_product(m, m))
    mw = mc.centred_means(stats, weighted=True)
    assert metrics.nc2_equiangular(stats, weighted=True) == mc._equiangular(mw)
    assert metrics.nc2_etf(stats, weighted=True) == float(metrics.etf_dist_of_product(mw, mw))


def test_shared_pass_large_k_equals_dense_references(large_k):
    """K = 4,100 > 4096 with the default budget: row blocks of 4,092 rows in cache-sized tiles."""
    stats, means, centred, counts, _, ynp = large_k
    assert K_LARGE * K_LARGE > mc._BLOCK_ELEMENTS
    var = np.bincount(ynp, weights=(centred**2).sum(1), minlength=K_LARGE) / counts
    cd_ref, eq_ref = _pairwise_reference(means, var)
    mbar = means - means.mean(0)
    shared = mc._pairwise_reductions(stats)
    assert _close(shared.cdnv, cd_ref, 1e-8)  # σ_c² from float32 features: the statistics, not the pass
    assert _close(shared.equiangular, eq_ref, 1e-9)
    assert _close(shared.etf, _etf_dist_dense(mbar, mbar), 1e-9)
    assert (metrics.cdnv(stats), metrics.nc2_equiangular(stats), metrics.nc2_etf(stats)) == tuple(shared)


def test_shared_pass_runs_once_and_update_invalidates_it(monkeypatch):
    k, d = 60, 5
    x, y = _unequal_classes(k, d, seed=7)
    calls: list[bool] = []
    real = mc._pairwise_pass

    def counting(stats, weighted):
        calls.append(weighted)
        return real(stats, weighted)

    monkeypatch.setattr(mc, "_pairwise_pass", counting)
    stats = ClassStats(num_classes=k).update(x, y)
    first = (metrics.cdnv(stats), metrics.nc2_equiangular(stats), metrics.nc2_etf(stats))
    out = metrics.compute_metrics(stats)
    assert (out["cdnv"], out["nc2_equiangular"], out["nc2_etf"]) == first
    assert calls == [False]  # one pass served cdnv, equiangularity, the ETF distance and compute_metrics
    metrics.nc2_etf(stats, weighted=True)
    metrics.nc2_equiangular(stats, weighted=True)
    assert calls == [False, True]  # the weighted centring has its own cache entry
    x_more, y_more = _unequal_classes(k, d, seed=9)
    stats.update(x_more, y_more)  # a mutation clears the cache
    assert not any(key.startswith("pairwise_reductions") for key in stats._cache)
    second = (metrics.cdnv(stats), metrics.nc2_equiangular(stats), metrics.nc2_etf(stats))
    assert calls == [False, True, False]
    means, var, mbar, _ = _numpy_moments(torch.cat([x, x_more]), torch.cat([y, y_more]), k)
    reference = _dense_pairwise(means, var, mbar)
    assert all(_close(a, b, 1e-10) for a, b in zip(second, reference))
    assert all(a != b for a, b in zip(first, second))


@pytest.mark.parametrize("block", [2**24, 30 * 7 + 1])  # dense branch, tiled branch
def test_shared_pass_keeps_cdnv_errors_to_cdnv(monkeypatch, block):
    monkeypatch.setattr(mc, "_BLOCK_ELEMENTS", block)
    monkeypatch.setattr(mc, "_TILE_ELEMENTS", 40)
    k, d = 30, 4
    x, y = _unequal_classes(k, d, seed=8)
    keep = torch.ones(y.shape[0], dtype=torch.bool)
    keep[(y == 11).nonzero().flatten()[1:]] = False  # class 11 keeps a single sample
    single = ClassStats(num_classes=k).update(x[keep], y[keep])
    eq, dist = metrics.nc2_equiangular(single), metrics.nc2_etf(single)  # the pass runs first, without cdnv
    assert np.isfinite([eq, dist]).all()
    with pytest.raises(ValueError, match=r"at least 2 samples per class.*\[11\]"):
        metrics.cdnv(single)
    assert "cdnv" not in metrics.compute_metrics(single, names=["nc2_etf", "nc2_equiangular"])
    # classes 3 and 7 (5 samples each) with identical samples, hence identical means
    x2 = x.clone()
    x2[(y == 7).nonzero().flatten()] = x[(y == 3).nonzero().flatten()]
    twins = ClassStats(num_classes=k).update(x2, y)
    assert torch.equal(twins.means[3], twins.means[7])
    assert np.isfinite([metrics.nc2_equiangular(twins), metrics.nc2_etf(twins)]).all()
    with pytest.raises(ValueError, match="identical means"):
        metrics.cdnv(twins)
