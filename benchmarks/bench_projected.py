"""Exact nc1 without a D×D matrix: the projected scatter against the full one and a float64 reference.

Prints, side by side in one run:

1. at D = 2,000 (both fit): |nc1_projected − nc1_full| / nc1_full for float64 features, through
   ``measure(scatter=...)`` on a Linear probe;
2. at D = 40,000, K = 10 (a D×D float64 scatter would take 12.8 GB): the projected nc1 through
   ``measure_feature_file(scatter="projected")`` against an independent float64 reference (numpy: an
   orthonormal basis Q of the centred means by QR, Qᵀ Σ_W Q and Qᵀ Σ_B Q class by class, pinv of the
   K×K matrix), the statistics' state in memory against D²·8, and the time of pass 1 and pass 2.

Run: ``python benchmarks/bench_projected.py [--n 1000] [--dim 40000]`` (single thread by default).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def reference_nc1(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Tr(Σ_W Σ_B⁺)/K in float64 without a D×D matrix: everything in the basis of span(μ_c − μ_G)."""
    means = np.stack([x[y == c].mean(0) for c in range(k)])  # (K, D)
    centred = means - means.mean(0)
    q, _ = np.linalg.qr(centred.T)  # (D, K) orthonormal; the span has dimension K−1 (one column is noise)
    proj_b = (centred @ q).T @ (centred @ q) / k  # Qᵀ Σ_B Q (K×K)
    proj_w = np.zeros((k, k))
    for c in range(k):
        a = (x[y == c] - means[c]) @ q  # (n_c, K)
        proj_w += a.T @ a
    proj_w /= x.shape[0]  # Qᵀ Σ_W Q
    return float(np.trace(proj_w @ np.linalg.pinv(proj_b, rcond=1e-10, hermitian=True)) / k)


def features(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.standard_normal((k, d))[y] * 0.5 + rng.standard_normal((n, d))
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=40_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from torch import nn

    from nclens.core.features import FeatureFile, measure_feature_file
    from nclens.core.measure import measure
    from nclens.core.stats import ClassStats, estimate_memory

    k = 10
    # 1. both fit: full vs projected through measure()
    x, y = features(2000, 2000, k, 0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    probe = nn.Sequential(nn.Identity(), nn.Linear(2000, k)).double()
    loader = [(xt[i:i + 250], yt[i:i + 250]) for i in range(0, 2000, 250)]
    full = measure(probe, loader, ["1"], num_classes=k, progress=False, scatter="full").metrics["1"]["nc1"]
    proj = measure(probe, loader, ["1"], num_classes=k, progress=False, scatter="projected").metrics["1"]["nc1"]
    print(f"D=2,000 N=2,000 K=10 float64: nc1 full {full:.15g}  projected {proj:.15g}  "
          f"relative difference {abs(proj - full) / full:.2e}")

    # 2. D = 40,000: projected vs the numpy reference, memory, pass times
    x, y = features(args.n, args.dim, k, 1)
    started = time.perf_counter()
    ref = reference_nc1(x, y, k)
    ref_s = time.perf_counter() - started
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    stats = ClassStats(k, scatter="projected")
    started = time.perf_counter()
    for i in range(0, args.n, 250):
        stats.update(xt[i:i + 250], yt[i:i + 250])
    pass1 = time.perf_counter() - started
    started = time.perf_counter()
    stats.begin_projection()
    for i in range(0, args.n, 250):
        stats.update(xt[i:i + 250], yt[i:i + 250])
    stats.end_projection()
    pass2 = time.perf_counter() - started
    from nclens.core.metrics import nc1

    value = nc1(stats)
    file_value, info = measure_feature_file(FeatureFile(xt, yt), scatter="projected", batch_size=250)
    state = estimate_memory(args.dim, k, "projected").state
    print(f"D={args.dim:,} N={args.n:,} K=10 float64: nc1 projected {value:.15g}  reference {ref:.15g}  "
          f"relative difference {abs(value - ref) / ref:.2e}  (nclens measure path: {file_value['nc1']:.15g})")
    print(f"  statistics state {state / 2**20:.1f} MiB vs a D×D float64 scatter {args.dim ** 2 * 8 / 2**30:.1f} GiB "
          f"(ratio {args.dim ** 2 * 8 / state:.0f}x); features in memory {x.nbytes / 2**20:.0f} MiB")
    print(f"  pass 1 (means) {pass1:.2f} s, pass 2 (projected scatter) {pass2:.2f} s, "
          f"measure_feature_file second pass {info['projection_pass_seconds']:.2f} s, numpy reference {ref_s:.2f} s")


if __name__ == "__main__":
    main()
