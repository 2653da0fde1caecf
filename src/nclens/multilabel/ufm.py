r"""Unconstrained feature models (UFM) for single- and multi-label losses, solved to high precision.

The UFM (Mixon et al. 2020; Zhu et al. 2021) treats the last-layer features as free variables:

    min_{W, H, b}  (1/N) Σ_i L(W h_i + b, Y_i) + λ_W/2 ‖W‖_F² + λ_H/2 ‖H‖_F² + λ_b/2 ‖b‖²,

W ∈ R^{K×d}, H = [h_1 … h_N] ∈ R^{d×N}, b ∈ R^K, with L one of

* ``pal``: pick-all-label CE Σ_{k∈Y} −log softmax(z)_k (Li, Li, Wang & Qu, ICML 2024);
* ``pal_normalized``: CE against Y/|Y| — the 0.5/0.5 pair targets of Li et al.'s ML-MNIST/ML-CIFAR
  files (``Exp_MNIST.ipynb``) under ``nn.CrossEntropyLoss`` — and the multi-class CE when every
  |Y| = 1 (Zhu et al. 2021);
* ``mse_half``: ½‖z − y‖² (Han et al. 2022).

The names are those of the one loss registry (:data:`nclens.nn.losses.LOSSES`), with the same meaning.
The data hold ``per_set[m−1]`` samples of every label set of size m (all C(K, m) of them); ``within``
makes one multiplicity imbalanced *within* itself (its label sets, in lexicographic order, get the
counts ``within`` in turn — the within-multiplicity imbalance of the official ``imbalance_angle_stat``,
pair sets of 500, 50 and 5 samples).
:func:`solve_ufm` minimises in float64 with L-BFGS (strong Wolfe line search), then polishes with
pseudo-inverse Newton steps (the Hessian is singular only along the rotations W → WQ, H → HQ), and
reports the final gradient norm.

Theory (why the optimum is MLab NC and what fixes c_m)
------------------------------------------------------
Li et al. (2024, Thm. 1) prove that every global minimiser of the PAL UFM with d ≥ K has
(i) h_i = h_S for all samples with label set S (within-set collapse), (ii) the rows of W are
w_k = α u_k with {u_k} a unit simplex ETF (⟨u_k, u_j⟩ = −1/(K−1)), b = 0 (λ_b > 0), and (iii)
h_S = γ_m Σ_{k∈S} u_k for |S| = m, i.e. the singleton means are the ETF (self-dual to W) and the mean
of a set is a *scaled tag-wise average* of its tags' singleton means. The last step is elementary:
for W fixed at an ETF the per-sample problem is strictly convex in z = W h and symmetric under
permutations of S and of its complement, so its solution has equal logits z_in on S and z_out off S,
which forces h_S ∝ Σ_{k∈S} u_k. With this form the logit gap is δ_m = z_in − z_out = α γ_m K/(K−1)
for every m, the PAL loss of a sample is m·log(m + (K−m) e^{−δ_m}), ‖h_S‖² = γ_m² m(K−m)/(K−1), and
the objective reduces to a function of α and the gaps (N_m = C(K, m)·per_set[m−1] samples of size m):

    F(α, δ) = (1/N) Σ_m N_m w_m log(m + (K−m) e^{−δ_m}) + λ_W K α²/2
              + (λ_H/(2α²)) Σ_m N_m δ_m² m(K−m)(K−1)/K²,

with w_m = m for PAL and w_m = 1 for ``pal_normalized`` (Li et al.'s theorem covers PAL; for the
normalised CE the same ETF form is an assumption, which the solver confirms to machine precision
for K = 4, per-set 20,10). Stationarity in δ_m gives, with
τ = α² K²/(N λ_H (K−1)),

    pal:  δ_m (m e^{δ_m} + K − m) = τ          pal_normalized:  m δ_m (m e^{δ_m} + K − m) = τ,

and stationarity in α gives λ_W K α⁴ = λ_H Σ_m N_m δ_m² m(K−m)(K−1)/K². Hence the *tag-wise scale*

    c_m = ⟨h_S − μ_G¹, a_S⟩/‖a_S‖² = m γ_m/γ_1 = m δ_m/δ_1,   a_S = (1/m) Σ_{k∈S} h_k,

is fixed by the single number τ (μ_G¹ = 0 at the optimum), i.e. by λ_W, λ_H and the counts, which
enter only through τ and α. Since m e^δ + K − m − (e^δ + K − 1) = (m−1)(e^δ − 1) > 0, δ_m < δ_1 and
so c_m < m. For PAL, c_m → m in both limits: τ → 0 (δ_m ≈ τ/K for every m) and τ → ∞
(δ_m ≈ W(τ/m), so δ_m/δ_1 → 1). Weaker weight decay means larger features, larger τ, and c_m
closer to m (K = 4, per-set 20,10: c_2 = 1.676, 1.710, 1.752 at λ = 1e-2, 5e-3, 2e-3; 1.39 for
``pal_normalized`` at 5e-3). For ``mse_half`` the optimal features are linear in the targets and
c_m = m exactly.

Three consequences used by the experiments. (1) The counts enter only through the totals N_m per
multiplicity, so the theory covers multiplicities of different sizes (20 per singleton, 10 per pair,
5 per triple) as long as the sets of one multiplicity are balanced (Li et al.'s assumption). (2) With
a *fixed* classifier of row norm α (a fixed ETF head) only the δ-stationarity remains: c_m follows
from τ(α) (``ufm_theory(..., alpha=α)``). (3) The δ-stationarity ties the gaps of all multiplicities
to one τ, so the singleton gap alone predicts c_m: τ = δ_1 (e^{δ_1} + K − 1) (both losses), then δ_m
from the equation above (:func:`gap_implied_scale`) — a prediction that needs no λ and can be
compared with a trained network's c_m at every epoch. Within-multiplicity imbalance (``within``) is
outside the theorem: each sample's feature still solves its own convex problem given W, so c_S would
be equal for all pairs if W stayed an ETF; the study kind measures how far W and c_S move.
:func:`ufm_theory` solves this scalar problem (a nested bracketed root search) and the solver's
numerical optimum is tested against it. For singletons only (multi-class CE, n per class) the
problem has the closed form of Zhu et al. (2021, Thm. 3.1), re-derived in :func:`zhu_ce_closed_form`:
with ρ = (K−1)√(n λ_W λ_H) < (K−1)/K, δ* = log((K−1)(1−ρ)/ρ), ‖w_k‖² = δ*(K−1)/K · √(λ_H n/λ_W),
h_k = √(λ_W/(λ_H n)) w_k (and W = H = 0 when ρ ≥ (K−1)/K).

Example:
    >>> from nclens.multilabel.ufm import UFMConfig, solve_ufm
    >>> sol = solve_ufm(UFMConfig(loss="pal", num_classes=3, dim=4, per_set=(4, 2)), progress=False)
    >>> sol.grad_norm < 1e-9 and sol.metrics["nc1_sets"] < 1e-8
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor

from nclens.core.console import progress_bar
from nclens.data.multilabel import label_sets
from nclens.nn.losses import get_loss

__all__ = [
    "UFM_LOSSES",
    "UFMConfig",
    "UFMSolution",
    "ufm_labels",
    "ufm_objective",
    "solve_ufm",
    "ufm_theory",
    "gap_implied_scale",
    "scales_by_count",
    "ufm_sets",
    "solution_report",
    "zhu_ce_closed_form",
    "THEORY_LOSSES",
]

#: The UFM's losses, by their names in the one loss registry (:data:`nclens.nn.losses.LOSSES`).
UFM_LOSSES = {name: get_loss(name) for name in ("pal", "pal_normalized", "mse_half")}
#: The losses the reduced theory (:func:`ufm_theory`) covers.
THEORY_LOSSES = ("pal", "pal_normalized")


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class UFMConfig:
    """Settings of one UFM problem.

    Args:
        loss: ``"pal"``, ``"pal_normalized"`` (CE against Y/|Y|) or ``"mse_half"`` (½‖z − y‖²).
        num_classes: K ≥ 2 tags.
        dim: feature dimension d.
        per_set: samples per label set, by multiplicity (``(20, 10)``: 20 per singleton, 10 per pair).
        within: optional counts for the label sets of multiplicity ``within_m``, given to the sets in
            lexicographic order in turn (``(10, 5)``: pairs {0,1}: 10, {0,2}: 5, {0,3}: 10, ...);
            empty = balanced (``per_set``).
        within_m: the multiplicity ``within`` applies to (2 ≤ within_m ≤ len(per_set)).
        wd_w, wd_h, wd_b: weight decays λ_W, λ_H, λ_b (λ_H multiplies ‖H‖_F² of all N features).
        seed: seed of the random initialisation.
        init_scale: standard deviation of the initial W and H entries.
        max_iter: L-BFGS iteration budget.
        tol: stop when the gradient 2-norm falls below this.
        newton_max_params: run the Newton polish when the problem has at most this many variables.

    Raises:
        ValueError: an unknown loss, non-finite or out-of-range numbers, multiplicities ≥ K.
    """

    loss: str = "pal"
    num_classes: int = 4
    dim: int = 8
    per_set: tuple[int, ...] = (20, 10)
    within: tuple[int, ...] = ()
    within_m: int = 2
    wd_w: float = 5e-3
    wd_h: float = 5e-3
    wd_b: float = 5e-3
    seed: int = 0
    init_scale: float = 0.1
    max_iter: int = 20000
    tol: float = 1e-12
    newton_max_params: int = 4000

    def __post_init__(self) -> None:
        if self.loss not in UFM_LOSSES:
            raise ValueError(f"loss must be one of {list(UFM_LOSSES)}, got {self.loss!r}")
        _count("num_classes", self.num_classes, 2)
        _count("dim", self.dim, 1)
        per = tuple(self.per_set)
        if not per or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in per) or per[0] <= 0:
            raise ValueError(f"per_set needs a positive singleton count then non-negative counts, got {self.per_set!r}")
        if len(per) >= self.num_classes:
            raise ValueError(
                f"per_set lists multiplicities up to {len(per)} but must stay below K={self.num_classes} "
                f"(a set of all K tags has no tag-wise direction)"
            )
        object.__setattr__(self, "per_set", per)
        within = tuple(self.within)
        if within:
            if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in within):
                raise ValueError(f"within must list positive integer counts, got {self.within!r}")
            if not 2 <= self.within_m <= len(per) or per[self.within_m - 1] == 0:
                raise ValueError(
                    f"within_m must name a multiplicity m >= 2 present in per_set (1..{len(per)} with a "
                    f"positive count), got within_m={self.within_m!r} for per_set={list(per)}"
                )
        object.__setattr__(self, "within", within)
        for name in ("wd_w", "wd_h", "wd_b"):
            if _finite(name, getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.wd_w <= 0 or self.wd_h <= 0:
            raise ValueError(f"wd_w and wd_h must be > 0 (otherwise the problem is unbounded), got "
                             f"{self.wd_w}, {self.wd_h}")
        if _finite("init_scale", self.init_scale) <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale!r}")
        if _finite("tol", self.tol) <= 0:
            raise ValueError(f"tol must be a finite number > 0 (the target gradient norm), got {self.tol!r}")
        _count("max_iter", self.max_iter, 1)
        _count("newton_max_params", self.newton_max_params, 0)
        _count("seed", self.seed, 0)


@dataclass(frozen=True)
class UFMSolution:
    """A solved UFM: parameters (float64), labels, objective parts, convergence and metrics."""

    config: UFMConfig
    weight: Tensor
    features: Tensor
    bias: Tensor
    labels: Tensor
    loss: float
    objective: float
    grad_norm: float
    iterations: int
    newton_steps: int
    converged: bool
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no raw matrices), with norms per multiplicity."""
        mult = self.labels.sum(1)
        norms = {f"feature_norm_m{int(m)}": float(self.features[mult == m].norm(dim=1).mean())
                 for m in torch.unique(mult).tolist()}
        return {
            "loss": self.loss,
            "objective": self.objective,
            "grad_norm": self.grad_norm,
            "iterations": self.iterations,
            "newton_steps": self.newton_steps,
            "converged": self.converged,
            "weight_fro": float(self.weight.norm()),
            "weight_row_norm_mean": float(self.weight.norm(dim=1).mean()),
            "bias_norm": float(self.bias.norm()),
            **norms,
            **dict(self.metrics),  # flat, with the same keys as `nclens measure`
        }


