"""Accuracy of the core engine against ground truth, printed (the figures of the core issue's "Show").

1. An exact simplex ETF (K=10, D=64, r=3, W = means/r): every nc1/nc2/nc3 metric is ~0.
2. ETF means + N(0, σ²I) noise: nc1 vs the closed form σ²(K−1)²/(K r²).
3. Σ_W vs scikit-learn's LDA within-class covariance; Σ_B vs total − within covariance.
4. Strong collapse in float32 (means ~1e2 + offset 50, within-class std 1e-3, K=10, D=64), streamed in
   batches of 256: nc1 vs a float64 two-pass reference, beside the naive per-class E[hhᵀ] − μμᵀ in float32.

Run: ``python benchmarks/accuracy_core.py``
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.covariance import empirical_covariance
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from nclens.core.geometry import simplex_etf
from nclens.core.metrics import compute_metrics, nc1, sigma_b, sigma_w
from nclens.core.stats import ClassStats
from nclens.data import expected_nc1, gaussian_features


def two_pass_nc1(x: np.ndarray, y: np.ndarray) -> float:
    """Direct float64 two-pass nc1 with a pseudo-inverse (the reference)."""
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    sw = centred.T @ centred / len(x)
    mbar = means - means.mean(0)
    sb = mbar.T @ mbar / len(classes)
    return float(np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / len(classes))


def main() -> None:
    k, d = 10, 64
    means = simplex_etf(k, d, radius=3.0, seed=1)
    y = torch.arange(200) % k
    exact = compute_metrics(ClassStats(k).update(means[y], y), weight=means / 3)
    worst = max(abs(v) for name, v in exact.items() if name != "effective_rank")
    print(f"1. exact simplex ETF: max |nc1, nc2_*, nc3_*| = {worst:.2e}")

    for kk, sigma, radius in [(4, 0.3, 2.0), (10, 0.05, 1.0)]:
        g = gaussian_features(kk, 32, 4000, radius=radius, sigma=sigma, seed=7, dtype=torch.float64)
        value = nc1(ClassStats(kk).update(g.features, g.labels))
        print(f"2. K={kk} σ={sigma} r={radius}: nc1 = {value:.5f}, closed form {expected_nc1(kk, radius, sigma):.5f}")

    gen = torch.Generator().manual_seed(3)
    y = torch.arange(800) % 4
    centres = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    x = torch.randn(800, 6, generator=gen, dtype=torch.float64) + centres[y]
    stats = ClassStats(4).update(x, y)
    lda = LinearDiscriminantAnalysis(solver="eigen", store_covariance=True).fit(x.numpy(), y.numpy())
    within = np.abs(sigma_w(stats).numpy() - lda.covariance_).max() / np.abs(lda.covariance_).max()
    between = np.abs(sigma_b(stats).numpy() - (empirical_covariance(x.numpy()) - lda.covariance_)).max()
    print(f"3. Σ_W vs sklearn LDA: max rel diff {within:.1e}; Σ_B vs total − within: max abs diff {between:.1e}")

    data = gaussian_features(10, 64, 300, radius=100.0, sigma=1e-3, offset=50.0, seed=2, dtype=torch.float32)
    x32, y = data.features, data.labels
    streamed = ClassStats(10)
    for i in range(0, x32.shape[0], 256):
        streamed.update(x32[i : i + 256], y[i : i + 256])
    ref = two_pass_nc1(x32.double().numpy(), y.numpy())
    naive_sw = torch.zeros(64, 64)
    for c in range(10):
        xc = x32[y == c]
        mu = xc.mean(0)
        naive_sw += xc.T @ xc - xc.shape[0] * torch.outer(mu, mu)
    naive_sw /= x32.shape[0]
    mbar = np.stack([x32[y == c].double().numpy().mean(0) for c in range(10)])
    mbar -= mbar.mean(0)
    naive = float(np.trace(naive_sw.double().numpy() @ np.linalg.pinv(mbar.T @ mbar / 10, rcond=1e-10)) / 10)
    ours = nc1(streamed)
    print(f"4. float32 strong collapse: reference nc1 {ref:.6e}; nclens {ours:.6e} "
          f"(rel err {abs(ours - ref) / ref:.1e}); naive E[hhᵀ] − μμᵀ in float32: rel err {abs(naive - ref) / ref:.1e}")


if __name__ == "__main__":
    main()
