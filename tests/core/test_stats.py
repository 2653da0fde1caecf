"""ClassStats: streaming = batch, merge = one pass, state round trip, numerics, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sklearn.covariance import empirical_covariance
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from nclens.core.metrics import sigma_b, sigma_w
from nclens.core.stats import ClassStats
from nclens.data import gaussian_features
from reference import class_moments


def _random(n=600, d=7, k=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 2.0 + 3.0 * y[:, None]
    return x.to(dtype), y


def _assert_same(a: ClassStats, b: ClassStats, rtol=1e-12, atol=1e-12):
    assert torch.equal(a.label_values, b.label_values)
    for name in ("counts", "sums", "class_sq", "scatter_w"):
        ta, tb = getattr(a, name), getattr(b, name)
        if ta is None:
            assert tb is None
            continue
        torch.testing.assert_close(ta, tb, rtol=rtol, atol=atol)


def test_moments_match_two_pass_reference():
    x, y = _random()
    s = ClassStats(num_classes=4).update(x, y)
    classes, counts, means, sw, _ = class_moments(x.numpy(), y.numpy())
    np.testing.assert_allclose(s.counts.numpy(), counts)
    np.testing.assert_allclose(s.means.numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(sigma_w(s).numpy(), sw, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 7, 64, 599])
def test_streaming_equals_batch(batch):
    x, y = _random()
    whole = ClassStats(num_classes=4).update(x, y)
    stream = ClassStats(num_classes=4)
    for i in range(0, x.shape[0], batch):
        stream.update(x[i : i + batch], y[i : i + batch])
    _assert_same(whole, stream, rtol=1e-10, atol=1e-9)


def test_merging_shards_equals_one_pass():
    x, y = _random(n=900)
    whole = ClassStats(num_classes=4).update(x, y)
    shards = [ClassStats(num_classes=4).update(x[i::3], y[i::3]) for i in range(3)]
    merged = shards[0].clone().merge(shards[1]).merge(shards[2])
    _assert_same(whole, merged, rtol=1e-10, atol=1e-9)
    assert torch.equal((shards[0] + shards[1]).counts, shards[0].counts + shards[1].counts)


def test_arbitrary_labels_growing_index_is_order_independent():
    x, y = _random(n=500, k=5)
    values = torch.tensor([42, 3, 7, -1, 100])
    labels = values[y]
    one = ClassStats().update(x, labels)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(1))
    other = ClassStats()
    for i in range(0, 500, 37):  # different batching and order: new labels appear mid-stream
        other.update(x[perm[i : i + 37]], labels[perm[i : i + 37]])
    assert one.label_values.tolist() == [-1, 3, 7, 42, 100]
    _assert_same(one, other, rtol=1e-10, atol=1e-9)
    # sharded with disjoint label sets, merged
    a = ClassStats().update(x[labels < 10], labels[labels < 10])
    b = ClassStats().update(x[labels >= 10], labels[labels >= 10])
    _assert_same(one, b.merge(a), rtol=1e-10, atol=1e-9)
    # equals fixed-K statistics under the sorted relabelling
    fixed = ClassStats(num_classes=5).update(x, torch.searchsorted(one.label_values, labels))
    torch.testing.assert_close(fixed.scatter_w, one.scatter_w, rtol=1e-12, atol=1e-12)


def test_state_dict_round_trip_weights_only():
    x, y = _random()
    s = ClassStats().update(x, y * 3)
    buffer = io.BytesIO()
    torch.save(s.state_dict(), buffer)
    buffer.seek(0)
    restored = ClassStats.from_state_dict(torch.load(buffer, weights_only=True))
    _assert_same(s, restored, rtol=0, atol=0)
    # resumed = uninterrupted
    x2, y2 = _random(seed=5)
    restored.update(x2, y2 * 3)
    _assert_same(s.clone().update(x2, y2 * 3), restored, rtol=1e-12, atol=1e-10)


def test_trace_mode_keeps_no_scatter():
    x, y = _random()
    full = ClassStats(num_classes=4).update(x, y)
    trace = ClassStats(num_classes=4, scatter="trace").update(x, y)
    assert trace.scatter_w is None
    torch.testing.assert_close(trace.class_sq, full.class_sq)
    assert trace.memory_bytes() < full.memory_bytes()


def test_scatter_matches_sklearn_lda():
    """Σ_W = LDA's within-class covariance (priors n_c/N); Σ_B = total − within on balanced classes."""
    g = torch.Generator().manual_seed(3)
    y = torch.arange(800) % 4
    x = torch.randn(800, 6, generator=g, dtype=torch.float64) + torch.randn(4, 6, generator=g, dtype=torch.float64)[y]
    s = ClassStats(num_classes=4).update(x, y)
    lda = LinearDiscriminantAnalysis(solver="eigen", store_covariance=True).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(sigma_w(s).numpy(), lda.covariance_, rtol=1e-10, atol=1e-12)
    between = empirical_covariance(x.numpy()) - lda.covariance_
    np.testing.assert_allclose(sigma_b(s, weighted=True).numpy(), between, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sigma_b(s).numpy(), between, rtol=1e-9, atol=1e-12)  # balanced: same μ_G


