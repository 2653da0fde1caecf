"""Privacy accounting of full-batch NoisyGD: the Gaussian mechanism's Rényi DP, converted to (ε, δ).

One NoisyGD step releases Σ_i clip_C(g_i) + N(0, σ²C² I): a Gaussian mechanism of L2 sensitivity C
and noise multiplier σ, whose Rényi DP of order α is α/(2σ²) (Mironov 2017, Prop. 7). T steps
compose additively: RDP_α = T α/(2σ²). The (ε, δ) guarantee is

    ε(δ) = min_α [ RDP_α + log((α−1)/α) − (log δ + log α)/(α − 1) ]

(Balle, Barthe, Gaboardi, Hsu & Sato 2020, Thm. 21), minimised over the same grid of orders as
Opacus' ``RDPAccountant``, so the two agree exactly for sampling rate 1 — which the tests check.
This module needs no Opacus: the layer-peeled simulator reports ε without the ``privacy`` extra.

Example:
    >>> from nclens.privacy import gaussian_rdp, noisy_gd_epsilon
    >>> gaussian_rdp(2.0, noise_multiplier=1.0, steps=3)          # 3 · 2 / (2 · 1²)
    3.0
    >>> round(noisy_gd_epsilon(5.0, steps=1, delta=1e-5), 3)
    0.795
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["DEFAULT_ORDERS", "gaussian_rdp", "rdp_to_epsilon", "noisy_gd_epsilon", "noisy_gd_noise_multiplier"]

#: The RDP orders of Opacus' RDPAccountant (1.1 … 10.9 in steps of 0.1, then 12 … 63).
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(12, 64)])


def _check_sigma_steps(noise_multiplier: float, steps: int) -> None:
    if not (isinstance(noise_multiplier, (int, float)) and math.isfinite(noise_multiplier)) or noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")


def gaussian_rdp(order: float, *, noise_multiplier: float, steps: int = 1) -> float:
    """RDP of ``steps`` compositions of the Gaussian mechanism: T α/(2σ²) (Mironov 2017).

    Args:
        order: the Rényi order α > 1.
        noise_multiplier: σ = noise std / L2 sensitivity (0 means no privacy: +inf).
        steps: T, the number of full-batch steps.
    """
    _check_sigma_steps(noise_multiplier, steps)
    if not order > 1:
        raise ValueError(f"the Rényi order must be > 1, got {order!r}")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    return steps * order / (2.0 * noise_multiplier**2)


def rdp_to_epsilon(
    orders: np.ndarray | list[float], rdp: np.ndarray | list[float], delta: float
) -> tuple[float, float]:
    """Convert RDP curves to (ε, best order) at ``delta`` (Balle et al. 2020, Thm. 21).

    ε = min_α [RDP_α + log((α−1)/α) − (log δ + log α)/(α − 1)], clipped at 0.
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if a.shape != r.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"orders and rdp must be 1-D of equal length, got {a.shape} and {r.shape}")
    if bool((a <= 1).any()):
        raise ValueError("every Rényi order must be > 1")
    with np.errstate(invalid="ignore"):
        eps = r - (np.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    eps = np.where(np.isnan(eps), np.inf, eps)
    best = int(np.argmin(eps))
    return max(0.0, float(eps[best])), float(a[best])


def noisy_gd_epsilon(
    noise_multiplier: float, *, steps: int, delta: float, orders: tuple[float, ...] = DEFAULT_ORDERS
) -> float:
    """ε at δ of T full-batch NoisyGD steps (sampling rate 1) with noise multiplier σ.

    ε = min_α [T α/(2σ²) + log((α−1)/α) − (log δ + log α)/(α − 1)]; +inf for σ = 0, 0 for T = 0.
    """
    _check_sigma_steps(noise_multiplier, steps)
    if steps == 0:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    rdp = [gaussian_rdp(a, noise_multiplier=noise_multiplier, steps=steps) for a in orders]
    return rdp_to_epsilon(list(orders), rdp, delta)[0]


def noisy_gd_noise_multiplier(
    target_epsilon: float, *, steps: int, delta: float, orders: tuple[float, ...] = DEFAULT_ORDERS,
    tolerance: float = 1e-6,
) -> float:
    """The smallest σ (to ``tolerance`` relative) whose T full-batch steps spend at most ``target_epsilon`` at δ.

    ε(σ) of :func:`noisy_gd_epsilon` decreases in σ; σ is found by bisection on a log scale.

    Example:
        >>> sigma = noisy_gd_noise_multiplier(1.0, steps=10, delta=1e-5)
        >>> noisy_gd_epsilon(sigma, steps=10, delta=1e-5) <= 1.0 < noisy_gd_epsilon(0.99 * sigma, steps=10, delta=1e-5)
        True
    """
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a positive finite number, got {target_epsilon!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")

    def eps(sigma: float) -> float:
        return noisy_gd_epsilon(sigma, steps=steps, delta=delta, orders=orders)

    lo, hi = 1e-3, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2.0
        if hi > 1e8:
            raise ValueError(f"no noise multiplier below 1e8 reaches epsilon={target_epsilon!r} in {steps} steps")
    while hi / lo - 1.0 > tolerance:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps(mid) > target_epsilon else (lo, mid)
    return hi