def ufm_sets(num_classes: int, per_set: tuple[int, ...], within: tuple[int, ...] = (),
             within_m: int = 2) -> tuple[Tensor, Tensor]:
    """(S, K) int64 label-set rows and (S,) sample counts of the UFM data (see :class:`UFMConfig`)."""
    members, reps = label_sets(num_classes, per_set)
    if within:
        sel = (members.sum(1) == within_m).nonzero().flatten()  # lexicographic order (torch.combinations)
        counts = torch.tensor(within, dtype=reps.dtype)
        reps = reps.clone()
        reps[sel] = counts[torch.arange(sel.numel()) % counts.numel()]
    return members, reps


def ufm_labels(num_classes: int, per_set: tuple[int, ...], within: tuple[int, ...] = (),
               within_m: int = 2) -> Tensor:
    """(N, K) float64 multi-hot labels of the UFM data (samples grouped by label set).

    Example:
        >>> ufm_labels(3, (2, 1)).sum(0).tolist(), ufm_labels(3, (1, 1), within=(2, 1)).shape[0]
        ([4.0, 4.0, 4.0], 8)
    """
    members, reps = ufm_sets(num_classes, per_set, within, within_m)
    return members.repeat_interleave(reps, dim=0).to(torch.float64)


def _split(x: Tensor, k: int, d: int, n: int) -> tuple[Tensor, Tensor, Tensor]:
    w = x[: k * d].reshape(k, d)  # (K, d)
    h = x[k * d : k * d + n * d].reshape(n, d)  # (N, d)
    b = x[k * d + n * d :]  # (K,)
    return w, h, b


