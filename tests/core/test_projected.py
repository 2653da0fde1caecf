"""ClassStats(scatter="projected"): exact NC1 for any D in two passes, without a D×D matrix.

Ground truth: the full-scatter nc1 where both fit (float64, 1e-10), and a direct float64 reference
nc1 = (1/N)‖C M̄⁺‖_F² (C the class-centred samples, M̄⁺ = pinv of the centred means; equal to
Tr(Σ_W Σ_B⁺)/K because Σ_B⁺ = K M̄⁺M̄⁺ᵀ) at D = 40,000, where a D×D float64 matrix would be 12.8 GB.
Invariants: streaming = batch, merged shards = one pass, state round trip = uninterrupted in every
phase, 2 gloo ranks = one process.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch

from nclens.core import metrics
from nclens.core.errors import UndefinedMetricError
from nclens.core.stats import ClassStats, choose_scatter, estimate_memory


def _data(k=5, d=30, n=400, seed=0, dtype=torch.float64, offset=0.0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    y[:k] = torch.arange(k)  # every class present
    centres = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    x = centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64) + offset
    return x.to(dtype), y


def _two_pass(x, y, k=None, batch=64, batch2=None, **kwargs) -> ClassStats:
    s = ClassStats(k, scatter="projected", **kwargs)
    for i in range(0, x.shape[0], batch):
        s.update(x[i : i + batch], y[i : i + batch])
    s.begin_projection()
    step = batch2 or batch
    for i in range(0, x.shape[0], step):
        s.update(x[i : i + step], y[i : i + step])
    return s.end_projection()


def _reference_nc1(x: np.ndarray, y: np.ndarray, weighted: bool = False) -> float:
    """(1/N) ‖C M̄⁺‖_F² from the definitions in float64 (no D×D matrix)."""
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    mbar = means - (x.mean(0) if weighted else means.mean(0))  # rank K−1: the K-th singular value is rounding
    return float(np.square(centred @ np.linalg.pinv(mbar, rcond=1e-10)).sum() / x.shape[0])


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# -------------------------------------------------------------------------- exactness
@pytest.mark.parametrize(("k", "d"), [(5, 30), (10, 7), (3, 200), (12, 12)])
def test_projected_nc1_equals_full_scatter_float64(k, d):
    x, y = _data(k=k, d=d, n=50 * k, seed=k + d, offset=20.0)
    full = ClassStats(k).update(x, y)
    proj = _two_pass(x, y, k)
    assert proj.projection_basis.shape == (d, min(k - 1, d))
    for weighted in (False, True):
        assert _rel(metrics.nc1(proj, weighted=weighted), metrics.nc1(full, weighted=weighted)) < 1e-10
    # the projected scatter is Vᵀ S_W V of the full one
    v = proj.projection_basis
    torch.testing.assert_close(proj.projected_scatter, v.T @ full.scatter_w @ v, rtol=1e-10, atol=1e-9)
    # every metric that needs only traces, means or the projected scatter is the same
    a, b = metrics.compute_metrics(proj), metrics.compute_metrics(full)
    assert set(b) - set(a) == {"effective_rank"}
    for name, value in a.items():
        assert _rel(value, b[name]) < 1e-10, name


def test_projected_exact_at_d40000_in_memory_far_below_d_squared():
    k, d = 10, 40_000
    x, y = _data(k=k, d=d, n=200, seed=7, spread=0.05)
    proj = _two_pass(x, y, k, batch=48)
    ref = _reference_nc1(x.numpy(), y.numpy())
    assert _rel(metrics.nc1(proj), ref) < 1e-10
    assert _rel(metrics.nc1(proj, weighted=True), _reference_nc1(x.numpy(), y.numpy(), weighted=True)) < 1e-10
    # nothing D×D is held: the largest tensor is K×D (B×D for the batch workspace), the state < 0.1 % of
    # one D×D float64 matrix
    held = [t for t in (*proj.__dict__.values(), *proj._cache.values()) if isinstance(t, torch.Tensor)]
    assert max(t.numel() for t in held) <= 48 * d
    assert proj.memory_bytes() < 1e-3 * d * d * 8
    assert estimate_memory(d, k, "projected", batch_size=48).peak < 1e-2 * d * d * 8
    assert choose_scatter(d, k) == "projected"


def test_projected_float32_strong_collapse_matches_float64_reference():
    """Means ~1e2, within-class std 1e-3, float32 input: nc1 within 1e-3 of the float64 reference."""
    from nclens.data import gaussian_features

    data = gaussian_features(10, 64, 300, radius=100.0, sigma=1e-3, offset=50.0, seed=2, dtype=torch.float32)
    proj = _two_pass(data.features, data.labels, 10, batch=256)
    ref = _reference_nc1(data.features.double().numpy(), data.labels.numpy())
    assert _rel(metrics.nc1(proj), ref) < 1e-3
    exact = _two_pass(data.features, data.labels, 10, batch=256, exact_sums=True)
    assert _rel(metrics.nc1(exact), ref) < 1e-9  # float64 centring and projection


# ------------------------------------------------------------------------- invariants
def test_streaming_equals_batch_in_both_passes():
    x, y = _data(n=600, seed=3)
    one = _two_pass(x, y, 5, batch=600)
    many = _two_pass(x, y, 5, batch=7, batch2=61)
    torch.testing.assert_close(many.projection_basis, one.projection_basis, rtol=0, atol=1e-12)
    torch.testing.assert_close(many.projected_scatter, one.projected_scatter, rtol=1e-12, atol=1e-10)
    assert _rel(metrics.nc1(many), metrics.nc1(one)) < 1e-12


def test_merged_shards_equal_one_pass():
    x, y = _data(n=900, seed=4)
    labels = torch.tensor([-3, 8, 15, 100, 7])[y]  # arbitrary labels, a growing index
    whole = _two_pass(x, labels, None)
    shards = [slice(i, None, 3) for i in range(3)]
    first = [ClassStats(scatter="projected").update(x[s], labels[s]) for s in shards]
    pass1 = first[0].merge(first[1]).merge(first[2]).begin_projection()
    second = [pass1.clone().update(x[s], labels[s]) for s in shards]
    merged = second[0].merge(second[1]).merge(second[2]).end_projection()
    assert torch.equal(merged.label_values, whole.label_values)
    torch.testing.assert_close(merged.projected_scatter, whole.projected_scatter, rtol=1e-10, atol=1e-9)
    assert _rel(metrics.nc1(merged), metrics.nc1(whole)) < 1e-10


@pytest.mark.parametrize("phase", ["means", "projected", "done"])
def test_state_round_trip_equals_uninterrupted(phase):
    x, y = _data(n=500, seed=5)
    half = 250

    def run(stop: str | None) -> ClassStats:
        s = ClassStats(5, scatter="projected").update(x[:half], y[:half])
        if stop == "means":
            s = _reload(s)
        s.update(x[half:], y[half:]).begin_projection().update(x[:half], y[:half])
        if stop == "projected":
            s = _reload(s)
        s.update(x[half:], y[half:]).end_projection()
        if stop == "done":
            s = _reload(s)
        return s

    straight, resumed = run(None), run(phase)
    assert resumed.projection_phase == "done"
    assert torch.equal(resumed.projection_basis, straight.projection_basis)
    assert torch.equal(resumed.projected_scatter, straight.projected_scatter)
    assert metrics.nc1(resumed) == metrics.nc1(straight)


def _reload(s: ClassStats) -> ClassStats:
    buffer = io.BytesIO()
    torch.save(s.state_dict(), buffer)
    buffer.seek(0)
    out = ClassStats.from_state_dict(torch.load(buffer, weights_only=True))
    assert out.projection_phase == s.projection_phase
    return out


def test_clone_in_every_phase_is_independent():
    x, y = _data(n=300, seed=6)
    s = ClassStats(5, scatter="projected").update(x, y)
    c = s.clone()
    s.begin_projection()
    assert c.projection_phase == "means" and c.projection_basis is None
    c2 = s.clone().update(x, y)
    assert s.projected_scatter.abs().max() == 0
    assert c2.end_projection().projection_phase == "done"


# ------------------------------------------------------------------------------ errors
def test_pass_two_counts_must_match_pass_one():
    x, y = _data(n=300, seed=8)
    s = ClassStats(5, scatter="projected").update(x, y).begin_projection().update(x[:-3], y[:-3])
    with pytest.raises(ValueError, match=r"second pass saw 297 samples but the first saw 300.*pass 1 \d+, pass 2 \d+"):
        s.end_projection()
    t = ClassStats(scatter="projected").update(x, y).begin_projection()
    with pytest.raises(ValueError, match=r"labels \[9\] were not seen in pass 1"):
        t.update(x[:2], torch.tensor([0, 9]))


def test_phase_errors_and_undefined_metrics():
    x, y = _data(n=200, seed=9)
    s = ClassStats(5, scatter="projected").update(x, y)
    with pytest.raises(UndefinedMetricError, match="needs the second pass"):
        metrics.nc1(s)
    assert "nc1" not in metrics.compute_metrics(s)
    with pytest.raises(ValueError, match="end_projection\\(\\) needs"):
        s.end_projection()
    s.begin_projection()
    with pytest.raises(ValueError, match="already called"):
        s.begin_projection()
    s.update(x, y).end_projection()
    with pytest.raises(ValueError, match="projection is finished"):
        s.update(x, y)
    for fn in (metrics.sigma_w, metrics.effective_rank, metrics.total_covariance):
        with pytest.raises(UndefinedMetricError, match="full D×D scatter"):
            fn(s)
    with pytest.raises(ValueError, match="needs scatter='projected'"):
        ClassStats(5).update(x, y).begin_projection()
    with pytest.raises(ValueError, match="keep no D×D scatter"):
        metrics.compute_metrics(s, names=["effective_rank"])


def test_merge_requires_same_phase_and_basis():
    x, y = _data(n=300, seed=10)
    a = ClassStats(5, scatter="projected").update(x, y)
    b = a.clone().begin_projection()
    with pytest.raises(ValueError, match="projection phase 'projected' into phase 'means'"):
        a.clone().merge(b)
    other = ClassStats(5, scatter="projected").update(x[:200], y[:200]).begin_projection()
    with pytest.raises(ValueError, match="different projection bases"):
        b.clone().merge(other)
    done = b.clone().update(x, y).end_projection()
    with pytest.raises(ValueError, match="two finished projections"):
        done.clone().merge(done)


def test_choose_scatter_states_memory():
    assert choose_scatter(512, 10) == "full"
    assert choose_scatter(50_000, 10) == "projected"
    assert choose_scatter(2048, 10, max_scatter_bytes=2**20) == "projected"
    full, proj = estimate_memory(40_000, 10, "full"), estimate_memory(40_000, 10, "projected")
    assert full.state >= 40_000**2 * 8 and proj.peak < full.state / 50
    with pytest.raises(MemoryError, match="scatter='projected'"):
        ClassStats(10, max_scatter_bytes=2**20).update(torch.ones(2, 2048), torch.tensor([0, 1]))


# ----------------------------------------------------------------------- distributed
def _projected_worker(rank: int, out_dir: str) -> None:
    x, y = _data(n=403, seed=11)
    mine = torch.arange(x.shape[0]) % 2 == rank
    s = ClassStats(5, scatter="projected").update(x[mine], y[mine]).all_reduce()
    s.begin_projection().update(x[mine], y[mine]).all_reduce().end_projection()
    nc1 = torch.tensor(metrics.nc1(s), dtype=torch.float64)
    out = {"basis": s.projection_basis, "p": s.projected_scatter, "nc1": nc1}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.distributed
def test_two_gloo_ranks_equal_one_process(tmp_path):
    from torch.multiprocessing import ProcessExitedException

    from nclens.core.distributed import spawn

    try:
        spawn(_projected_worker, 2, (str(tmp_path),), backend="gloo")
    except ProcessExitedException:  # a rank killed by a signal under machine load: run the same job again
        spawn(_projected_worker, 2, (str(tmp_path),), backend="gloo")
    x, y = _data(n=403, seed=11)
    one = _two_pass(x, y, 5)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(ranks[0]["basis"], ranks[1]["basis"])  # broadcast from rank 0
    for r in ranks:
        torch.testing.assert_close(r["p"], one.projected_scatter, rtol=1e-10, atol=1e-9)
        assert _rel(float(r["nc1"]), metrics.nc1(one)) < 1e-10


# --------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_projected_exact_at_d100000_k100_streamed():
    """D = 100,000, K = 100, N = 4,000 float32 features streamed in batches, against the float64 reference."""
    k, d, n = 100, 100_000, 4_000
    g = torch.Generator().manual_seed(12)
    centres = 0.02 * torch.randn(k, d, generator=g)
    y = torch.arange(n) % k
    x = centres[y] + torch.randn(n, d, generator=g)  # (N, D) float32, 1.6 GB
    proj = _two_pass(x, y, k, batch=500, exact_sums=True)
    ref = _reference_nc1(x.double().numpy(), y.numpy())
    assert _rel(metrics.nc1(proj), ref) < 1e-9
    fast = _two_pass(x, y, k, batch=500)
    assert _rel(metrics.nc1(fast), ref) < 1e-5
    assert proj.memory_bytes() < 1e-3 * d * d * 8
