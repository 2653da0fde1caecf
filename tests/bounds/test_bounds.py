"""Tests of nclens.bounds: quadratic covariance bounds as Gram matrices of projected scores.

Ground truths: closed-form Fisher/Barankin Gram matrices vs Monte Carlo Gram matrices of autograd scores,
textbook CRBs (Rife–Boorstyn sinusoid, Gaussian mean), the HCR of N(theta, sigma^2), the UMVUE of theta^2
(attains the order-2 Bhattacharyya bound), and estimators that attain their bounds in Monte Carlo.
"""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch

import nclens.bounds.quadratic as B

SEED = 20240601


def _rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(SEED + offset)


def _normalised_error(J_mc: np.ndarray, J: np.ndarray) -> float:
    d = np.sqrt(np.diag(J))
    return float(np.max(np.abs(J_mc - J) / np.outer(d, d)))


def _sinusoid_logp(N: int, sigma2: float):
    n = torch.arange(N, dtype=torch.float64)

    def logp(y: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        mu = th[0] * torch.exp(1j * (th[2] * n + th[1]))
        return -(y - mu).abs().pow(2).sum(-1) / sigma2 - N * math.log(math.pi * sigma2)

    return logp


def _ar1_torch(N: int, th: torch.Tensor) -> torch.Tensor:
    k = torch.arange(N, dtype=torch.float64)
    return th[1] * th[0] ** (k[:, None] - k[None, :]).abs()


def _cn_logp(y: torch.Tensor, mu: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    d = y - mu
    z = torch.linalg.solve(R.to(torch.complex128), d.T).T
    return -(d.conj() * z).sum(-1).real - torch.linalg.slogdet(R)[1] - y.shape[-1] * math.log(math.pi)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with B.blas_single_thread():
        yield


def test_docstring_examples_run() -> None:
    result = doctest.testmod(B, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 40 and result.failed == 0


# ---------------------------------------------------------------------------------------------- geometry


def test_projection_is_pythagorean_and_bound_is_its_gram() -> None:
    rng = _rng(1)
    n = 20000
    s = rng.standard_normal((n, 3)) + 1j * rng.standard_normal((n, 3))
    e = s @ np.array([[1.0, 0.5j], [0.2, -1.0], [0.0, 0.3]]) + 0.7 * (rng.standard_normal((n, 2)) + 0j)
    Pe = B.project(e, s)
    bound = B.projection_bound(e, s)
    np.testing.assert_allclose(B.gram(Pe), bound, atol=1e-10)
    np.testing.assert_allclose(B.gram(e), B.gram(Pe) + B.gram(e - Pe), atol=1e-10)
    assert np.all(np.linalg.eigvalsh(B.gram(e) - bound) > 0)
    # rescaling the scores (any invertible mixing) leaves the bound unchanged
    M = np.array([[2.0, 1.0, 0.0], [0.0, 1e3, 0.0], [1.0, 0.0, 1e-2]])
    np.testing.assert_allclose(B.projection_bound(e, s @ M), bound, rtol=1e-8, atol=1e-10)


def test_scaled_barankin_gram_matches_exponential_form() -> None:
    rng = _rng(2)
    D = rng.standard_normal((6, 4)) * 0.8
    K = D.T @ D
    scale = np.exp(-np.diag(K) / 2)
    np.testing.assert_allclose(B.scaled_barankin_gram(K), np.expm1(K) * np.outer(scale, scale), rtol=1e-12)
    huge = B.scaled_barankin_gram(np.array([[2000.0, 1990.0], [1990.0, 2000.0]]))
    assert (
        np.all(np.isfinite(huge))
        and abs(huge[0, 0] - 1.0) < 1e-12
        and abs(huge[0, 1] - math.exp(-10)) < 1e-15
    )


# ---------------------------------------------------------------------------------------------- closed forms vs MC


def test_cn_mean_fisher_equals_monte_carlo_gram_of_autograd_scores() -> None:
    N, snr, theta = 8, 2.0, np.array([1.0, 0.4, 0.9])
    sigma2 = 1.0 / snr
    R = sigma2 * np.eye(N)
    G = B.sinusoid_jacobian(theta, N)
    J = B.cn_mean_fisher(G, R)
    y = B.sample_cn(B.sinusoid_mean(theta, N), R, 100_000, _rng(3))
    s = B.fisher_scores(_sinusoid_logp(N, sigma2), y, theta)
    np.testing.assert_allclose(s, B.cn_mean_scores(y, B.sinusoid_mean(theta, N), G, R), rtol=1e-9, atol=1e-9)
    assert _normalised_error(B.gram(s), J) < 0.02
    # Euclidean geometry: J is the Gram matrix of the whitened columns (real inner product 2 Re(a^H b))
    W = B.real_stack(B.whiten(G, R))
    np.testing.assert_allclose(J, 2 * W.T @ W, rtol=1e-12, atol=1e-12 * J.max())


def test_cn_cov_fisher_equals_monte_carlo_gram_of_autograd_scores() -> None:
    N, rho, var = 5, 0.6, 1.5
    R = B.ar1_covariance(N, rho, var)
    dR = B.ar1_covariance_derivatives(N, rho, var)
    J = B.cn_cov_fisher(R, dR)
    Rinv = np.linalg.inv(R)
    np.testing.assert_allclose(J[0, 1], np.trace(Rinv @ dR[0] @ Rinv @ dR[1]), rtol=1e-12)
    A = B.cn_cov_whitened(R, dR)  # Frobenius geometry
    np.testing.assert_allclose(J, np.einsum("ikl,jkl->ij", A, A), rtol=1e-12)
    y = B.sample_cn(np.zeros(N), R, 100_000, _rng(4))
    yt = torch.as_tensor(y)

    def logp(yy: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        return _cn_logp(yy, torch.zeros(N, dtype=torch.complex128), _ar1_torch(N, th))

    s = B.fisher_scores(logp, yt, [rho, var])
    np.testing.assert_allclose(s, B.cn_cov_scores(y, R, dR), rtol=1e-8, atol=1e-8)
    assert _normalised_error(B.gram(s), J) < 0.02


def test_slepian_bangs_equals_monte_carlo_gram() -> None:
    N, M = 4, 3
    theta = np.array([0.8, 0.5, 1.2])  # (amplitude of a fixed complex direction, rho, sigma^2)
    v = np.exp(1j * 0.7 * np.arange(N))
    R = B.ar1_covariance(N, theta[1], theta[2])
    dR = np.concatenate([np.zeros((1, N, N)), B.ar1_covariance_derivatives(N, theta[1], theta[2])])
    G = np.stack([v, np.zeros(N), np.zeros(N)], axis=1)
    J = B.slepian_bangs_fisher(R, dR, G, snapshots=M)
    y = B.sample_cn(theta[0] * v, R, (60_000, M), _rng(5))
    vt = torch.as_tensor(v)

    def logp(yy: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        R_t = _ar1_torch(N, th[1:])
        flat = _cn_logp(yy.reshape(-1, N), th[0] * vt, R_t)
        return flat.reshape(yy.shape[0], M).sum(-1)

    s = B.fisher_scores(logp, y, theta)
    assert _normalised_error(B.gram(s), J) < 0.025


def test_barankin_gram_closed_form_equals_monte_carlo() -> None:
    N, snr, theta = 8, 0.25, np.array([1.0, 0.4, 0.9])
    sigma2 = 1.0 / snr
    R = sigma2 * np.eye(N)
    tps = theta + np.array([[0.0, 0.0, 0.04], [0.0, 0.0, -0.06], [0.1, 0.15, 0.03]])
    D = np.stack([B.sinusoid_mean(t, N) - B.sinusoid_mean(theta, N) for t in tps], axis=1)
    Jb = B.cn_mean_barankin_gram(D, R)
    assert np.max(np.diag(B.cn_mean_barankin_kernel(D, R))) < 0.6
    y = B.sample_cn(B.sinusoid_mean(theta, N), R, 200_000, _rng(6))
    s = B.barankin_scores(_sinusoid_logp(N, sigma2), y, theta, tps)
    assert abs(s.mean(axis=0)).max() < 0.01  # Barankin scores have zero mean
    np.testing.assert_allclose(B.gram(s), Jb, rtol=0.05, atol=0.005)


# ---------------------------------------------------------------------------------------------- nuisance


def test_sinusoid_crb_closed_forms_and_projection_geometry() -> None:
    for N, snr_db in [(8, 0.0), (32, 10.0), (101, -5.0)]:
        snr = 10 ** (snr_db / 10)
        b = B.sinusoid_bounds(N, snr_db, hcr_grid=256, per_bin=1)
        assert b["crb_frequency"] == pytest.approx(6 / (snr * N * (N**2 - 1)), rel=1e-9)
        n = np.arange(N)
        assert b["crb_frequency_known_phase"] == pytest.approx(1 / (2 * snr * np.sum(n**2)), rel=1e-9)
        G = B.sinusoid_jacobian([1.0, 0.5, 1.0], N)
        R = np.eye(N) / snr
        np.testing.assert_allclose(
            B.cn_mean_nuisance_crb(G, R, [2]), B.nuisance_crb(B.cn_mean_fisher(G, R), [2]), rtol=1e-9
        )
        ratio = b["crb_frequency"] / b["crb_frequency_known_phase"]
        assert ratio == pytest.approx(2 * (2 * N - 1) / (N + 1), rel=1e-9)


def test_nuisance_crb_dominates_with_equality_iff_orthogonal() -> None:
    rng = _rng(7)
    A = rng.standard_normal((5, 5))
    J = A @ A.T + 0.5 * np.eye(5)
    ess = [0, 1]
    gap = B.nuisance_crb(J, ess) - np.linalg.inv(J[:2, :2])
    assert np.linalg.eigvalsh(gap).min() > -1e-12 and np.linalg.eigvalsh(gap).max() > 1e-3
    J_orth = J.copy()
    J_orth[:2, 2:] = 0.0
    J_orth[2:, :2] = 0.0
    np.testing.assert_allclose(B.nuisance_crb(J_orth, ess), np.linalg.inv(J[:2, :2]), rtol=1e-12)
    # sinusoid with the phase referenced at the block centre: omega and phi scores orthogonal -> equality
    N, snr = 16, 3.0
    n0 = (N - 1) / 2
    G = B.sinusoid_jacobian([1.0, 0.2, 0.7], N)
    G[:, 2] = 1j * (np.arange(N) - n0) * G[:, 0]
    Jc = B.cn_mean_fisher(G, np.eye(N) / snr)
    assert abs(Jc[1, 2]) < 1e-9 * Jc[2, 2]
    assert B.nuisance_crb(Jc, [2])[0, 0] == pytest.approx(1 / Jc[2, 2], rel=1e-12)
    # Frobenius geometry of the covariance family matches the Schur complement
    R, dR = B.ar1_covariance(6, -0.3, 2.0), B.ar1_covariance_derivatives(6, -0.3, 2.0)
    np.testing.assert_allclose(
        B.cn_cov_nuisance_crb(R, dR, [0], snapshots=4),
        B.nuisance_crb(B.cn_cov_fisher(R, dR, snapshots=4), [0]),
        rtol=1e-9,
    )


def test_nuisance_crb_is_inverse_gram_of_projected_scores_monte_carlo() -> None:
    N, snr, theta = 8, 2.0, np.array([1.0, 0.3, 0.6])
    R = np.eye(N) / snr
    G = B.sinusoid_jacobian(theta, N)
    y = B.sample_cn(B.sinusoid_mean(theta, N), R, 100_000, _rng(8))
    s = B.cn_mean_scores(y, B.sinusoid_mean(theta, N), G, R)
    resid = s[:, 2:] - B.project(s[:, 2:], s[:, :2])
    crb_mc = 1.0 / B.gram(resid)[0, 0]
    assert crb_mc == pytest.approx(B.nuisance_crb(B.cn_mean_fisher(G, R), [2])[0, 0], rel=0.03)


# ---------------------------------------------------------------------------------------------- Barankin / HCR


def test_barankin_with_shrinking_test_points_tends_to_crb() -> None:
    N, snr, theta = 16, 4.0, np.array([1.0, 0.5, 1.0])
    R = np.eye(N) / snr
    J = B.cn_mean_fisher(B.sinusoid_jacobian(theta, N), R)
    crb = np.linalg.inv(J)
    errs = []
    for eps in [0.3, 0.03, 0.003, 0.0003]:
        steps = eps * np.sqrt(np.diag(crb))
        tps = theta + np.diag(steps)
        D = np.stack([B.sinusoid_mean(t, N) - B.sinusoid_mean(theta, N) for t in tps], axis=1)
        T = np.diag(steps)
        bound = B.quadratic_bound(T, B.cn_mean_barankin_gram(D, R))
        scaled = B.cn_mean_mixed_bound(R, deltas=D, barankin_cross=T)
        np.testing.assert_allclose(scaled, bound, rtol=1e-7)
        errs.append(np.max(np.abs(bound - crb) / np.sqrt(np.outer(np.diag(crb), np.diag(crb)))))
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert errs[-1] < 1e-5


def test_hcr_gaussian_mean_equals_sup_formula_and_tends_to_crb() -> None:
    n, sigma = 10, 2.0
    R = sigma**2 * np.eye(n)

    def curve(d: np.ndarray) -> np.ndarray:
        return B.cn_mean_hcr_curve(R, np.ones((n, 1)) * d[None, :], d, real=True)

    d = np.linspace(0.01, 3.0, 300)
    np.testing.assert_allclose(curve(d), d**2 / np.expm1(n * d**2 / sigma**2), rtol=1e-10)
    values = []
    for dmin in [0.5, 0.1, 0.01, 0.001]:
        v, arg = B.hammersley_chapman_robbins(curve, np.linspace(dmin, 3.0, 200))
        assert arg == pytest.approx(dmin)
        assert v == pytest.approx(dmin**2 / np.expm1(n * dmin**2 / sigma**2), rel=1e-10)
        values.append(v)
    assert all(a < b for a, b in zip(values, values[1:])) and values[-1] <= sigma**2 / n
    assert values[-1] == pytest.approx(sigma**2 / n, rel=1e-5)
    # the chi-square divergence in the denominator, by Monte Carlo of the Barankin score
    y = 1.0 + sigma * _rng(9).standard_normal((200_000, n))

    def logp(yy: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        return -((yy - th[0]) ** 2).sum(-1) / (2 * sigma**2)

    s = B.barankin_scores(logp, y, [1.0], [[1.2]])
    assert B.gram(s)[0, 0] == pytest.approx(np.expm1(n * 0.2**2 / sigma**2), rel=0.03)


def test_sinusoid_bounds_order_threshold_and_high_snr_limit() -> None:
    prev = None
    for snr_db in [-14.0, -10.0, -6.0, 10.0, 30.0, 80.0]:
        b = B.sinusoid_bounds(32, snr_db)
        crb, bar, hcr = b["crb_frequency"], b["barankin_frequency"], b["hcr_frequency"]
        assert np.isfinite([crb, bar, hcr]).all()
        assert bar >= hcr * (1 - 1e-9) and hcr >= crb * (1 - 1e-12)
        ratio = bar / crb
        if prev is not None:
            assert ratio <= prev * (1 + 1e-6)
        prev = ratio
        if snr_db >= 10:
            assert ratio == pytest.approx(1.0, abs=1e-4)
        if snr_db == -14.0:
            assert ratio > 100 and hcr / crb > 5
        offs = np.asarray(b["barankin_test_points"]["frequency_offsets"])
        assert np.all(np.abs(offs) < np.pi)


def test_threshold_helper() -> None:
    assert B.threshold_snr_db([3, 1, 2, 0], [1.0, 9.0, 1.5, 1.0], [1.0] * 4) == 2.0
    assert B.threshold_snr_db([0, 1], [5.0, 5.0], [1.0, 1.0]) is None


# ---------------------------------------------------------------------------------------------- estimators


def test_sample_mean_attains_crb_and_lies_in_score_span() -> None:
    n, sigma, theta = 10, 2.0, 1.0
    y = theta + sigma * _rng(10).standard_normal((100_000, n))

    def logp(yy: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        return -((yy - th[0]) ** 2).sum(-1) / (2 * sigma**2)

    s = B.fisher_scores(logp, y, [theta])
    e = y.mean(axis=1) - theta
    crb = sigma**2 / n
    assert B.gram(s)[0, 0] == pytest.approx(n / sigma**2, rel=0.02)
    assert np.mean(e**2) == pytest.approx(crb, rel=0.02)
    assert B.cross_gram(e, s)[0, 0] == pytest.approx(1.0, rel=0.01)  # T = I for an unbiased estimator
    resid = e[:, None] - B.project(e, s)
    assert B.gram(resid)[0, 0] < 1e-20  # e = (sigma^2/n) s: the error lies in span(s), bound attained
    assert B.projection_bound(e, s)[0, 0] == pytest.approx(np.mean(e**2), rel=1e-9)


def test_biased_estimator_enters_through_T() -> None:
    n, sigma, theta, c = 5, 1.0, 0.7, 0.6
    T = B.fisher_cross(lambda th: c * th, [theta])
    assert T.tolist() == [[pytest.approx(c)]]
    bound = B.quadratic_bound(T, np.array([[n / sigma**2]]))
    est = c * (theta + sigma * _rng(11).standard_normal((100_000, n))).mean(axis=1)
    assert np.var(est) == pytest.approx(bound[0, 0], rel=0.02)  # shrinkage estimator attains its bound
    np.testing.assert_allclose(
        B.barankin_cross(lambda th: c * th, [theta], [[1.0], [0.5]]), [[c * 0.3, -c * 0.2]]
    )


def test_bhattacharyya_closed_form_monte_carlo_and_umvue_of_theta_squared() -> None:
    n, sigma, theta = 4, 1.0, 0.5
    a = n / sigma**2
    Jb = B.bhattacharyya_gram(lambda s, t: torch.exp(a * s * t), 3)
    np.testing.assert_allclose(Jb, np.diag([a, 2 * a**2, 6 * a**3]), rtol=1e-12, atol=1e-12)
    y = theta + sigma * _rng(12).standard_normal((200_000, n))

    def logp(yy: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        return -((yy - th[0]) ** 2).sum(-1) / (2 * sigma**2)

    scores = B.bhattacharyya_scores(B.log_density_derivatives(logp, y, [theta], 2))
    assert _normalised_error(B.gram(scores), Jb[:2, :2]) < 0.02
    T = B.bhattacharyya_cross(lambda th: th**2, [theta], 2)  # g = theta^2: T = [2 theta, 2]
    bhat = B.quadratic_bound(T, Jb[:2, :2])[0, 0]
    crb = B.quadratic_bound(T[:, :1], Jb[:1, :1])[0, 0]
    assert bhat == pytest.approx(4 * theta**2 / a + 2 / a**2, rel=1e-12) and bhat > crb * 1.4
    umvue = y.mean(axis=1) ** 2 - sigma**2 / n
    assert np.var(umvue) == pytest.approx(bhat, rel=0.03)  # order-2 Bhattacharyya bound is attained


def test_sinusoid_mle_attains_crb_above_threshold_and_departs_below() -> None:
    N, omega, phase = 32, 1.0, 0.5
    mu = B.sinusoid_mean([1.0, phase, omega], N)
    for snr_db, lo, hi in [(10.0, 0.9, 1.12), (-10.0, 100.0, np.inf)]:
        sigma2 = 10 ** (-snr_db / 10)
        y = B.sample_cn(mu, sigma2 * np.eye(N), 4000, _rng(13))
        mse = np.mean(B.wrap_angle(B.sinusoid_mle_frequency(y) - omega) ** 2)
        assert lo < mse / B.sinusoid_crb_closed_form(N, 1 / sigma2)["crb_frequency"] < hi


def test_ar1_mle_matches_direct_optimisation_and_attains_crb() -> None:
    from scipy.optimize import minimize

    N, M, rho, var = 6, 64, 0.5, 1.0
    R = B.ar1_covariance(N, rho, var)
    y = B.sample_cn(np.zeros(N), R, (1500, M), _rng(14))
    r_hat, v_hat = B.ar1_mle(y)

    def nll(p: np.ndarray) -> float:
        Rp = B.ar1_covariance(N, float(np.tanh(p[0])), float(np.exp(p[1])))
        S = y[0].T @ y[0].conj() / M
        return float(np.linalg.slogdet(Rp)[1] + np.real(np.trace(np.linalg.solve(Rp, S))))

    best = minimize(
        nll, [np.arctanh(0.3), 0.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14}
    )
    assert r_hat[0] == pytest.approx(np.tanh(best.x[0]), abs=1e-5)
    assert v_hat[0] == pytest.approx(np.exp(best.x[1]), rel=1e-5)
    J = B.cn_cov_fisher(R, B.ar1_covariance_derivatives(N, rho, var), snapshots=M)
    ratio = np.mean((r_hat - rho) ** 2) / B.nuisance_crb(J, [0])[0, 0]
    assert 0.85 < ratio < 1.2


# ---------------------------------------------------------------------------------------------- errors and CLI


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: B.quadratic_bound(np.ones((1, 2)), np.eye(3)), "columns"),
        (lambda: B.quadratic_bound([1.0, 0.0], np.array([[1.0, 2.0], [0.0, 1.0]])), "Hermitian"),
        (lambda: B.nuisance_crb(np.eye(3), [3]), "essential"),
        (lambda: B.ar1_covariance(4, 1.0), "rho"),
        (lambda: B.sinusoid_bounds(1, 0.0), "n_samples"),
        (lambda: B.cn_mean_fisher(np.ones((2, 1)), np.array([[1.0, 2.0], [2.0, 1.0]])), "positive definite"),
        (lambda: B.cn_mean_barankin_gram(np.ones((2, 1)) * 30, np.eye(2)), "overflow"),
        (lambda: B.sinusoid_jacobian([-1.0, 0.0, 0.0], 4), "amplitude"),
        (lambda: B.gram(np.array([[np.nan]])), "non-finite"),
    ],
)
def test_bad_input_raises_clear_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_cli_commands_write_json_and_png(tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from nclens.cli.bounds import register

    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep "bounds" as a sub-command group
        pass

    runner = CliRunner()
    out = tmp_path / "s.json"
    r = runner.invoke(
        app,
        ["bounds", "sinusoid", "--samples", "16", "--snr-db", "10", "--trials", "500", "--json", str(out)],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    for key in [
        "crb_frequency",
        "crb_frequency_known_phase",
        "barankin_frequency",
        "hcr_frequency",
        "mle_mse_frequency",
        "barankin_test_points",
    ]:
        assert key in d
    assert 0.7 < d["mle_mse_frequency"] / d["crb_frequency"] < 1.4
    cov = tmp_path / "c.json"
    r = runner.invoke(
        app, ["bounds", "covariance", "--dim", "4", "--snapshots", "8", "--trials", "300", "--json", str(cov)]
    )
    assert r.exit_code == 0, r.output
    c = json.loads(cov.read_text())
    assert c["crb_rho"] >= c["crb_rho_known_variance"] and c["crb_rho"] == pytest.approx(
        c["crb_rho_projection"]
    )
    r = runner.invoke(app, ["bounds", "covariance", "--rho", "0.5", "--variance", "-1", "--trials", "0"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["bounds", "sinusoid", "--per-bin", "1000000", "--trials", "0"])
    assert r.exit_code == 2 and "at most 4096 test points" in r.output  # refused before any allocation


def test_sweep_is_a_resumable_run(tmp_path) -> None:
    from typer.testing import CliRunner

    from nclens.cli import app

    runner = CliRunner()
    out = tmp_path / "sweep"
    args = ["bounds", "sweep", "--samples", "16", "--snr-db-min", "-12", "--snr-db-max", "12", "--snr-db-step", "6",
            "--trials", "300", "--no-progress", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "figures" / "bounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    w = json.loads((out / "sweep.json").read_text())
    assert len(w["snr_db"]) == 5 and w["threshold_snr_db"]["barankin"] is not None
    assert json.loads((out / "summary.json").read_text())["results"]["threshold_snr_db"] == w["threshold_snr_db"]
    # a sweep cut after two points and resumed equals the uninterrupted one
    cut = tmp_path / "cut"
    assert runner.invoke(app, [*args[:-1], str(cut)]).exit_code == 0
    points = (cut / "points.jsonl").read_text().splitlines()
    (cut / "points.jsonl").write_text("\n".join(points[:2]) + "\n")
    (cut / "summary.json").unlink()
    (cut / "sweep.json").unlink()
    assert runner.invoke(app, [*args[:-1], str(cut), "--resume"]).exit_code == 0
    assert (cut / "points.jsonl").read_text() == (out / "points.jsonl").read_text()
    for bad, match in [(["--snr-db-min", "nan"], "snr_db_min must be a finite number"),
                       (["--per-bin", "1000000"], "at most 4096 test points"),
                       (["--snr-db-max", "-30"], "must be >= snr_db_min")]:
        r = runner.invoke(app, [*args[:-2], *bad, "--out", str(tmp_path / "bad")])
        assert r.exit_code == 2 and match in r.output, r.output
        assert not (tmp_path / "bad").exists()
