"""Independent float64 NumPy references for the NC metrics (direct formulas, loops allowed)."""

from __future__ import annotations

import numpy as np


def etf(k: int) -> np.ndarray:
    return (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)


def etf_dist(g: np.ndarray) -> float:
    return float(np.linalg.norm(g / np.linalg.norm(g) - etf(g.shape[0])))


def class_moments(x: np.ndarray, y: np.ndarray):
    """classes, counts, means, Σ_W (two-pass), centred means M̄ (mean of class means)."""
    x = np.asarray(x, dtype=np.float64)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    counts = np.array([(y == c).sum() for c in classes], dtype=np.float64)
    centred = x - means[np.searchsorted(classes, y)]
    sigma_w = centred.T @ centred / x.shape[0]
    mbar = means - means.mean(0)
    return classes, counts, means, sigma_w, mbar


def reference_metrics(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, b: np.ndarray | None = None):
    classes, counts, means, sigma_w, mbar = class_moments(x, y)
    k = len(classes)
    sigma_b = mbar.T @ mbar / k
    out = {
        "nc1": float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10, hermitian=True)) / k),
        "nc1_trace": float(np.trace(sigma_w) / np.trace(sigma_b)),
        "within_share": float(np.trace(sigma_w) / (np.trace(sigma_w) + np.trace(sigma_b))),
    }
    x64 = np.asarray(x, dtype=np.float64)
    var = np.array([((x64[y == c] - means[i]) ** 2).sum(1).mean() for i, c in enumerate(classes)])
    pairs = [(i, j) for i in range(k) for j in range(k) if i != j]
    out["cdnv"] = float(
        np.mean([(var[i] + var[j]) / (2 * np.sum((means[i] - means[j]) ** 2)) for i, j in pairs])
    )
    norms = np.linalg.norm(mbar, axis=1)
    out["nc2_equinorm"] = float(norms.std() / norms.mean())
    cos = (mbar @ mbar.T) / np.outer(norms, norms)
    out["nc2_equiangular"] = float(np.mean([abs(cos[i, j] + 1 / (k - 1)) for i, j in pairs]))
    out["nc2_etf"] = etf_dist(mbar @ mbar.T)
    if w is not None:
        w = np.asarray(w, dtype=np.float64)
        wn = np.linalg.norm(w, axis=1)
        out["nc2_equinorm_w"] = float(wn.std() / wn.mean())
        wcos = (w @ w.T) / np.outer(wn, wn)
        out["nc2_equiangular_w"] = float(np.mean([abs(wcos[i, j] + 1 / (k - 1)) for i, j in pairs]))
        out["nc2_etf_w"] = etf_dist(w @ w.T)
        out["nc3_duality"] = float(np.sum((w.T / np.linalg.norm(w) - mbar.T / np.linalg.norm(mbar)) ** 2))
        out["nc3_etf"] = etf_dist(w @ mbar.T)
        logits = x64 @ w.T + (0 if b is None else np.asarray(b, dtype=np.float64))
        dists = ((x64[:, None, :] - means[None, :, :]) ** 2).sum(-1)
        out["nc4_ncc_mismatch"] = float(np.mean(logits.argmax(1) != dists.argmin(1)))
    return out


def float32_scatter_bound(centred: np.ndarray, means_y: np.ndarray, batch: int) -> np.ndarray:
    """Entrywise bound on |S_W(float32 engine) − S_W(float64 two-pass)| for float32 features.

    The engine forms c = fl32(h − s) on a float32 shift s with |s − μ| ≤ u|μ| (u = 2⁻²⁴), then sums
    the products c_d c_e over the rows of each batch in float32 (any order, blocked or FMA): by the
    standard inner-product bound (Higham, Accuracy and Stability, §3.1) each batch contributes at
    most γ_{B+2} Σ_i |c_id||c_ie|, γ_n = nu/(1 − nu), B the batch's rows (+2: rounding of c and of the
    product); the float64 accumulation and Chan's correction add O(u_64). Hence, elementwise,
    |ΔS_W| ≤ γ_{B+2} |C′|ᵀ|C′| with |C′| = |h − μ| + u|μ|: relative to the within-class spread and
    growing with the batch size, which is what float32 accumulation guarantees (the fixed 1e-6 of the
    largest entry was not: typical errors are u·√B, here B = 8,200 rows in one batch).
    """
    u = 2.0**-24
    n = batch + 2
    gamma = n * u / (1 - n * u)
    spread = np.abs(centred) + u * np.abs(means_y)  # (N, D)
    return gamma * spread.T @ spread