def test_float32_strong_collapse_is_accurate_and_naive_formula_is_not():
    """Means ~1e2, within-class std 1e-3, K=10, D=64, float32 input (the strong-collapse regression test)."""
    from nclens.core.metrics import nc1

    data = gaussian_features(10, 64, 300, radius=100.0, sigma=1e-3, offset=50.0, seed=2, dtype=torch.float32)
    x32, y = data.features, data.labels
    stream = ClassStats(num_classes=10)
    for i in range(0, x32.shape[0], 256):
        stream.update(x32[i : i + 256], y[i : i + 256])
    # float64 two-pass reference on the same float32 values
    x64 = x32.double().numpy()
    _, _, means, sw, mbar = class_moments(x64, y.numpy())
    sb = mbar.T @ mbar / 10
    ref = np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / 10
    assert abs(nc1(stream) - ref) / ref < 1e-3
    # the naive one-pass E[hhᵀ] − μμᵀ in float32 fails the same check
    naive_sw = torch.zeros(64, 64, dtype=torch.float32)
    for c in range(10):
        xc = x32[y == c]
        mu = xc.mean(0)
        naive_sw += (xc.T @ xc) - xc.shape[0] * torch.outer(mu, mu)
    naive_sw /= x32.shape[0]
    naive = np.trace(naive_sw.double().numpy() @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / 10
    assert abs(naive - ref) / ref > 1e-3


def test_mask_selects_samples():
    x, y = _random()
    mask = torch.arange(x.shape[0]) % 2 == 0
    a = ClassStats(num_classes=4).update(x, y, mask=mask)
    b = ClassStats(num_classes=4).update(x[mask], y[mask])
    _assert_same(a, b)


@pytest.mark.parametrize(
    "features, labels, match",
    [
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), torch.tensor([0, 1]), "NaN or Inf"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), torch.tensor([0, 1]), "NaN or Inf"),
        (torch.ones(3, 2), torch.tensor([0.0, 1.5, 1.0]), "non-integer"),
        (torch.ones(3, 2), torch.tensor([0, 1]), "has 2 entries"),
        (torch.ones(3), torch.tensor([0, 1, 1]), "2-D"),
        (torch.ones(3, 2), torch.tensor([0, 1, 5]), r"labels must lie in \[0, 3\]"),
    ],
)
def test_bad_input_errors(features, labels, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ClassStats(num_classes=4).update(features, labels)


def test_dimension_mismatch_and_memory_guard():
    s = ClassStats().update(torch.ones(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="dimension 4, expected D=3"):
        s.update(torch.ones(2, 4), torch.tensor([0, 1]))
    with pytest.raises(MemoryError, match="scatter='trace'"):
        ClassStats(max_scatter_bytes=1000).update(torch.ones(2, 20), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="cannot merge"):
        ClassStats(num_classes=2).merge(ClassStats(num_classes=3))


def test_large_allocation_is_stated_up_front(monkeypatch):
    import nclens.core.stats as stats_module

    monkeypatch.setattr(stats_module, "NOTE_BYTES", 1000)
    with pytest.warns(ResourceWarning, match=r"allocating .* GiB of float64 statistics .*D=20"):
        ClassStats(num_classes=2).update(torch.ones(2, 20), torch.tensor([0, 1]))


def test_fast_sums_agree_with_exact_sums_to_float32_precision():
    """Default (exact_sums=False): within-batch float32 sums; means agree to float32 precision of the spread."""
    data = gaussian_features(6, 32, 400, radius=3.0, sigma=0.5, offset=2.0, seed=4, dtype=torch.float32)
    exact, fast = ClassStats(num_classes=6, exact_sums=True), ClassStats(num_classes=6)
    for i in range(0, data.features.shape[0], 128):
        exact.update(data.features[i : i + 128], data.labels[i : i + 128])
        fast.update(data.features[i : i + 128], data.labels[i : i + 128])
    assert not torch.equal(exact.means, fast.means)  # the two paths really differ ...
    torch.testing.assert_close(fast.means, exact.means, rtol=0, atol=1e-6 * 0.5)  # ... by < 1e-6 σ
    torch.testing.assert_close(fast.class_sq, exact.class_sq, rtol=1e-6, atol=0)
    torch.testing.assert_close(fast.scatter_w, exact.scatter_w, rtol=1e-5, atol=1e-5)
    assert ClassStats.from_state_dict(fast.state_dict()).exact_sums is False
