"""Quadratic covariance bounds as Gram matrices of projected scores.

Geometry (Scharf & McWhorter-style, "Hilbert Space Geometry of Quadratic Covariance Bounds",
Asilomar 2017). Second-order random variables form a Hilbert space with inner product
``<x, y> = E[x y^H]``. For an estimator with error ``e = theta_hat - theta`` and zero-mean
*measurement scores* ``s = (s_1, ..., s_m)`` the projection of ``e`` onto ``span(s)`` is
``P e = T J^{-1} s`` with ``T = E[e s^H]`` and ``J = E[s s^H]``, and Pythagoras gives::

    E[e e^H] = Gram(P e) + Gram(e - P e) >= Gram(P e) = T J^{-1} T^H.

Choosing the scores gives the classical bounds:

* Fisher scores ``d log p / d theta``                     -> Cramér–Rao bound (``T = dm/dtheta``);
* ``p^{(k)} / p``, k = 1..m                                -> Bhattacharyya (1946) bound of order m;
* ``p(y; theta_i) / p(y; theta) - 1`` at test points        -> Barankin (1949) bound,
  ``J_ij = E[p_i p_j / p^2] - 1``, ``T_i = m(theta_i) - m(theta)``;
* one test point, sup over it                             -> Hammersley (1950) / Chapman–Robbins (1951);
* concatenations of families                              -> mixed bounds (e.g. Barankin + nuisance Fisher).

Biased estimators enter only through ``T`` (``m(theta) = E_theta[theta_hat]``); the bound is then on
the error covariance ``E[(theta_hat - m)(theta_hat - m)^H]`` (MSE = covariance + bias bias^H).
With nuisance parameters the essential Cramér–Rao bound is the inverse Gram matrix of the essential
scores after projection onto the orthogonal complement of the nuisance scores,
``CRB(theta_1) = [Gram(s_1 - P_{s_2} s_1)]^{-1} = (J_11 - J_12 J_22^{-1} J_21)^{-1}``.

For complex normal measurements the Hilbert-space geometry becomes Euclidean:

* ``CN(mu(theta), R)``:  ``J = 2 Re(G^H R^{-1} G)`` with ``G = d mu / d theta``: the Gram matrix of the
  whitened columns ``R^{-1/2} G`` in the real inner product ``2 Re(a^H b)``; the Barankin Gram is
  ``exp(2 Re(delta_i^H R^{-1} delta_j)) - 1`` with ``delta_i = mu(theta_i) - mu(theta)``;
* ``CN(0, R(theta))``:  ``J_ij = tr(R^{-1} R_i R^{-1} R_j)``, the Frobenius Gram matrix of
  ``R^{-1/2} R_i R^{-1/2}``;
* ``CN(mu(theta), R(theta))``: the Slepian–Bangs formula, the sum of the two.

Everything is float64 (complex128 where complex) NumPy; per-sample scores of arbitrary models are
computed with ``torch.func`` forward-mode autodiff of a vectorised log-density.

Example:
    >>> import numpy as np
    >>> from nclens.bounds import sinusoid_jacobian, cn_mean_fisher, nuisance_crb
    >>> N, snr = 16, 10.0
    >>> J = cn_mean_fisher(sinusoid_jacobian([1.0, 0.3, 1.0], N), np.eye(N) / snr)
    >>> bool(np.isclose(nuisance_crb(J, [2])[0, 0], 6 / (snr * N * (N**2 - 1))))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "blas_single_thread",
    "gram",
    "cross_gram",
    "quadratic_bound",
    "projection_bound",
    "project",
    "nuisance_crb",
    "fisher_scores",
    "log_density_derivatives",
    "bhattacharyya_scores",
    "barankin_scores",
    "fisher_cross",
    "barankin_cross",
    "bhattacharyya_cross",
    "bhattacharyya_gram",
    "hammersley_chapman_robbins",
    "inv_sqrt_hermitian",
    "whiten",
    "real_stack",
    "cn_mean_fisher",
    "cn_mean_scores",
    "cn_mean_nuisance_crb",
    "cn_mean_barankin_kernel",
    "cn_mean_barankin_gram",
    "scaled_barankin_gram",
    "cn_mean_mixed_bound",
    "cn_mean_hcr_curve",
    "cn_cov_whitened",
    "cn_cov_fisher",
    "cn_cov_scores",
    "cn_cov_nuisance_crb",
    "slepian_bangs_fisher",
    "sample_cn",
    "sinusoid_mean",
    "sinusoid_jacobian",
    "sinusoid_crb_closed_form",
    "sinusoid_test_deltas",
    "sinusoid_barankin_offsets",
    "sinusoid_bounds",
    "sinusoid_mle_frequency",
    "wrap_angle",
    "ar1_covariance",
    "ar1_covariance_derivatives",
    "ar1_mle",
    "threshold_snr_db",
    "MAX_TEST_POINTS",
]

Array = NDArray[Any]
#: Most Barankin test points one sinusoid bound may use (its Gram is (T+3)² complex numbers).
MAX_TEST_POINTS = 4096
LogDensity = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


# ----------------------------------------------------------------------------------------------
# generic Hilbert-space geometry
# ----------------------------------------------------------------------------------------------


_BLAS_CONTROLLER: Any = None


@contextmanager
def blas_single_thread() -> Iterator[None]:
    """Limit BLAS/LAPACK to one thread inside the block (uses threadpoolctl when installed).

    The bounds work on small dense matrices (tens to hundreds of rows), where BLAS threads only add
    synchronisation; on a busy machine an oversubscribed 130 x 130 ``eigh`` can take ~100x longer.

    Example:
        >>> import numpy as np
        >>> with blas_single_thread():
        ...     float(np.linalg.eigvalsh(np.eye(2))[0])
        1.0
    """
    global _BLAS_CONTROLLER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - optional
        yield
        return
    if _BLAS_CONTROLLER is None:
        _BLAS_CONTROLLER = ThreadpoolController()
    with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
        yield


def _promote(arr: Array) -> Array:
    """Cast to complex128 when complex, float64 otherwise."""
    return arr.astype(np.complex128 if np.iscomplexobj(arr) else np.float64, copy=False)


def _samples(x: ArrayLike, name: str) -> Array:
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be an (n_samples, k) array of samples, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values; expected finite samples")
    return _promote(arr)


def gram(x: ArrayLike) -> Array:
    """Monte Carlo Gram matrix ``E[x x^H]`` of samples (rows are draws).

    Args:
        x: ``(n, k)`` samples (a 1-D array is one variable).

    Returns:
        ``(k, k)`` Hermitian matrix ``(1/n) sum_t x_t x_t^H``.

    Example:
        >>> import numpy as np
        >>> gram(np.array([[1.0], [-1.0]]))
        array([[1.]])
    """
    s = _samples(x, "x")
    return (s.T @ s.conj()) / s.shape[0]


def cross_gram(e: ArrayLike, s: ArrayLike) -> Array:
    """Monte Carlo cross Gram matrix ``T = E[e s^H]`` (rows of ``e`` and ``s`` are paired draws).

    Example:
        >>> import numpy as np
        >>> cross_gram(np.array([1.0, 2.0]), np.array([1.0, 0.0]))
        array([[0.5]])
    """
    ee, ss = _samples(e, "e"), _samples(s, "s")
    if ee.shape[0] != ss.shape[0]:
        raise ValueError(f"e and s must have the same number of samples, got {ee.shape[0]} and {ss.shape[0]}")
    return (ee.T @ ss.conj()) / ee.shape[0]


def quadratic_bound(T: ArrayLike, J: ArrayLike, *, rcond: float = 1e-10) -> Any:
    """Quadratic covariance bound ``T J^{-1} T^H``: the Gram matrix of the projection of the error.

    ``J`` is equilibrated (scores rescaled to unit variance, which leaves the bound unchanged) and
    inverted on the eigen-directions with eigenvalue above ``rcond * max eigenvalue``. Dropping
    directions projects onto a smaller subspace of ``span(s)``, so the result stays a valid (never
    a spuriously inflated) lower bound when ``J`` is ill-conditioned (e.g. many Barankin points).

    Args:
        T: ``(p, m)`` cross Gram ``E[e s^H]`` (1-D: one error component; a float is returned).
        J: ``(m, m)`` Hermitian positive semi-definite score Gram ``E[s s^H]``.
        rcond: relative eigenvalue cut-off.

    Returns:
        ``(p, p)`` Hermitian bound (real when T and J are real), or a float for 1-D ``T``.

    Raises:
        ValueError: shapes do not match, ``J`` is not Hermitian or has a negative diagonal.

    Example:
        >>> import numpy as np
        >>> quadratic_bound(np.array([1.0, 0.0]), np.array([[4.0, 0.0], [0.0, 1.0]]))
        0.25
    """
    Jm = _promote(np.atleast_2d(np.asarray(J)))
    if Jm.ndim != 2 or Jm.shape[0] != Jm.shape[1]:
        raise ValueError(f"J must be a square (m, m) matrix, got shape {Jm.shape}")
    Tm = _promote(np.asarray(T))
    vector = Tm.ndim == 1
    T2 = Tm[None, :] if vector else Tm
    if T2.ndim != 2 or T2.shape[1] != Jm.shape[0]:
        raise ValueError(
            f"T must have {Jm.shape[0]} columns (one per score) to match J, got shape {Tm.shape}"
        )
    if not (np.all(np.isfinite(Jm)) and np.all(np.isfinite(T2))):
        raise ValueError(
            "T and J must be finite; use scaled scores (e.g. scaled_barankin_gram) to avoid overflow"
        )
    big = float(np.max(np.abs(Jm))) if Jm.size else 0.0
    if not np.allclose(Jm, Jm.conj().T, rtol=0.0, atol=1e-8 * max(big, 1e-300)):
        raise ValueError("J must be Hermitian (a Gram matrix E[s s^H])")
    Jm = (Jm + Jm.conj().T) / 2
    d = np.real(np.diag(Jm))
    if np.any(d < -1e-12 * max(big, 1e-300)):
        raise ValueError(f"J must be positive semi-definite, found diagonal entry {d.min():.3g} < 0")
    keep = d > 0
    out_dtype = np.complex128 if (np.iscomplexobj(Jm) or np.iscomplexobj(T2)) else np.float64
    result = np.zeros((T2.shape[0], T2.shape[0]), dtype=out_dtype)
    if keep.any():
        scale = 1.0 / np.sqrt(d[keep])
        Js = Jm[np.ix_(keep, keep)] * scale[:, None] * scale[None, :]
        Ts = T2[:, keep] * scale[None, :]
        lam, U = np.linalg.eigh(Js)
        sel = lam > rcond * max(float(lam.max()), 0.0)
        if sel.any():
            V = Ts @ U[:, sel]
            B = (V / lam[sel]) @ V.conj().T
            result = ((B + B.conj().T) / 2).astype(out_dtype)
    if out_dtype == np.complex128 and np.allclose(result.imag, 0.0):
        result = result.real
    if vector:
        return float(np.real(result[0, 0]))
    return result


def project(x: ArrayLike, onto: ArrayLike, *, rcond: float = 1e-10) -> Array:
    """Samples of the projection ``P_s x = E[x s^H] E[s s^H]^+ s`` of ``x`` onto ``span(s)``.

    Args:
        x: ``(n, p)`` samples of the variables to project.
        onto: ``(n, m)`` paired samples of the spanning scores ``s``.
        rcond: relative cut-off of the pseudo-inverse.

    Returns:
        ``(n, p)`` samples of ``P_s x``; ``x - project(x, s)`` is the orthogonal residual.

    Example:
        >>> import numpy as np
        >>> s = np.array([[1.0], [-1.0]]); x = np.array([[2.0], [0.0]])
        >>> project(x, s).ravel().tolist()
        [1.0, -1.0]
    """
    xx, ss = _samples(x, "x"), _samples(onto, "onto")
    T = cross_gram(xx, ss)
    C = T @ np.linalg.pinv(gram(ss), rcond=rcond, hermitian=True)
    return ss @ C.T


def projection_bound(errors: ArrayLike, scores: ArrayLike, *, rcond: float = 1e-10) -> Array:
    """Monte Carlo bound ``T J^{-1} T^H`` with ``T = E[e s^H]``, ``J = E[s s^H]`` from paired samples.

    Equals ``gram(project(errors, scores))``: the Gram matrix of the error's projection.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0); s = rng.standard_normal(1000)
        >>> bool(np.isclose(projection_bound(2 * s, s)[0, 0], np.mean(4 * s * s)))
        True
    """
    ee, ss = _samples(errors, "errors"), _samples(scores, "scores")
    return quadratic_bound(cross_gram(ee, ss), gram(ss), rcond=rcond)


def nuisance_crb(J: ArrayLike, essential: Sequence[int]) -> Array:
    """Cramér–Rao bound of the essential parameters with the others as unknown nuisance.

    ``CRB(theta_1) = (J_11 - J_12 J_22^{-1} J_21)^{-1}``: the inverse Gram matrix of the essential scores
    after projection onto the orthogonal complement of the nuisance scores. It dominates the
    known-nuisance bound ``J_11^{-1}`` (Loewner order), with equality iff ``J_12 = 0``.

    Args:
        J: ``(d, d)`` Fisher information (positive definite).
        essential: indices of the essential parameters (the rest are nuisance).

    Example:
        >>> import numpy as np
        >>> nuisance_crb(np.array([[2.0, 1.0], [1.0, 1.0]]), [0])
        array([[1.]])
    """
    Jm = _promote(np.atleast_2d(np.asarray(J)))
    if Jm.ndim != 2 or Jm.shape[0] != Jm.shape[1]:
        raise ValueError(f"J must be a square Fisher matrix, got shape {Jm.shape}")
    d = Jm.shape[0]
    idx = np.asarray(list(essential), dtype=int)
    if idx.size == 0 or np.any(idx < 0) or np.any(idx >= d) or len(set(idx.tolist())) != idx.size:
        raise ValueError(f"essential must be distinct indices in [0, {d}), got {list(essential)}")
    rest = np.setdiff1d(np.arange(d), idx)
    S = Jm[np.ix_(idx, idx)]
    if rest.size:
        S = S - Jm[np.ix_(idx, rest)] @ np.linalg.solve(Jm[np.ix_(rest, rest)], Jm[np.ix_(rest, idx)])
    return np.linalg.inv((S + S.conj().T) / 2)


# ----------------------------------------------------------------------------------------------
# score families of arbitrary models (torch autodiff of a vectorised log-density)
# ----------------------------------------------------------------------------------------------


def _torch_inputs(y: ArrayLike, theta: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    yt = torch.as_tensor(np.asarray(y))
    yt = yt.to(torch.complex128) if yt.is_complex() else yt.to(torch.float64)
    th = torch.as_tensor(np.asarray(theta, dtype=np.float64)).reshape(-1)
    return yt, th


def _check_logp(value: torch.Tensor, n: int) -> None:
    if value.ndim != 1 or value.shape[0] != n:
        raise ValueError(
            f"log_density(y, theta) must return one log-density per sample, shape ({n},); "
            f"got {tuple(value.shape)}"
        )


def fisher_scores(log_density: LogDensity, y: ArrayLike, theta: ArrayLike) -> Array:
    """Per-sample Fisher scores ``d log p(y_t; theta) / d theta`` by forward-mode autodiff.

    Args:
        log_density: ``f(y, theta) -> (n,)`` torch function, vectorised over the samples ``y``
            (first axis), differentiable in the 1-D float64 parameter ``theta``.
        y: ``(n, ...)`` samples (real or complex).
        theta: ``(d,)`` parameter.

    Returns:
        ``(n, d)`` float64 scores; ``gram`` of them estimates the Fisher information.

    Example:
        >>> import numpy as np, torch
        >>> logp = lambda y, th: -0.5 * (y - th[0]) ** 2
        >>> fisher_scores(logp, np.array([1.0, 3.0]), [0.0]).ravel().tolist()
        [1.0, 3.0]
    """
    import torch

    yt, th = _torch_inputs(y, theta)
    _check_logp(log_density(yt, th), yt.shape[0])
    jac = torch.func.jacfwd(lambda t: log_density(yt, t))(th)
    return jac.detach().reshape(yt.shape[0], th.numel()).numpy().astype(np.float64)


def log_density_derivatives(
    log_density: LogDensity, y: ArrayLike, theta: ArrayLike, order: int, *, index: int = 0
) -> Array:
    """Per-sample derivatives ``d^k log p / d theta_index^k`` for ``k = 1..order`` (nested jacfwd).

    Example:
        >>> import numpy as np
        >>> logp = lambda y, th: -0.5 * (y - th[0]) ** 2
        >>> log_density_derivatives(logp, np.array([2.0]), [0.0], 3).tolist()[0][:2]
        [2.0, -1.0]
    """
    import torch

    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    yt, th = _torch_inputs(y, theta)
    if not 0 <= index < th.numel():
        raise ValueError(f"index must be in [0, {th.numel()}), got {index}")
    unit = torch.zeros_like(th)
    unit[index] = 1.0

    def along(s: torch.Tensor) -> torch.Tensor:
        return log_density(yt, th + s * unit)

    _check_logp(along(torch.zeros((), dtype=torch.float64)), yt.shape[0])
    out = []
    fn: Callable[[torch.Tensor], torch.Tensor] = along
    for _ in range(order):
        fn = torch.func.jacfwd(fn)
        out.append(fn(torch.zeros((), dtype=torch.float64)).detach().reshape(-1))
    return torch.stack(out, dim=1).numpy().astype(np.float64)


def bhattacharyya_scores(log_derivatives: ArrayLike) -> Array:
    """Bhattacharyya (1946) scores ``p^{(k)}/p``, k = 1..m, from the log-density derivatives.

    Complete Bell polynomial recurrence: ``q_0 = 1``, ``q_k = sum_{j<k} C(k-1, j) l^{(j+1)} q_{k-1-j}``
    (e.g. ``q_2 = l'' + l'^2``).

    Args:
        log_derivatives: ``(n, m)`` columns ``l', l'', ..., l^{(m)}`` (see :func:`log_density_derivatives`).

    Example:
        >>> import numpy as np
        >>> bhattacharyya_scores(np.array([[2.0, -1.0]])).tolist()
        [[2.0, 3.0]]
    """
    L = _samples(log_derivatives, "log_derivatives")
    m = L.shape[1]
    q = [np.ones(L.shape[0], dtype=L.dtype)]
    for k in range(1, m + 1):
        q.append(sum(math.comb(k - 1, j) * L[:, j] * q[k - 1 - j] for j in range(k)))
    return np.stack(q[1:], axis=1)


def barankin_scores(log_density: LogDensity, y: ArrayLike, theta: ArrayLike, test_points: ArrayLike) -> Array:
    """Barankin (1949) scores ``p(y; theta_i)/p(y; theta) - 1`` at test points ``theta_i``.

    Their Gram matrix is ``E[p_i p_j / p^2] - 1`` (chi-square affinities); with ``T_i = m(theta_i) - m(theta)``
    the bound is ``T J^{-1} T^H``. Computed as ``expm1(log p_i - log p)``.

    Args:
        log_density: vectorised torch log-density (see :func:`fisher_scores`).
        y: ``(n, ...)`` samples drawn at ``theta``.
        theta: ``(d,)`` true parameter.
        test_points: ``(m, d)`` test parameters.

    Example:
        >>> import numpy as np
        >>> logp = lambda y, th: -0.5 * (y - th[0]) ** 2
        >>> barankin_scores(logp, np.array([0.0]), [0.0], [[1.0]]).round(4).tolist()
        [[-0.3935]]
    """
    import torch

    yt, th = _torch_inputs(y, theta)
    tp = np.atleast_2d(np.asarray(test_points, dtype=np.float64))
    if tp.shape[1] != th.numel():
        raise ValueError(f"test_points must have shape (m, {th.numel()}), got {tp.shape}")
    with torch.no_grad():
        base = log_density(yt, th)
        _check_logp(base, yt.shape[0])
        cols = [torch.expm1(log_density(yt, torch.as_tensor(p)) - base) for p in tp]
    return torch.stack(cols, dim=1).numpy().astype(np.float64)


def _mean_fn_np(mean_fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor) -> Array:
    return np.atleast_1d(mean_fn(theta).detach().numpy()).astype(np.float64)


def fisher_cross(mean_fn: Callable[[torch.Tensor], torch.Tensor], theta: ArrayLike) -> Array:
    """Cross Gram ``T = E[e s^H] = d m / d theta`` for Fisher scores, ``m(theta) = E_theta[theta_hat]``.

    For an unbiased estimator of theta, ``T = I``; a biased one enters the bound only through ``T``.

    Example:
        >>> import torch
        >>> fisher_cross(lambda th: 0.5 * th, [1.0, 2.0]).tolist()
        [[0.5, 0.0], [0.0, 0.5]]
    """
    import torch

    th = torch.as_tensor(np.asarray(theta, dtype=np.float64)).reshape(-1)
    jac = torch.func.jacfwd(lambda t: torch.atleast_1d(mean_fn(t)))(th)
    return jac.detach().reshape(-1, th.numel()).numpy().astype(np.float64)


def barankin_cross(
    mean_fn: Callable[[torch.Tensor], torch.Tensor], theta: ArrayLike, test_points: ArrayLike
) -> Array:
    """Cross Gram for Barankin scores: ``T_i = m(theta_i) - m(theta)`` (columns), ``(p, m)``.

    Example:
        >>> barankin_cross(lambda th: th, [0.0], [[1.0], [-2.0]]).tolist()
        [[1.0, -2.0]]
    """
    import torch

    th = np.asarray(theta, dtype=np.float64).reshape(-1)
    tp = np.atleast_2d(np.asarray(test_points, dtype=np.float64))
    if tp.shape[1] != th.size:
        raise ValueError(f"test_points must have shape (m, {th.size}), got {tp.shape}")
    base = _mean_fn_np(mean_fn, torch.as_tensor(th))
    return np.stack([_mean_fn_np(mean_fn, torch.as_tensor(p)) - base for p in tp], axis=1)


def bhattacharyya_cross(
    mean_fn: Callable[[torch.Tensor], torch.Tensor], theta: ArrayLike, order: int, *, index: int = 0
) -> Array:
    """Cross Gram for Bhattacharyya scores: ``T_k = d^k m / d theta_index^k``, k = 1..order, ``(p, order)``.

    Example:
        >>> bhattacharyya_cross(lambda th: th**2, [3.0], 2).tolist()
        [[6.0, 2.0]]
    """
    import torch

    th = torch.as_tensor(np.asarray(theta, dtype=np.float64)).reshape(-1)
    if order < 1 or not 0 <= index < th.numel():
        raise ValueError(f"need order >= 1 and index in [0, {th.numel()}), got order={order}, index={index}")
    unit = torch.zeros_like(th)
    unit[index] = 1.0
    fn: Callable[[torch.Tensor], torch.Tensor] = lambda s: torch.atleast_1d(mean_fn(th + s * unit))  # noqa: E731
    cols = []
    for _ in range(order):
        fn = torch.func.jacfwd(fn)
        cols.append(fn(torch.zeros((), dtype=torch.float64)).detach().reshape(-1).numpy())
    return np.stack(cols, axis=1).astype(np.float64)


def bhattacharyya_gram(kernel: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], order: int) -> Array:
    """Closed-form Bhattacharyya Gram from the Barankin kernel ``B(s, t) = E[p(theta+s) p(theta+t) / p(theta)^2]``.

    ``J_kl = d^k/ds^k d^l/dt^l B(s, t) |_{s=t=0}`` (k, l = 1..order): Bhattacharyya scores are derivatives
    of Barankin scores, so their Gram matrix is the mixed derivative of the Barankin kernel.

    Args:
        kernel: torch function of two scalar offsets (0-d float64 tensors) returning a 0-d tensor.
        order: Bhattacharyya order m.

    Example:
        >>> import torch  # N(theta, 1), one sample: B(s, t) = exp(s t), J = diag(k!)
        >>> bhattacharyya_gram(lambda s, t: torch.exp(s * t), 2).round(12).tolist()
        [[1.0, 0.0], [0.0, 2.0]]
    """
    import torch

    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    zero = torch.zeros((), dtype=torch.float64)
    out = np.zeros((order, order))
    for k in range(1, order + 1):
        for l in range(1, order + 1):
            fn: Callable[..., torch.Tensor] = kernel
            for _ in range(k):
                fn = torch.func.grad(fn, argnums=0)
            for _ in range(l):
                fn = torch.func.grad(fn, argnums=1)
            out[k - 1, l - 1] = float(fn(zero, zero))
    return (out + out.T) / 2


def hammersley_chapman_robbins(
    curve: Callable[[Array], Array], grid: ArrayLike, *, refine: bool = True
) -> tuple[float, float]:
    """Hammersley (1950) / Chapman–Robbins (1951) bound: the sup over one test point.

    ``HCR = sup_Delta (m(theta+Delta) - m(theta))^2 / chi2(Delta)``, ``chi2(Delta) = E[(p_Delta/p)^2] - 1``;
    ``curve`` evaluates the single-test-point bound on an array of offsets. The sup is taken on ``grid``
    and refined by bounded scalar maximisation between the neighbours of the best grid point. The
    Cramér–Rao bound is its ``Delta -> 0`` limit, so HCR >= CRB.

    Returns:
        ``(value, argmax offset)``.

    Example:
        >>> import numpy as np  # N(theta, 1), n = 4: sup_D D^2/(exp(4 D^2) - 1) = 1/4 as D -> 0
        >>> v, _ = hammersley_chapman_robbins(lambda d: d**2 / np.expm1(4 * d**2), np.linspace(1e-4, 2, 50))
        >>> round(v, 6)
        0.25
    """
    from scipy.optimize import minimize_scalar

    g = np.asarray(grid, dtype=np.float64).ravel()
    if g.size < 1 or not np.all(np.isfinite(g)):
        raise ValueError(f"grid must be a non-empty finite array of test offsets, got {grid!r}")
    g = np.sort(g)
    vals = np.asarray(curve(g), dtype=np.float64)
    if vals.shape != g.shape:
        raise ValueError(f"curve must return one value per grid point, got shape {vals.shape} for {g.shape}")
    if not np.any(np.isfinite(vals)):
        raise ValueError("curve returned no finite value on the grid")
    k = int(np.nanargmax(np.where(np.isfinite(vals), vals, -np.inf)))
    best, arg = float(vals[k]), float(g[k])
    if refine and g.size > 1:
        lo, hi = g[max(k - 1, 0)], g[min(k + 1, g.size - 1)]
        res = minimize_scalar(
            lambda d: -float(np.asarray(curve(np.array([d])))[0]),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-10 * max(abs(hi - lo), 1e-300)},
        )
        if np.isfinite(res.fun) and -res.fun > best:
            best, arg = float(-res.fun), float(res.x)
    return best, arg


# ----------------------------------------------------------------------------------------------
# complex (or real) normal closed forms
# ----------------------------------------------------------------------------------------------


def _cov(R: ArrayLike, name: str = "R") -> Array:
    Rm = _promote(np.asarray(R))
    if Rm.ndim != 2 or Rm.shape[0] != Rm.shape[1] or Rm.shape[0] < 1:
        raise ValueError(f"{name} must be a square (N, N) covariance matrix, got shape {Rm.shape}")
    if not np.allclose(Rm, Rm.conj().T, rtol=1e-10, atol=1e-12 * float(np.max(np.abs(Rm)))):
        raise ValueError(f"{name} must be Hermitian")
    try:
        np.linalg.cholesky(Rm)
    except np.linalg.LinAlgError as exc:
        raise ValueError(f"{name} must be positive definite") from exc
    return (Rm + Rm.conj().T) / 2


def _cols(x: ArrayLike, n: int, name: str) -> Array:
    arr = _promote(np.asarray(x))
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(
            f"{name} must have shape ({n}, k) (one column per parameter/test point), got {arr.shape}"
        )
    return arr


def inv_sqrt_hermitian(R: ArrayLike) -> Array:
    """Hermitian inverse square root ``R^{-1/2}`` of a positive definite matrix (eigen-decomposition).

    Example:
        >>> import numpy as np
        >>> inv_sqrt_hermitian(np.diag([4.0, 1.0])).tolist()
        [[0.5, 0.0], [0.0, 1.0]]
    """
    lam, U = np.linalg.eigh(_cov(R))
    return (U / np.sqrt(lam)) @ U.conj().T


def whiten(G: ArrayLike, R: ArrayLike) -> Array:
    """Whitened columns ``W = R^{-1/2} G``: their Euclidean geometry is the Fisher geometry.

    Example:
        >>> import numpy as np
        >>> whiten(np.array([[2.0], [0.0]]), np.diag([4.0, 1.0])).ravel().tolist()
        [1.0, 0.0]
    """
    Rm = _cov(R)
    return inv_sqrt_hermitian(Rm) @ _cols(G, Rm.shape[0], "G")


def real_stack(W: ArrayLike) -> Array:
    """Stack ``[Re W; Im W]``: complex columns as vectors of R^{2N}, where ``Re(a^H b)`` is the dot product.

    Example:
        >>> import numpy as np
        >>> real_stack(np.array([[1 + 2j]])).ravel().tolist()
        [1.0, 2.0]
    """
    Wm = np.asarray(W)
    return (
        np.concatenate([Wm.real, Wm.imag], axis=0).astype(np.float64)
        if np.iscomplexobj(Wm)
        else Wm.astype(np.float64)
    )


def _cross_block(cross: ArrayLike | None, columns: int, name: str, needed_with: str) -> tuple[Array, bool]:
    """A cross-term block T (rows: error components, one column per score) and whether it was a vector.

    Raises:
        ValueError: ``cross`` missing although ``needed_with`` was given, or the wrong number of columns.
    """
    if cross is None:
        raise ValueError(f"{name} is required with {needed_with}")
    block = np.asarray(cross, dtype=np.float64)
    vector = block.ndim == 1
    block = np.atleast_2d(block)
    if block.shape[1] != columns:
        raise ValueError(f"{name.split()[0]} must have {columns} columns, got shape {block.shape}")
    return block, vector


def _factor(real: bool) -> float:
    """2 for circular complex normal measurements, 1 for real normal ones."""
    return 1.0 if real else 2.0


def cn_mean_fisher(G: ArrayLike, R: ArrayLike, *, real: bool = False) -> Array:
    """Fisher information of ``CN(mu(theta), R)``: ``J = 2 Re(G^H R^{-1} G)``, ``G = d mu/d theta``.

    ``J`` is the Gram matrix of the whitened columns ``R^{-1/2} G`` (Euclidean geometry, real inner
    product ``2 Re(a^H b)``). With ``real=True`` the model is the real normal ``N(mu(theta), R)`` and
    ``J = G^T R^{-1} G``.

    Example:
        >>> import numpy as np  # N(theta, sigma^2 = 2) with n = 4 samples: J = n / sigma^2
        >>> cn_mean_fisher(np.ones((4, 1)), 2 * np.eye(4), real=True).tolist()
        [[2.0]]
    """
    Rm = _cov(R)
    Gm = _cols(G, Rm.shape[0], "G")
    return _factor(real) * np.real(Gm.conj().T @ np.linalg.solve(Rm, Gm))


def cn_mean_scores(y: ArrayLike, mu: ArrayLike, G: ArrayLike, R: ArrayLike, *, real: bool = False) -> Array:
    """Analytic Fisher scores of ``CN(mu, R)``: ``s = 2 Re(G^H R^{-1} (y - mu))`` per sample row, ``(n, d)``.

    Example:
        >>> import numpy as np
        >>> cn_mean_scores(np.array([[1.0, 1.0]]), np.zeros(2), np.ones((2, 1)), np.eye(2), real=True).tolist()
        [[2.0]]
    """
    Rm = _cov(R)
    N = Rm.shape[0]
    Gm = _cols(G, N, "G")
    Y = _promote(np.atleast_2d(np.asarray(y)))
    if Y.shape[-1] != N:
        raise ValueError(f"y must have shape (n, {N}), got {Y.shape}")
    Z = np.linalg.solve(Rm, (Y - np.asarray(mu)).T)  # (N, n)
    return _factor(real) * np.real(Gm.conj().T @ Z).T


def cn_mean_nuisance_crb(
    G: ArrayLike, R: ArrayLike, essential: Sequence[int], *, real: bool = False
) -> Array:
    """Nuisance CRB of ``CN(mu(theta), R)`` by projection of the whitened essential columns.

    ``CRB(theta_1) = [2 W_1^T (I - P_{W_2}) W_1]^{-1}`` with ``W = real_stack(R^{-1/2} G)``: the essential
    whitened columns projected onto the orthogonal complement of the nuisance columns ``R^{-1/2} G_2`` (in
    the real inner product, as the parameters are real). Equals :func:`nuisance_crb` of :func:`cn_mean_fisher`.

    Example:
        >>> import numpy as np
        >>> G = np.array([[1.0, 1.0], [0.0, 1.0]])
        >>> cn_mean_nuisance_crb(G, np.eye(2), [0], real=True).round(12).tolist()
        [[2.0]]
    """
    W = real_stack(whiten(G, R))
    d = W.shape[1]
    idx = np.asarray(list(essential), dtype=int)
    if idx.size == 0 or np.any(idx < 0) or np.any(idx >= d):
        raise ValueError(f"essential must be indices in [0, {d}), got {list(essential)}")
    rest = np.setdiff1d(np.arange(d), idx)
    W1 = W[:, idx]
    if rest.size:
        W2 = W[:, rest]
        W1 = W1 - W2 @ np.linalg.lstsq(W2, W1, rcond=None)[0]
    return np.linalg.inv(_factor(real) * (W1.T @ W1))


def cn_mean_barankin_kernel(deltas: ArrayLike, R: ArrayLike, *, real: bool = False) -> Array:
    """Log Barankin kernel ``K_ij = 2 Re(delta_i^H R^{-1} delta_j)``, ``delta_i = mu(theta_i) - mu(theta)``.

    ``E[p_i p_j / p^2] = exp(K_ij)`` for ``CN(mu, R)`` (``K = delta^T R^{-1} delta`` for a real normal).

    Example:
        >>> import numpy as np
        >>> cn_mean_barankin_kernel(np.array([[1.0], [1.0]]), np.eye(2)).tolist()
        [[4.0]]
    """
    Rm = _cov(R)
    D = _cols(deltas, Rm.shape[0], "deltas")
    K = _factor(real) * np.real(D.conj().T @ np.linalg.solve(Rm, D))
    return (K + K.T) / 2


def cn_mean_barankin_gram(deltas: ArrayLike, R: ArrayLike, *, real: bool = False) -> Array:
    """Barankin Gram ``J_ij = exp(2 Re(delta_i^H R^{-1} delta_j)) - 1`` of ``CN(mu, R)`` (unscaled).

    Overflows for far test points at high SNR; use :func:`cn_mean_mixed_bound` (log-domain scaling) then.

    Example:
        >>> import numpy as np
        >>> float(cn_mean_barankin_gram(np.array([[0.5]]), np.eye(1), real=True)[0, 0]) == float(np.expm1(0.25))
        True
    """
    K = cn_mean_barankin_kernel(deltas, R, real=real)
    if np.any(K > 700):
        raise ValueError(
            f"Barankin kernel entry {K.max():.3g} > 700 overflows exp; use scaled_barankin_gram / cn_mean_mixed_bound"
        )
    return np.expm1(K)


def scaled_barankin_gram(K: ArrayLike) -> Array:
    """Gram of the rescaled Barankin scores ``(p_i/p - 1) exp(-K_ii/2)``, computed in the log domain.

    ``J~_ij = exp(K_ij - (K_ii + K_jj)/2) - exp(-(K_ii + K_jj)/2)``; every entry is in [-1, 1] (Cauchy–Schwarz),
    so far test points at high SNR neither overflow nor dominate. Rescaling the scores leaves the bound
    unchanged when ``T_i`` is scaled by the same ``exp(-K_ii/2)``.

    Example:
        >>> import numpy as np
        >>> scaled_barankin_gram(np.array([[1000.0]])).tolist()
        [[1.0]]
    """
    Km = np.asarray(K, dtype=np.float64)
    if Km.ndim != 2 or Km.shape[0] != Km.shape[1]:
        raise ValueError(f"K must be a square log-kernel matrix, got shape {Km.shape}")
    kd = np.diag(Km)
    m = (kd[:, None] + kd[None, :]) / 2
    small = Km <= 50.0
    with np.errstate(under="ignore"):
        a = np.exp(-m) * np.expm1(np.minimum(Km, 50.0))
        b = np.exp(np.minimum(Km - m, 0.0)) - np.exp(-m)
    out = np.where(small, a, b)
    return (out + out.T) / 2


def cn_mean_mixed_bound(
    R: ArrayLike,
    *,
    jacobian: ArrayLike | None = None,
    fisher_cross: ArrayLike | None = None,
    deltas: ArrayLike | None = None,
    barankin_cross: ArrayLike | None = None,
    real: bool = False,
    rcond: float = 1e-10,
) -> Any:
    """Bound ``T J^{-1} T^H`` for ``CN(mu(theta), R)`` with Fisher and Barankin scores mixed.

    Scores: Fisher ``s_k = 2 Re(g_k^H R^{-1}(y - mu))`` and rescaled Barankin ``(p_i/p - 1) e^{-K_ii/2}``. Gram
    blocks: ``J_FF = 2 Re(G^H R^{-1} G)``; ``J_FB = 2 Re(G^H R^{-1} delta_i) e^{-K_ii/2}`` (``E_{theta_i}`` of the
    Fisher score); ``J_BB`` = :func:`scaled_barankin_gram`. Cross Gram ``T = [dm/dtheta, (m(theta_i) - m(theta))
    e^{-K_ii/2}]``. With nuisance parameters, Fisher scores of the nuisance (``T`` column 0) are projected out.

    Args:
        R: ``(N, N)`` noise covariance.
        jacobian: ``(N, d)`` mean derivatives ``G`` (Fisher scores), optional.
        fisher_cross: ``(p, d)`` ``dm/dtheta`` for those scores (``I`` for unbiased theta; 0 for nuisance).
        deltas: ``(N, m)`` mean differences ``mu(theta_i) - mu(theta)`` (Barankin scores), optional.
        barankin_cross: ``(p, m)`` ``m(theta_i) - m(theta)``.
        real: real normal model instead of circular complex normal.
        rcond: eigenvalue cut-off, see :func:`quadratic_bound`.

    Returns:
        ``(p, p)`` bound, or a float when the crosses are 1-D.

    Example:
        >>> import numpy as np  # Barankin with a test point near theta -> CRB = sigma^2 / n = 0.25
        >>> b = cn_mean_mixed_bound(np.eye(4), deltas=1e-4 * np.ones((4, 1)), barankin_cross=[1e-4], real=True)
        >>> round(b, 6)
        0.25
    """
    Rm = _cov(R)
    N = Rm.shape[0]
    c = _factor(real)
    blocks_T: list[Array] = []
    vector = False
    G = D = None
    if jacobian is not None:
        G = _cols(jacobian, N, "jacobian")
        Tf, vector = _cross_block(fisher_cross, G.shape[1], "fisher_cross (dm/dtheta)", "jacobian")
        blocks_T.append(Tf)
    if deltas is not None:
        D = _cols(deltas, N, "deltas")
        Tb, vector = _cross_block(barankin_cross, D.shape[1], "barankin_cross (m(theta_i) - m(theta))", "deltas")
    if G is None and D is None:
        raise ValueError("give at least one score family: jacobian (Fisher) and/or deltas (Barankin)")
    J_blocks: list[list[Array]] = []
    if D is not None:
        K = c * np.real(D.conj().T @ np.linalg.solve(Rm, D))
        K = (K + K.T) / 2
        scale = np.exp(-np.diag(K) / 2)
        Jbb = scaled_barankin_gram(K)
        blocks_T.append(Tb * scale[None, :])
    if G is not None:
        Jff = c * np.real(G.conj().T @ np.linalg.solve(Rm, G))
        if D is not None:
            Jfb = c * np.real(G.conj().T @ np.linalg.solve(Rm, D)) * scale[None, :]
            J_blocks = [[Jff, Jfb], [Jfb.T, Jbb]]
        else:
            J_blocks = [[Jff]]
    else:
        J_blocks = [[Jbb]]
    if len({b.shape[0] for b in blocks_T}) != 1:
        raise ValueError("fisher_cross and barankin_cross must have the same number of rows")
    T = np.concatenate(blocks_T, axis=1)
    J = np.block(J_blocks)
    return quadratic_bound(T[0] if vector else T, J, rcond=rcond)


def cn_mean_hcr_curve(
    R: ArrayLike,
    deltas: ArrayLike,
    numerators: ArrayLike,
    *,
    nuisance_jacobian: ArrayLike | None = None,
    real: bool = False,
) -> Array:
    """Single-test-point (HCR) bound of ``CN(mu(theta), R)`` for each column of ``deltas``.

    ``b_i = t_i^2 / (chi2_i - c_i^T J_22^{-1} c_i)`` with ``chi2_i = exp(K_ii) - 1``, ``t_i = m(theta_i) - m(theta)``,
    and ``c_i = 2 Re(G_2^H R^{-1} delta_i)`` the covariance of the Barankin score with the nuisance Fisher scores
    (projected out; omit ``nuisance_jacobian`` for the classical HCR). Evaluated as
    ``t^2 e^{-K} / (1 - e^{-K}(1 + q))`` for large ``K`` (no overflow).

    Example:
        >>> import numpy as np  # N(theta, 1), n = 4: Delta^2 / (exp(4 Delta^2) - 1)
        >>> v = cn_mean_hcr_curve(np.eye(4), 0.5 * np.ones((4, 1)), [0.5], real=True)
        >>> bool(np.isclose(v[0], 0.25 / np.expm1(1.0)))
        True
    """
    Rm = _cov(R)
    N = Rm.shape[0]
    c = _factor(real)
    D = _cols(deltas, N, "deltas")
    t = np.asarray(numerators, dtype=np.float64).ravel()
    if t.size != D.shape[1]:
        raise ValueError(f"numerators must have one entry per delta column ({D.shape[1]}), got {t.size}")
    RiD = np.linalg.solve(Rm, D)
    Kd = c * np.real(np.sum(D.conj() * RiD, axis=0))
    q = np.zeros_like(Kd)
    if nuisance_jacobian is not None:
        G2 = _cols(nuisance_jacobian, N, "nuisance_jacobian")
        J22 = c * np.real(G2.conj().T @ np.linalg.solve(Rm, G2))
        C = c * np.real(G2.conj().T @ RiD)
        q = np.sum(C * np.linalg.solve(J22, C), axis=0)
    with np.errstate(divide="ignore", invalid="ignore", under="ignore", over="ignore"):
        small = t**2 / (np.expm1(np.minimum(Kd, 30.0)) - q)
        e = np.exp(-Kd)
        large = t**2 * e / (-np.expm1(-Kd) - e * q)
        out = np.where(Kd < 30.0, small, large)
    return np.where(np.isfinite(out) & (out >= 0), out, np.nan)


def cn_cov_whitened(R: ArrayLike, dR: ArrayLike) -> Array:
    """Whitened covariance derivatives ``A_i = R^{-1/2} R_i R^{-1/2}`` (Hermitian), shape ``(d, N, N)``.

    Example:
        >>> import numpy as np
        >>> cn_cov_whitened(np.eye(2) * 4, np.eye(2)[None]).tolist()
        [[[0.25, 0.0], [0.0, 0.25]]]
    """
    Rm = _cov(R)
    N = Rm.shape[0]
    dRm = _promote(np.asarray(dR))
    if dRm.ndim == 2:
        dRm = dRm[None]
    if dRm.ndim != 3 or dRm.shape[1:] != (N, N):
        raise ValueError(
            f"dR must have shape (d, {N}, {N}) (one derivative matrix per parameter), got {dRm.shape}"
        )
    S = inv_sqrt_hermitian(Rm)
    A = S[None] @ dRm @ S[None]
    A = (A + np.conj(np.swapaxes(A, 1, 2))) / 2
    return A.real if np.allclose(A.imag, 0.0) else A


def cn_cov_fisher(R: ArrayLike, dR: ArrayLike, *, snapshots: int = 1) -> Array:
    """Fisher information of ``CN(0, R(theta))``: ``J_ij = M tr(R^{-1} R_i R^{-1} R_j)`` for M snapshots.

    This is the Frobenius Gram matrix of the whitened derivatives ``A_i = R^{-1/2} R_i R^{-1/2}``.

    Example:
        >>> import numpy as np  # CN(0, theta I_3): J = 3 / theta^2
        >>> cn_cov_fisher(2 * np.eye(3), np.eye(3)[None]).round(12).tolist()
        [[0.75]]
    """
    if snapshots < 1:
        raise ValueError(f"snapshots must be >= 1, got {snapshots}")
    A = cn_cov_whitened(R, dR)
    J = np.real(np.einsum("ikl,jkl->ij", A, A.conj()))
    return snapshots * (J + J.T) / 2


def cn_cov_scores(y: ArrayLike, R: ArrayLike, dR: ArrayLike) -> Array:
    """Analytic scores of ``CN(0, R(theta))`` per snapshot: ``s_i = y^H R^{-1} R_i R^{-1} y - tr(R^{-1} R_i)``.

    Args:
        y: ``(n, N)`` snapshots. Returns ``(n, d)``; sum over snapshots for the score of a record.

    Example:
        >>> import numpy as np
        >>> cn_cov_scores(np.array([[2.0]]), np.eye(1), np.eye(1)[None]).tolist()
        [[3.0]]
    """
    Rm = _cov(R)
    N = Rm.shape[0]
    dRm = _promote(np.asarray(dR))
    if dRm.ndim == 2:
        dRm = dRm[None]
    if dRm.ndim != 3 or dRm.shape[1:] != (N, N):
        raise ValueError(f"dR must have shape (d, {N}, {N}), got {dRm.shape}")
    Y = _promote(np.atleast_2d(np.asarray(y)))
    if Y.shape[-1] != N:
        raise ValueError(f"y must have shape (n, {N}), got {Y.shape}")
    Z = np.linalg.solve(Rm, Y.T)  # (N, n) = R^{-1} y
    quad = np.real(np.einsum("kn,ikl,ln->ni", Z.conj(), dRm, Z))
    tr = np.real(np.einsum("ikk->i", np.linalg.solve(Rm[None], dRm)))
    return quad - tr[None, :]


def cn_cov_nuisance_crb(
    R: ArrayLike, dR: ArrayLike, essential: Sequence[int], *, snapshots: int = 1
) -> Array:
    """Nuisance CRB of ``CN(0, R(theta))`` in the Frobenius geometry of ``A_i = R^{-1/2} R_i R^{-1/2}``.

    The essential ``A_i`` are projected onto the orthogonal complement of the nuisance ``A_j`` (Frobenius inner
    product ``Re tr(A_i A_j)``) and the CRB is the inverse Gram matrix of the residuals.

    Example:
        >>> import numpy as np
        >>> dR = np.stack([np.diag([1.0, 0.0]), np.eye(2)])
        >>> cn_cov_nuisance_crb(np.eye(2), dR, [0]).tolist()
        [[2.0]]
    """
    A = cn_cov_whitened(R, dR)
    d = A.shape[0]
    idx = np.asarray(list(essential), dtype=int)
    if idx.size == 0 or np.any(idx < 0) or np.any(idx >= d):
        raise ValueError(f"essential must be indices in [0, {d}), got {list(essential)}")
    V = real_stack(A.reshape(d, -1).T)  # columns = vec(A_i) as real vectors
    rest = np.setdiff1d(np.arange(d), idx)
    V1 = V[:, idx]
    if rest.size:
        V2 = V[:, rest]
        V1 = V1 - V2 @ np.linalg.lstsq(V2, V1, rcond=None)[0]
    return np.linalg.inv(snapshots * (V1.T @ V1))


def slepian_bangs_fisher(R: ArrayLike, dR: ArrayLike, G: ArrayLike, *, snapshots: int = 1) -> Array:
    """Slepian–Bangs Fisher information of ``CN(mu(theta), R(theta))`` with M i.i.d. snapshots.

    ``J_ij = M [tr(R^{-1} R_i R^{-1} R_j) + 2 Re(mu_i^H R^{-1} mu_j)]``.

    Example:
        >>> import numpy as np  # CN(theta_0 1, theta_1 I_2)
        >>> dR = np.stack([np.zeros((2, 2)), np.eye(2)]); G = np.stack([np.ones(2), np.zeros(2)], 1)
        >>> slepian_bangs_fisher(np.eye(2), dR, G).tolist()
        [[4.0, 0.0], [0.0, 2.0]]
    """
    Jc = cn_cov_fisher(R, dR, snapshots=snapshots)
    Jm = snapshots * cn_mean_fisher(G, R)
    if Jc.shape != Jm.shape:
        raise ValueError(
            f"dR gives {Jc.shape[0]} parameters but G has {Jm.shape[0]} columns; expected the same"
        )
    return Jc + Jm


def sample_cn(mean: ArrayLike, R: ArrayLike, size: int | tuple[int, ...], rng: np.random.Generator) -> Array:
    """Draw ``CN(mean, R)`` vectors, shape ``(*size, N)``: ``y = mean + L w``, ``R = L L^H``, ``w ~ CN(0, I)``.

    Example:
        >>> import numpy as np
        >>> sample_cn(np.zeros(3), np.eye(3), (5, 2), np.random.default_rng(0)).shape
        (5, 2, 3)
    """
    Rm = _cov(R)
    N = Rm.shape[0]
    L = np.linalg.cholesky(Rm)
    shape = (size,) if isinstance(size, int) else tuple(size)
    w = (rng.standard_normal((*shape, N)) + 1j * rng.standard_normal((*shape, N))) / math.sqrt(2.0)
    return np.asarray(mean, dtype=np.complex128) + w @ L.T


# ----------------------------------------------------------------------------------------------
# example 1: complex sinusoid in white noise, y_n = a exp(i(omega n + phi)) + w_n
# ----------------------------------------------------------------------------------------------


def _sinusoid_theta(theta: ArrayLike) -> tuple[float, float, float]:
    th = np.asarray(theta, dtype=np.float64).ravel()
    if th.size != 3 or not np.all(np.isfinite(th)):
        raise ValueError(f"theta must be (amplitude, phase, frequency), got {theta!r}")
    if th[0] <= 0:
        raise ValueError(f"amplitude must be > 0, got {th[0]}")
    return float(th[0]), float(th[1]), float(th[2])


def _check_n(n_samples: int) -> int:
    if int(n_samples) != n_samples or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    return int(n_samples)


def sinusoid_mean(theta: ArrayLike, n_samples: int) -> Array:
    """Mean ``mu_n = a exp(i(omega n + phi))``, n = 0..N-1, for ``theta = (a, phi, omega)``.

    Example:
        >>> sinusoid_mean([2.0, 0.0, 0.0], 2).tolist()
        [(2+0j), (2+0j)]
    """
    a, phi, omega = _sinusoid_theta(theta)
    n = np.arange(_check_n(n_samples), dtype=np.float64)
    return a * np.exp(1j * (omega * n + phi))


def sinusoid_jacobian(theta: ArrayLike, n_samples: int) -> Array:
    """Jacobian ``G = [d mu/d a, d mu/d phi, d mu/d omega] = [u, i a u, i a n u]``, ``u_n = e^{i(omega n + phi)}``.

    Example:
        >>> sinusoid_jacobian([1.0, 0.0, 0.0], 2)[1].tolist()
        [(1+0j), 1j, 1j]
    """
    a, phi, omega = _sinusoid_theta(theta)
    n = np.arange(_check_n(n_samples), dtype=np.float64)
    u = np.exp(1j * (omega * n + phi))
    return np.stack([u, 1j * a * u, 1j * a * n * u], axis=1)


def sinusoid_crb_closed_form(n_samples: int, snr: float) -> dict[str, float]:
    """Closed-form frequency CRBs (phase referenced at n = 0, SNR = a^2/sigma^2).

    * amplitude and phase unknown: ``6 / (SNR N (N^2 - 1))`` (Rife–Boorstyn);
    * phase known (amplitude known or not, its score is orthogonal): ``1 / (2 SNR sum n^2)``
      ``= 3 / (SNR N (N - 1)(2N - 1))``.

    Example:
        >>> sinusoid_crb_closed_form(4, 1.0)["crb_frequency"]
        0.1
    """
    N = _check_n(n_samples)
    if not snr > 0:
        raise ValueError(f"snr must be > 0 (linear), got {snr}")
    return {
        "crb_frequency": 6.0 / (snr * N * (N**2 - 1)),
        "crb_frequency_known_phase": 3.0 / (snr * N * (N - 1) * (2 * N - 1)),
    }


def sinusoid_test_deltas(theta: ArrayLike, n_samples: int, offsets: ArrayLike) -> tuple[Array, Array]:
    """Mean differences for frequency test points ``omega + Delta`` with the best phase offset.

    The phase of the test point is shifted by ``-arg sum_n e^{i Delta n}``, which minimises the chi-square
    divergence ``exp(2 SNR |...|^2) - 1`` over the phase: ``||delta||^2 = 2 a^2 (N - |sum_n e^{i Delta n}|)``.

    Returns:
        ``(deltas (N, m), phase_offsets (m,))``.

    Example:
        >>> D, ph = sinusoid_test_deltas([1.0, 0.0, 1.0], 8, [0.1])
        >>> D.shape, round(float(ph[0]), 6)
        ((8, 1), -0.35)
    """
    a, phi, omega = _sinusoid_theta(theta)
    N = _check_n(n_samples)
    d = np.asarray(offsets, dtype=np.float64).ravel()
    n = np.arange(N, dtype=np.float64)
    dphi = -np.angle(np.exp(1j * np.outer(n, d)).sum(axis=0))
    u = np.exp(1j * (omega * n + phi))
    D = a * u[:, None] * np.expm1(1j * (np.outer(n, d) + dphi[None, :]))
    return D, dphi


def sinusoid_barankin_offsets(n_samples: int, per_bin: int = 4) -> Array:
    """Frequency test offsets ``Delta_k = +-k 2 pi / (N per_bin)`` with ``|Delta_k| <= pi - pi/N``.

    ``per_bin`` points per DFT bin cover the ambiguity (sidelobe) region; the extreme offsets ``+-(pi - pi/N)``
    are one DFT bin apart across the wrap-around (a Dirichlet-kernel null), since the model is 2 pi-periodic in
    omega and test points closer than that across +-pi would only measure the wrap-around. The bound applies to
    estimators unbiased for frequencies in ``(omega - pi, omega + pi)``.

    Example:
        >>> sinusoid_barankin_offsets(4, per_bin=2).round(4).tolist()
        [-2.3562, -1.5708, -0.7854, 0.7854, 1.5708, 2.3562]
    """
    N = _check_n(n_samples)
    if int(per_bin) != per_bin or per_bin < 1:
        raise ValueError(f"per_bin must be an integer >= 1, got {per_bin!r}")
    step = 2 * np.pi / (N * per_bin)
    kmax = int(math.floor((np.pi - np.pi / N) / step + 1e-9))
    if 2 * kmax > MAX_TEST_POINTS:
        allowed = max(1, int(per_bin * MAX_TEST_POINTS / (2 * kmax)))
        raise ValueError(
            f"per_bin={per_bin} gives {2 * kmax} Barankin test points for N={N} (a {2 * kmax + 3}-square Gram of "
            f"{16 * (2 * kmax + 3) ** 2 / 2**30:.1f} GiB and an N×{2 * kmax} test matrix); at most {MAX_TEST_POINTS} "
            f"test points are allowed: use per_bin <= {allowed}"
        )
    pos = step * np.arange(1, kmax + 1)
    return np.concatenate([-pos[::-1], pos])


def sinusoid_bounds(
    n_samples: int,
    snr_db: float,
    *,
    omega: float = 1.0,
    phase: float = 0.5,
    amplitude: float = 1.0,
    per_bin: int = 4,
    hcr_grid: int = 4096,
) -> dict[str, Any]:
    """All frequency bounds for ``y_n = a e^{i(omega n + phi)} + w_n``, ``w ~ CN(0, sigma^2)``, SNR = a^2/sigma^2.

    * ``crb_frequency``: ``[J^{-1}]_{omega omega}`` with ``J = 2 Re(G^H G)/sigma^2`` (a, phi nuisance);
    * ``crb_frequency_known_phase``: CRB with phi known (a still nuisance; orthogonal here);
    * ``barankin_frequency``: mixed bound with Fisher scores of (a, phi, omega) plus Barankin scores at
      ``omega + Delta_k`` (``Delta_k`` from :func:`sinusoid_barankin_offsets`, best phase offset), ``T = [0, 0, 1,
      Delta_k]``: nuisance projected out, >= CRB, and -> CRB at high SNR;
    * ``hcr_frequency``: sup over one test point ``Delta`` (grid on (-pi, pi) + refinement) of the single
      Barankin score with the nuisance Fisher scores (a, phi) projected out; the ``Delta -> 0`` limit is the CRB,
      so the reported value is ``max(sup_grid, CRB)`` and ``hcr_argmax_delta`` is 0 when the limit wins.

    Example:
        >>> b = sinusoid_bounds(16, 20.0)
        >>> bool(abs(b["barankin_frequency"] / b["crb_frequency"] - 1) < 1e-3)
        True
    """
    with blas_single_thread():
        return _sinusoid_bounds(n_samples, snr_db, omega, phase, amplitude, per_bin, hcr_grid)


def _sinusoid_bounds(
    n_samples: int, snr_db: float, omega: float, phase: float, amplitude: float, per_bin: int, hcr_grid: int
) -> dict[str, Any]:
    N = _check_n(n_samples)
    if not np.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    if amplitude <= 0:
        raise ValueError(f"amplitude must be > 0, got {amplitude}")
    snr = 10.0 ** (snr_db / 10.0)
    sigma2 = amplitude**2 / snr
    theta = np.array([amplitude, phase, omega])
    R = sigma2 * np.eye(N)
    G = sinusoid_jacobian(theta, N)
    J = cn_mean_fisher(G, R)
    crb = np.linalg.inv(J)
    crb_w = float(nuisance_crb(J, [2])[0, 0])
    crb_known_phase = float(nuisance_crb(J[np.ix_([0, 2], [0, 2])], [1])[0, 0])

    offsets = sinusoid_barankin_offsets(N, per_bin)
    D, dphi = sinusoid_test_deltas(theta, N, offsets)
    barankin = cn_mean_mixed_bound(
        R, jacobian=G, fisher_cross=np.array([0.0, 0.0, 1.0]), deltas=D, barankin_cross=offsets
    )

    G2 = G[:, :2]

    def curve(d: Array) -> Array:
        Dd, _ = sinusoid_test_deltas(theta, N, d)
        return cn_mean_hcr_curve(R, Dd, d, nuisance_jacobian=G2)

    lim = np.pi * (1 - 1e-9)
    grid = np.linspace(-lim, lim, int(hcr_grid))
    grid = grid[np.abs(grid) > 1e-3 * np.pi / N]
    hcr_sup, hcr_arg = hammersley_chapman_robbins(curve, grid)
    if hcr_sup < crb_w:
        hcr, hcr_arg = crb_w, 0.0
    else:
        hcr = hcr_sup
    # the Barankin set also contains the HCR argmax test point, so Barankin >= HCR
    if hcr_arg != 0.0:
        Dh, _ = sinusoid_test_deltas(theta, N, [hcr_arg])
        barankin = cn_mean_mixed_bound(
            R,
            jacobian=G,
            fisher_cross=np.array([0.0, 0.0, 1.0]),
            deltas=np.concatenate([D, Dh], axis=1),
            barankin_cross=np.append(offsets, hcr_arg),
        )
    return {
        "n_samples": N,
        "snr_db": float(snr_db),
        "snr": snr,
        "noise_variance": sigma2,
        "theta": {"amplitude": amplitude, "phase": phase, "frequency": omega},
        "fisher": J,
        "crb": crb,
        "crb_frequency": crb_w,
        "crb_frequency_known_phase": crb_known_phase,
        "crb_frequency_closed_form": sinusoid_crb_closed_form(N, snr),
        "barankin_frequency": float(max(barankin, crb_w)),
        "barankin_test_points": {
            "scores": "Fisher scores of (amplitude, phase, frequency) + Barankin scores at the frequency offsets",
            "frequency_offsets": np.append(offsets, hcr_arg) if hcr_arg != 0.0 else offsets,
            "phase_offsets": np.append(dphi, sinusoid_test_deltas(theta, N, [hcr_arg])[1])
            if hcr_arg
            else dphi,
            "amplitude_offset": 0.0,
            "per_bin": per_bin,
        },
        "hcr_frequency": float(hcr),
        "hcr_argmax_delta": float(hcr_arg),
        "hcr_grid": {"min": float(grid.min()), "max": float(grid.max()), "points": int(grid.size)},
    }


def wrap_angle(x: ArrayLike) -> Array:
    """Wrap angles to ``[-pi, pi)``.

    Example:
        >>> round(float(wrap_angle(3 * np.pi / 2)), 6)
        -1.570796
    """
    return (np.asarray(x, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


def sinusoid_mle_frequency(y: ArrayLike, *, oversample: int = 8, newton_steps: int = 6) -> Array:
    """Frequency MLE (periodogram peak) for each row of ``y``, vectorised over the rows.

    The MLE with unknown amplitude and phase maximises ``|A(omega)|^2``, ``A(omega) = sum_n y_n e^{-i omega n}``.
    The zero-padded FFT (``oversample * N`` points, next power of two) finds the peak; Newton steps on
    ``f = |A|^2`` (``f' = 2 Re(A* A')``, ``f'' = 2(|A'|^2 + Re(A* A''))``), clipped to half a padded bin, refine it.

    Args:
        y: ``(trials, N)`` complex records.

    Returns:
        ``(trials,)`` estimates in ``[0, 2 pi)``.

    Example:
        >>> import numpy as np
        >>> y = np.exp(1j * 0.7 * np.arange(32))[None]
        >>> round(float(sinusoid_mle_frequency(y)[0]), 10)
        0.7
    """
    Y = np.asarray(y)
    if Y.ndim == 1:
        Y = Y[None]
    if Y.ndim != 2 or Y.shape[1] < 2:
        raise ValueError(f"y must be a (trials, N >= 2) array of records, got shape {Y.shape}")
    if oversample < 1 or newton_steps < 0:
        raise ValueError(f"need oversample >= 1 and newton_steps >= 0, got {oversample}, {newton_steps}")
    Y = Y.astype(np.complex128)
    N = Y.shape[1]
    L = 1 << int(math.ceil(math.log2(oversample * N)))
    P = np.abs(np.fft.fft(Y, n=L, axis=1)) ** 2
    w = 2 * np.pi * np.argmax(P, axis=1) / L
    n = np.arange(N, dtype=np.float64)
    half_bin = np.pi / L
    for _ in range(newton_steps):
        E = Y * np.exp(-1j * np.outer(w, n))
        A = E.sum(axis=1)
        A1 = (E * (-1j * n)).sum(axis=1)
        A2 = (E * (-(n**2))).sum(axis=1)
        f1 = 2 * np.real(np.conj(A) * A1)
        f2 = 2 * (np.abs(A1) ** 2 + np.real(np.conj(A) * A2))
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(f2 < 0, -f1 / f2, 0.0)
        w = w + np.clip(np.nan_to_num(step), -half_bin, half_bin)
    return np.mod(w, 2 * np.pi)


# ----------------------------------------------------------------------------------------------
# example 2: structured covariance, AR(1) Toeplitz R = sigma^2 [rho^{|i-j|}]
# ----------------------------------------------------------------------------------------------


def _check_ar1(dim: int, rho: float, variance: float) -> None:
    if int(dim) != dim or dim < 2:
        raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
    if not -1 < rho < 1:
        raise ValueError(f"rho must be in (-1, 1), got {rho}")
    if not variance > 0:
        raise ValueError(f"variance must be > 0, got {variance}")


def ar1_covariance(dim: int, rho: float, variance: float = 1.0) -> Array:
    """AR(1) (Kac–Murdock–Szegő) Toeplitz covariance ``R_ij = sigma^2 rho^{|i-j|}``.

    Example:
        >>> ar1_covariance(2, 0.5).tolist()
        [[1.0, 0.5], [0.5, 1.0]]
    """
    _check_ar1(dim, rho, variance)
    k = np.abs(np.subtract.outer(np.arange(dim), np.arange(dim)))
    return variance * np.power(float(rho), k)


def ar1_covariance_derivatives(dim: int, rho: float, variance: float = 1.0) -> Array:
    """Derivatives ``(dR/d rho, dR/d sigma^2)``, shape ``(2, dim, dim)``.

    Example:
        >>> ar1_covariance_derivatives(2, 0.5)[0].tolist()
        [[0.0, 1.0], [1.0, 0.0]]
    """
    _check_ar1(dim, rho, variance)
    k = np.abs(np.subtract.outer(np.arange(dim), np.arange(dim)))
    d_rho = variance * np.where(k > 0, k * np.power(float(rho), np.maximum(k - 1, 0)), 0.0)
    return np.stack([d_rho, np.power(float(rho), k)])


def ar1_mle(y: ArrayLike, *, grid: int = 2001, golden_steps: int = 60) -> tuple[Array, Array]:
    """Vectorised MLE of ``(rho, sigma^2)`` from ``(trials, M, N)`` snapshots of ``CN(0, sigma^2 [rho^{|i-j|}])``.

    With ``C = [rho^{|i-j|}]``: ``det C = (1 - rho^2)^{N-1}`` and ``C^{-1}`` is tridiagonal, so with the sample
    covariance S, ``tr(C^{-1} S) = (a_0 + rho^2 (a_0 - a_1) - 2 rho r_1)/(1 - rho^2)`` where ``a_0 = tr S``,
    ``a_1 = S_11 + S_NN``, ``r_1 = Re sum_i S_{i,i+1}``. The variance is concentrated out,
    ``sigma^2(rho) = tr(C^{-1} S)/N``, and ``N log sigma^2(rho) + (N-1) log(1 - rho^2)`` is minimised on a grid in
    ``|rho| < 0.999`` and refined by golden-section search, all trials at once.

    Example:
        >>> import numpy as np
        >>> y = sample_cn(np.zeros(4), ar1_covariance(4, 0.5, 2.0), (1, 4000), np.random.default_rng(0))
        >>> r, v = ar1_mle(y); bool(abs(r[0] - 0.5) < 0.02 and abs(v[0] - 2.0) < 0.1)
        True
    """
    Y = np.asarray(y)
    if Y.ndim == 2:
        Y = Y[None]
    if Y.ndim != 3 or Y.shape[2] < 2:
        raise ValueError(f"y must have shape (trials, snapshots, N >= 2), got {Y.shape}")
    N = Y.shape[2]
    a0 = np.mean(np.sum(np.abs(Y) ** 2, axis=2), axis=1)
    a1 = np.mean(np.abs(Y[:, :, 0]) ** 2 + np.abs(Y[:, :, -1]) ** 2, axis=1)
    r1 = np.mean(np.real(np.sum(Y[:, :, :-1] * np.conj(Y[:, :, 1:]), axis=2)), axis=1)

    def objective(rho: Array) -> Array:
        q = (a0[:, None] + rho**2 * (a0 - a1)[:, None] - 2 * rho * r1[:, None]) / (N * (1 - rho**2))
        return N * np.log(q) + (N - 1) * np.log1p(-(rho**2))

    lim = 0.999
    g = np.linspace(-lim, lim, grid)
    k = np.argmin(objective(g[None, :]), axis=1)
    lo, hi = g[np.maximum(k - 1, 0)], g[np.minimum(k + 1, grid - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(golden_steps):
        x1 = hi - ratio * (hi - lo)
        x2 = lo + ratio * (hi - lo)
        f1 = objective(x1[:, None])[:, 0]
        f2 = objective(x2[:, None])[:, 0]
        left = f1 < f2
        hi = np.where(left, x2, hi)
        lo = np.where(left, lo, x1)
    rho = (lo + hi) / 2
    var = (a0 + rho**2 * (a0 - a1) - 2 * rho * r1) / (N * (1 - rho**2))
    return rho, var


def threshold_snr_db(
    snr_db: ArrayLike, values: ArrayLike, crb: ArrayLike, *, factor: float = 2.0
) -> float | None:
    """Threshold SNR: the lowest SNR from which on ``values <= factor * crb`` at every higher grid SNR.

    Returns None when even the highest SNR exceeds the factor (or the input is empty).

    Example:
        >>> threshold_snr_db([0, 1, 2], [5.0, 1.5, 1.0], [1.0, 1.0, 1.0])
        1.0
    """
    s = np.asarray(snr_db, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray(crb, dtype=np.float64)
    if not (s.shape == v.shape == c.shape) or s.ndim != 1:
        raise ValueError(
            f"snr_db, values and crb must be 1-D of equal length, got {s.shape}, {v.shape}, {c.shape}"
        )
    order = np.argsort(s)
    s, v, c = s[order], v[order], c[order]
    ok = v <= factor * c
    if s.size == 0 or not ok[-1]:
        return None
    bad = np.nonzero(~ok)[0]
    return float(s[0] if bad.size == 0 else s[bad[-1] + 1])
