"""Monte Carlo studies of the estimators the bounds are compared with (the domain logic of ``nclens bounds``).

* :func:`sinusoid_monte_carlo` — MSE, bias and outlier rate of the periodogram-peak MLE of a complex
  sinusoid's frequency, in vectorised batches of trials (errors wrapped to [−π, π));
* :func:`sinusoid_study` — every frequency bound at one SNR beside the MLE's Monte Carlo MSE;
* :func:`covariance_study` — Fisher matrix, CRB and nuisance CRB of an AR(1) Toeplitz covariance, beside the
  concentrated-likelihood MLE's error and the Monte Carlo Gram of its scores;
* :func:`sweep_point` — one SNR of the bounds-vs-SNR sweep (bounds + MLE), the cell of the ``bounds-sweep`` kind.

Every function takes a ``numpy.random.Generator`` (seeded by the caller) and an ``advance(n)`` callback
for a progress bar.

Example:
    >>> import numpy as np
    >>> mc = sinusoid_monte_carlo(16, 20.0, 400, rng=np.random.default_rng(0))
    >>> mc["outlier_rate"]
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from nclens.bounds import quadratic as B

__all__ = ["BATCH", "sinusoid_monte_carlo", "sinusoid_study", "covariance_study", "sweep_point"]

#: Monte Carlo trials per vectorised batch (one progress-bar step).
BATCH = 2000

Advance = Callable[[int], None]


def _noop(n: int = 1) -> None:
    return None


def _check_trials(trials: int) -> int:
    if isinstance(trials, bool) or int(trials) != trials or trials < 0:
        raise ValueError(f"trials must be a non-negative integer, got {trials!r}")
    return int(trials)


def sinusoid_monte_carlo(
    n_samples: int, snr_db: float, trials: int, *, omega: float = 1.0, phase: float = 0.5,
    rng: np.random.Generator, advance: Advance = _noop,
) -> dict[str, float]:
    """MSE of the periodogram-peak MLE of ω over ``trials`` records (batches of :data:`BATCH`)."""
    trials = _check_trials(trials)
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    sigma = math.sqrt(10.0 ** (-snr_db / 10.0))
    mu = B.sinusoid_mean([1.0, phase, omega], n_samples)
    errs = []
    done = 0
    with B.blas_single_thread():
        while done < trials:
            k = min(BATCH, trials - done)
            noise = rng.standard_normal((k, n_samples)) + 1j * rng.standard_normal((k, n_samples))
            w = noise * (sigma / math.sqrt(2))
            errs.append(B.wrap_angle(B.sinusoid_mle_frequency(mu[None, :] + w) - omega))
            done += k
            advance(k)
    if not errs:
        return {"mse": float("nan"), "mse_stderr": float("nan"), "bias": float("nan"), "outlier_rate": float("nan")}
    e = np.concatenate(errs)
    sq = e**2
    return {
        "mse": float(sq.mean()),
        "mse_stderr": float(sq.std(ddof=1) / math.sqrt(e.size)) if e.size > 1 else float("nan"),
        "bias": float(e.mean()),
        "outlier_rate": float(np.mean(np.abs(e) > 2 * math.pi / n_samples)),
    }


def sinusoid_study(
    n_samples: int, snr_db: float, trials: int, *, omega: float = 1.0, phase: float = 0.5, per_bin: int = 4,
    rng: np.random.Generator, advance: Advance = _noop,
) -> dict[str, Any]:
    """Frequency bounds (CRB, known-phase CRB, Barankin, HCR) at one SNR and, with ``trials``, the MLE's MSE."""
    res = B.sinusoid_bounds(n_samples, snr_db, omega=omega, phase=phase, per_bin=per_bin)
    out: dict[str, Any] = {
        "model": "y_n = a exp(i(omega n + phi)) + w_n, w ~ CN(0, sigma^2), SNR = a^2/sigma^2, a = 1",
        **res,
    }
    if trials > 0:
        mc = sinusoid_monte_carlo(n_samples, snr_db, trials, omega=omega, phase=phase, rng=rng, advance=advance)
        out.update(
            mle_mse_frequency=mc["mse"], mle_mse_frequency_stderr=mc["mse_stderr"], mle_bias_frequency=mc["bias"],
            mle_outlier_rate=mc["outlier_rate"],
            mle="zero-padded FFT periodogram peak (8N, power of two) + 6 vectorised Newton steps on |A(omega)|^2",
        )
    return out