def _data_loss(loss: str, z: Tensor, y: Tensor) -> Tensor:
    """(1/N) Σ_i L(z_i, Y_i) without input checks (traceable by ``torch.func``); labels checked upstream.

    Equal to :data:`UFM_LOSSES` ``[loss](z, y)`` (tested).
    """
    if loss == "mse_half":
        return 0.5 * (z - y).square().sum(dim=1).mean()
    target = y if loss == "pal" else y / y.sum(dim=1, keepdim=True)
    return -(target * torch.log_softmax(z, dim=1)).sum(dim=1).mean()


def ufm_objective(cfg: UFMConfig, w: Tensor, h: Tensor, b: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(objective, data loss) = ((1/N)ΣL + λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖², (1/N)ΣL)."""
    loss = _data_loss(cfg.loss, h @ w.T + b, y)
    reg = 0.5 * (cfg.wd_w * w.square().sum() + cfg.wd_h * h.square().sum() + cfg.wd_b * b.square().sum())
    return loss + reg, loss


def _newton_polish(f, x: Tensor, max_steps: int = 8) -> tuple[Tensor, int]:  # noqa: ANN001 - closure
    """Pseudo-inverse Newton steps with backtracking on the gradient norm (rotation null space dropped)."""
    steps = 0
    for _ in range(max_steps):
        xg = x.detach().requires_grad_(True)
        g = torch.autograd.grad(f(xg), xg)[0]
        gnorm = float(g.norm())
        if gnorm < 1e-15:
            break
        hess = torch.func.hessian(f)(x.detach())  # (P, P)
        evals, evecs = torch.linalg.eigh(0.5 * (hess + hess.T))
        cut = 1e-10 * float(evals.abs().max())
        if float(evals.min()) < -cut * 1e3:
            break  # not in the basin of a minimum: leave it to L-BFGS
        inv = torch.where(evals > cut, 1.0 / evals, torch.zeros_like(evals))
        step = -(evecs @ (inv * (evecs.T @ g)))
        t, improved = 1.0, False
        for _ in range(20):
            cand = (x + t * step).detach().requires_grad_(True)
            gc = torch.autograd.grad(f(cand), cand)[0]
            if float(gc.norm()) < gnorm:
                x, improved = cand.detach(), True
                break
            t *= 0.5
        if not improved:
            break
        steps += 1
    return x.detach(), steps


def solve_ufm(cfg: UFMConfig, *, progress: bool = True, device: torch.device | str | None = None) -> UFMSolution:
    """Minimise the UFM objective of ``cfg`` in float64 and measure the solution's collapse.

    L-BFGS (strong Wolfe, history 100) until the gradient 2-norm is below ``cfg.tol`` or the budget
    is spent, then Newton polish (problems with ≤ ``newton_max_params`` variables).

    Returns:
        a :class:`UFMSolution`; ``metrics`` are :func:`~nclens.core.metrics.multilabel.compute_multilabel_metrics`
        (multi-label data) or :func:`~nclens.core.metrics.compute_metrics` (singletons only) of (H, W).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    k, d = cfg.num_classes, cfg.dim
    y = ufm_labels(k, cfg.per_set, cfg.within, cfg.within_m).to(device)
    n = y.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    x0 = torch.cat([
        cfg.init_scale * torch.randn(k * d + n * d, generator=gen, dtype=torch.float64),
        torch.zeros(k, dtype=torch.float64),
    ]).to(device)

    def f(x: Tensor) -> Tensor:
        return ufm_objective(cfg, *_split(x, k, d, n), y)[0]

    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=200, max_eval=400, tolerance_grad=0.0, tolerance_change=0.0,
                            history_size=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        val = f(x)
        val.backward()
        return val

    iterations, grad_norm, stalls = 0, math.inf, 0
    with progress_bar(progress, f"UFM {cfg.loss} (L-BFGS iterations)", cfg.max_iter) as advance:
        while iterations < cfg.max_iter:
            before = x.detach().clone()
            opt.step(closure)
            done = int(opt.state[opt._params[0]].get("n_iter", iterations))
            advance(min(done, cfg.max_iter) - iterations)
            iterations = done
            grad_norm = float(_grad(f, x).norm())
            if not math.isfinite(grad_norm):
                raise FloatingPointError(f"the UFM solver diverged (gradient norm {grad_norm}) after {iterations} "
                                         f"L-BFGS iterations; try a smaller init_scale")
            if grad_norm < cfg.tol:
                break
            stalls = stalls + 1 if torch.equal(before, x.detach()) else 0
            if stalls >= 2:
                break
    xs, newton = x.detach(), 0
    if grad_norm >= cfg.tol and xs.numel() <= cfg.newton_max_params:
        xs, newton = _newton_polish(f, xs)
        grad_norm = float(_grad(f, xs).norm())
    w, h, b = _split(xs, k, d, n)
    obj, loss = ufm_objective(cfg, w, h, b, y)
    metrics = _solution_metrics(h, y, w)
    return UFMSolution(cfg, w.clone(), h.clone(), b.clone(), y, float(loss), float(obj), grad_norm, iterations,
                       newton, grad_norm < max(cfg.tol, 1e-9), metrics)


def _grad(f, x: Tensor) -> Tensor:  # noqa: ANN001 - closure
    xg = x.detach().requires_grad_(True)
    return torch.autograd.grad(f(xg), xg)[0]


def _solution_metrics(h: Tensor, y: Tensor, w: Tensor) -> dict[str, float]:
    if bool((y.sum(1) == 1).all()):
        from nclens.core.metrics import compute_metrics
        from nclens.core.stats import ClassStats

        stats = ClassStats(num_classes=y.shape[1]).update(h, y.argmax(1))
        return compute_metrics(stats, w)
    from nclens.core.metrics.multilabel import compute_multilabel_metrics

    return compute_multilabel_metrics(h, y, w)


# ------------------------------------------------------------------ theory
def _gap(m: int, k: int, tau: float, weight_m: float) -> float:
    """δ ≥ 0 solving (m/w_m) δ (m e^δ + K − m) = τ (``pal``: w_m = m; ``pal_normalized``: w_m = 1)."""
    scale = m / weight_m

    def eq(delta: float) -> float:
        return scale * delta * (m * math.exp(delta) + k - m) - tau

    hi = 1.0
    while eq(hi) < 0:
        hi *= 2.0
    return brentq(eq, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)


def _loss_weight(loss: str, m: int) -> float:
    if loss not in THEORY_LOSSES:
        raise ValueError(f"the reduced theory covers the losses {list(THEORY_LOSSES)}, got {loss!r}")
    return float(m) if loss == "pal" else 1.0


def ufm_theory(loss: str, num_classes: int, per_set: tuple[int, ...], wd_w: float, wd_h: float, *,
               totals: dict[int, int] | None = None, alpha: float | None = None) -> dict[str, Any]:
    """Predicted optimum of the ``pal`` / ``pal_normalized`` UFM from the reduced scalar problem (module doc).

    Args:
        loss: ``"pal"`` or ``"pal_normalized"``.
        num_classes: K.
        per_set: samples per label set by multiplicity (balanced within each multiplicity).
        wd_w, wd_h: λ_W and λ_H.
        totals: optional samples per multiplicity {m: N_m} replacing C(K, m)·per_set[m−1] (the
            prediction for within-imbalanced counts *if* W stayed an ETF).
        alpha: a fixed classifier row norm (a fixed ETF head): only the δ-stationarity is solved.

    Returns:
        ``{"alpha": ‖w_k‖, "gaps": {m: δ_m}, "feature_norms": {m: ‖h_S‖}, "tagwise_scale": {m: c_m},
        "objective": F, "trivial": bool}`` — ``trivial`` when W = H = 0 is optimal.

    Example:
        >>> round(ufm_theory("pal", 4, (20, 10), 5e-3, 5e-3)["tagwise_scale"][2], 4)
        1.7104
        >>> round(ufm_theory("pal_normalized", 4, (20, 10), 5e-3, 5e-3)["tagwise_scale"][2], 4)
        1.3913
    """
    k = int(num_classes)
    per = tuple(int(c) for c in per_set)
    if totals is None:
        n_m = {m: math.comb(k, m) * c for m, c in enumerate(per, start=1) if c > 0}
    else:
        n_m = {int(m): int(c) for m, c in totals.items() if int(c) > 0}
    mults = sorted(n_m)
    if 1 not in mults:
        raise ValueError("the theory needs singletons (per_set[0] > 0)")
    n = sum(n_m.values())
    w_m = {m: _loss_weight(loss, m) for m in mults}
    for name, value in (("wd_w", wd_w), ("wd_h", wd_h)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    def gaps(alpha: float) -> dict[int, float]:
        tau = alpha**2 * k**2 / (n * wd_h * (k - 1))
        return {m: _gap(m, k, tau, w_m[m]) for m in mults}

    def objective(alpha: float) -> float:
        if alpha == 0.0:
            return sum(n_m[m] * w_m[m] * math.log(k) for m in mults) / n
        g = gaps(alpha)
        data = sum(n_m[m] * w_m[m] * math.log(m + (k - m) * math.exp(-g[m])) for m in mults) / n
        reg_h = wd_h / (2 * alpha**2) * sum(n_m[m] * g[m] ** 2 * m * (k - m) * (k - 1) / k**2 for m in mults)
        return data + wd_w * k * alpha**2 / 2 + reg_h

    def stationarity(log_alpha: float) -> float:
        alpha = math.exp(log_alpha)
        g = gaps(alpha)
        rhs = wd_h * sum(n_m[m] * g[m] ** 2 * m * (k - m) * (k - 1) / k**2 for m in mults)
        return (wd_w * k * alpha**4 - rhs) / (wd_w * k * alpha**4 + rhs)

    if alpha is not None:
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        best = objective(alpha)
    else:
        grid = np.linspace(-12.0, 8.0, 401)
        vals = [stationarity(u) for u in grid]
        candidates = [(0.0, objective(0.0))]
        for u0, u1, v0, v1 in zip(grid[:-1], grid[1:], vals[:-1], vals[1:]):
            if v0 < 0 <= v1:  # a minimum of the profile objective (∂F/∂α from − to +)
                u = brentq(stationarity, u0, u1, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500)
                candidates.append((math.exp(u), objective(math.exp(u))))
        alpha, best = min(candidates, key=lambda t: t[1])
    if alpha == 0.0:
        return {"alpha": 0.0, "gaps": dict.fromkeys(mults, 0.0), "feature_norms": dict.fromkeys(mults, 0.0),
                "tagwise_scale": {}, "objective": best, "trivial": True}
    g = gaps(alpha)
    gamma = {m: g[m] * (k - 1) / (k * alpha) for m in mults}
    return {
        "alpha": alpha,
        "gaps": g,
        "feature_norms": {m: gamma[m] * math.sqrt(m * (k - m) / (k - 1)) for m in mults},
        "tagwise_scale": {m: m * g[m] / g[1] for m in mults if m >= 2},
        "objective": best,
        "trivial": False,
    }


def gap_implied_scale(loss: str, num_classes: int, gap_1: float, m: int = 2) -> float:
    """c_m predicted from the singleton logit gap δ_1 alone (module doc, consequence 3).

    τ = δ_1 (e^{δ_1} + K − 1), δ_m solves (m/w_m) δ_m (m e^{δ_m} + K − m) = τ, c_m = m δ_m/δ_1.

    Example:
        >>> th = ufm_theory("pal", 4, (20, 10), 5e-3, 5e-3)
        >>> abs(gap_implied_scale("pal", 4, th["gaps"][1]) - th["tagwise_scale"][2]) < 1e-9
        True
    """
    k = int(num_classes)
    if not 2 <= m < k:
        raise ValueError(f"m must lie in [2, K−1] = [2, {k - 1}], got {m}")
    if not (math.isfinite(gap_1) and gap_1 > 0):
        raise ValueError(f"the singleton gap must be a finite number > 0, got {gap_1!r}")
    tau = gap_1 * (math.exp(gap_1) + k - 1) / (1.0 / _loss_weight(loss, 1))
    return m * _gap(m, k, tau, _loss_weight(loss, m)) / gap_1


def scales_by_count(sol: UFMSolution) -> dict[int, dict[int, list[float]]]:
    """The tag-wise scale c_S of every label set, grouped by multiplicity and by the set's sample count.

    Returns ``{m: {count: [c_S, ...]}}`` (sets of multiplicity m ≥ 2 in lexicographic order within a count).
    """
    from nclens.core.metrics.multilabel import tagwise_scales
    from nclens.core.multilabel import MultiLabelStats, encode_label_sets

    cfg = sol.config
    members, reps = ufm_sets(cfg.num_classes, cfg.per_set, cfg.within, cfg.within_m)
    count_of = dict(zip(encode_label_sets(members).tolist(), reps.tolist()))
    stats = MultiLabelStats(cfg.num_classes).update(sol.features, sol.labels)
    out: dict[int, dict[int, list[float]]] = {}
    for m, per in tagwise_scales(stats).items():
        groups: dict[int, list[float]] = {}
        for code, c in zip(per["codes"].tolist(), per["scale"].tolist()):
            groups.setdefault(int(count_of[int(code)]), []).append(float(c))
        out[int(m)] = dict(sorted(groups.items(), reverse=True))
    return out


def zhu_ce_closed_form(num_classes: int, per_class: int, wd_w: float, wd_h: float) -> dict[str, float]:
    """Closed-form optimum of the multi-class CE UFM (Zhu et al. 2021, Thm. 3.1), b = 0 for λ_b > 0.

    ρ = (K−1)√(n λ_W λ_H); if ρ < (K−1)/K: δ* = log((K−1)(1−ρ)/ρ) (the logit gap),
    ‖w_k‖² = δ*(K−1)/K·√(λ_H n/λ_W), ‖h_k‖ = √(λ_W/(λ_H n))‖w_k‖, W rows a simplex ETF, h_k ∥ w_k;
    objective log(1 + (K−1)e^{−δ*}) + ρ δ*. Otherwise W = H = 0 with objective log K.
    """
    k, n = int(num_classes), int(per_class)
    rho = (k - 1) * math.sqrt(n * wd_w * wd_h)
    if rho >= (k - 1) / k:
        return {"gap": 0.0, "w_norm": 0.0, "h_norm": 0.0, "objective": math.log(k), "trivial": True}
    gap = math.log((k - 1) * (1 - rho) / rho)
    w_norm = math.sqrt(gap * (k - 1) / k * math.sqrt(wd_h * n / wd_w))
    return {
        "gap": gap,
        "w_norm": w_norm,
        "h_norm": math.sqrt(wd_w / (wd_h * n)) * w_norm,
        "objective": math.log(1 + (k - 1) * math.exp(-gap)) + rho * gap,
        "trivial": False,
    }


def solution_report(sol: UFMSolution) -> dict[str, Any]:
    """A solved UFM with the comparison to the theory: what ``nclens ufm --json`` writes.

    Keys: ``config``, the :meth:`UFMSolution.summary` (metrics at the top level, the same keys as
    ``nclens measure``), ``theory`` (:func:`ufm_theory` with ``check`` = absolute errors) for the
    ``pal`` / ``pal_normalized`` losses, ``zhu_closed_form`` for singletons only with λ_b > 0, and
    ``tagwise_scale_by_count`` when ``within`` is set.
    """
    from dataclasses import asdict

    cfg = sol.config
    out: dict[str, Any] = {"config": asdict(cfg), **sol.summary()}
    singletons_only = all(c == 0 for c in cfg.per_set[1:])
    if cfg.loss in THEORY_LOSSES:
        members, reps = ufm_sets(cfg.num_classes, cfg.per_set, cfg.within, cfg.within_m)
        mult = members.sum(1)
        totals = {int(m): int(reps[mult == m].sum()) for m in torch.unique(mult).tolist()}
        theory = ufm_theory(cfg.loss, cfg.num_classes, cfg.per_set, cfg.wd_w, cfg.wd_h, totals=totals)
        check = {"objective_abs_err": abs(theory["objective"] - sol.objective),
                 "w_row_norm_abs_err": abs(theory["alpha"] - out["weight_row_norm_mean"])}
        for m, c in theory["tagwise_scale"].items():
            key = f"tagwise_scale_m{m}"
            if key in sol.metrics:
                check[f"{key}_abs_err"] = abs(c - sol.metrics[key])
        out["theory"] = {**theory, "check": check,
                         "assumes": "balanced label sets within each multiplicity (Li et al. 2024)"
                         + (" — NOT the case here (within); shown with the same totals N_m" if cfg.within else "")}
        if singletons_only and cfg.wd_b > 0:
            zhu = zhu_ce_closed_form(cfg.num_classes, cfg.per_set[0], cfg.wd_w, cfg.wd_h)
            out["zhu_closed_form"] = {
                **zhu,
                "check": {
                    "w_norm_abs_err": abs(zhu["w_norm"] - out["weight_row_norm_mean"]),
                    "h_norm_abs_err": abs(zhu["h_norm"] - out["feature_norm_m1"]),
                    "objective_abs_err": abs(zhu["objective"] - sol.objective),
                },
            }
    if cfg.within:
        out["tagwise_scale_by_count"] = {
            str(m): {str(c): v for c, v in groups.items()} for m, groups in scales_by_count(sol).items()
        }
    return out