def covariance_study(
    dim: int, snapshots: int, rho: float, variance: float, trials: int, *, rng: np.random.Generator,
    advance: Advance = _noop,
) -> dict[str, Any]:
    """Fisher matrix, CRB and nuisance CRB of CN(0, R), R_ij = σ² ρ^|i−j| (AR(1)); with ``trials`` the MLE's error."""
    trials = _check_trials(trials)
    if isinstance(snapshots, bool) or int(snapshots) != snapshots or snapshots < 1:
        raise ValueError(f"snapshots must be a positive integer, got {snapshots!r}")
    R = B.ar1_covariance(dim, rho, variance)
    dR = B.ar1_covariance_derivatives(dim, rho, variance)
    J = B.cn_cov_fisher(R, dR, snapshots=snapshots)
    crb = np.linalg.inv(J)
    out: dict[str, Any] = {
        "model": "M i.i.d. snapshots y ~ CN(0, R), R_ij = sigma^2 rho^|i-j| (AR(1) Toeplitz); theta = (rho, sigma^2)",
        "dim": dim, "snapshots": snapshots, "theta": {"rho": rho, "variance": variance}, "fisher": J, "crb": crb,
        "crb_rho": float(B.nuisance_crb(J, [0])[0, 0]),
        "crb_rho_projection": float(B.cn_cov_nuisance_crb(R, dR, [0], snapshots=snapshots)[0, 0]),
        "crb_rho_known_variance": float(1.0 / J[0, 0]),
        "crb_variance": float(crb[1, 1]),
        "crb_variance_known_rho": float(1.0 / J[1, 1]),
        "score_angle_deg": float(np.degrees(np.arccos(abs(J[0, 1]) / math.sqrt(J[0, 0] * J[1, 1])))),
    }
    if trials > 0:
        rhos, vars_, scores = [], [], []
        batch = max(1, BATCH // max(1, snapshots // 8))
        done = 0
        with B.blas_single_thread():
            while done < trials:
                k = min(batch, trials - done)
                y = B.sample_cn(np.zeros(dim), R, (k, snapshots), rng)
                r_hat, v_hat = B.ar1_mle(y)
                rhos.append(r_hat)
                vars_.append(v_hat)
                scores.append(B.cn_cov_scores(y.reshape(-1, dim), R, dR).reshape(k, snapshots, 2).sum(axis=1))
                done += k
                advance(k)
        er = np.concatenate(rhos) - rho
        ev = np.concatenate(vars_) - variance
        out.update(
            mle_mse_rho=float(np.mean(er**2)), mle_bias_rho=float(er.mean()), mle_mse_variance=float(np.mean(ev**2)),
            mle_bias_variance=float(ev.mean()), mle_error_covariance=np.cov(np.stack([er, ev])),
            fisher_monte_carlo=B.gram(np.concatenate(scores)),
            mle="concentrated likelihood (tridiagonal AR(1) inverse), grid |rho|<0.999 + golden section",
        )
    return out


def sweep_point(
    n_samples: int, snr_db: float, trials: int, *, omega: float, phase: float, per_bin: int,
    rng: np.random.Generator, advance: Advance = _noop,
) -> dict[str, Any]:
    """One SNR of the sweep: every bound and (``trials`` > 0) the MLE's MSE and its standard error."""
    res = B.sinusoid_bounds(n_samples, float(snr_db), omega=omega, phase=phase, per_bin=per_bin)
    point = {"snr_db": float(snr_db), **{k: res[k] for k in ("crb_frequency", "crb_frequency_known_phase",
                                                               "barankin_frequency", "hcr_frequency",
                                                               "hcr_argmax_delta")}}
    if trials > 0:
        mc = sinusoid_monte_carlo(n_samples, float(snr_db), trials, omega=omega, phase=phase, rng=rng,
                                  advance=advance)
        point.update(mle_mse_frequency=mc["mse"], mle_mse_frequency_stderr=mc["mse_stderr"])
    else:
        advance(1)
    return point
