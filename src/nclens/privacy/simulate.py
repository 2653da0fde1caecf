"""Layer-peeled simulator of private last-layer training on (near-)collapsed features.

Features (Wang, Zhu, Su & Wang, ICML 2024, the layer-peeled model): the K vertices μ_c (radius r)
of a simplex ETF in R^p, optionally moved by a common offset b ⟂ span(μ) of norm ``offset``, and
perturbed

* per sample (``perturb_kind="gaussian"``): h_i = μ_{y_i} + b + δ_i, δ_i ~ N(0, s² I_p) with
  per-coordinate std s = τ (``perturb``; the shift norm then grows as τ√p) or s = β/√p
  (``shift_norm`` β; E‖δ_i‖² = β² whatever p — the threshold sweep's perturbation);
* per class (``"structured"``): h_i = μ_{y_i} + b + v_{y_i}, v_c fixed: v_c ~ N(0, τ² I_p) (``perturb``;
  norm ≈ τ√p), or (``shift_norm`` β) v_c = β a_cM/‖a_cM‖ with M the K×p matrix of the μ_c and
  a_c ~ N(0, I_K) drawn independently of p — shifts of norm exactly β *inside the ETF's span*, so the
  Gram matrix of the class centres, and with it the feature shift and the error distribution, is the
  same for every p. (Random directions in R^p would not hold the shift fixed: as p grows they become
  orthogonal to each other and to the μ_c, the centres' Gram tends to G + β²I, again a simplex ETF, and
  the measured shift falls to 0.)

Class sizes n_c are equal, or (``imbalance`` ρ > 1) proportional to ρ^{−c/(K−1)} (largest class ρ
times the smallest). A linear head W (K×p, no bias) starts at W₀ — 0, or (``init_norm`` η₀ > 0, the
model-space perturbation) W₀ = η₀ A C/‖A C‖_F, with C the K×d class centres as the head sees them
(μ_c + b + v_c after the remedies) and A ~ N(0, I) a fixed K×K draw independent of p: a random head of
Frobenius norm η₀ *in the span of the features*, whose scores W₀C^T = η₀ A CC^T/‖AC‖_F depend on the
centres' Gram matrix only, hence not on p (a W₀ spread over all p coordinates would act on the features
with a norm ≈ η₀√(K/p) and confound the perturbation with the dimension) — and takes T NoisyGD steps
(full batch, sampling rate 1) on a registered loss (:data:`nclens.nn.losses.LOSSES`: ``ce``, ``mse``
= mean over N·K, ``mse_sum``, ``mse_half``)::

    W ← W − (η/n) ( Σ_i clip_C(g_i) + σ C Z ),   g_i = r_i h_iᵀ,   Z ~ N(0, I),

with r_i = ∂ℓ/∂z at z = W h_i: softmax(z) − e_y (ce) or c (z − e_y), c = 2/K (mse), 2 (mse_sum), 1
(mse_half); clip_C(g) = g · min(1, C/‖g‖), ‖g_i‖ = ‖r_i‖ ‖h_i‖ (an outer product).

Randomness. The dataset (per-sample perturbations, test and public samples) is drawn from a generator
seeded by ``seed``; the DP noise from a second stream seeded by (``seed``, p), so that Monte Carlo runs at
different p are independent even where the exact reduction below makes their bases the same size.

Exact reduction. Every gradient row lies in the span S of the training features and every score
W h that is ever read is that of a training or test feature, so only W restricted to S ∪ span(test)
matters, and N(0, I) restricted to any subspace is N(0, I) there. When p exceeds n + m the simulator
therefore runs in an orthonormal basis Q (p × (n+m)) of that span — the same distribution of
errors as the p-dimensional run, at a cost independent of p (tested against the full run).

Closed form (one step, exactly collapsed features: no per-sample spread — exact ETF, offset,
structured shifts, after PCA/normalisation). With class means M_c (Gram G = MMᵀ), initial scores
B = W₀Mᵀ, residuals u_c = r(B_{·c}, c), clip factors a_c = min(1, C/(‖u_c‖ ‖M_c‖)) and
S_{ky} = Σ_c n_c a_c u_{c,k} G_{cy}, the score of class k on a test point of class y is
B_{ky} − (η/n)(S_{ky} + σ C ‖M_y‖ ξ_k), ξ iid N(0, 1), so::

    error = mean_y [ 1 − ∫ φ(z) Π_{k≠y} Φ(z + t_{yk}) dz ],
    t_{yk} = [ (n/η)(B_{yy} − B_{ky}) − (S_{yy} − S_{ky}) ] / (σ C ‖M_y‖),

independent of p. For the exact ETF, balanced classes and W₀ = 0 (ce) this is
t = a r n/((K−1)σC), a = min(1, C/(√((K−1)/K) r)) — with r = 1, C ≥ √((K−1)/K), t = 1/((K−1)s),
s = σC/n; for the MSE losses a is replaced by min(c, C/r). Imbalance, the loss, W₀ and the learning
rate (only through W₀) enter through u, a, n_c and B. For per-sample Gaussian shifts with
E‖δ‖² = β² the same formula with ‖h_i‖² = ‖M_c‖² + β² in the clip factors and the noise is the
p → ∞ limit (``error_large_p``): the shift directions become orthogonal to everything else.

Remedies: PCA to d dimensions fitted on an independent *public* sample of the same model (no privacy
cost) and per-sample L2 normalisation, applied to train and test features before training.

Example:
    >>> from nclens.privacy import SimulationConfig, simulate_noisy_gd
    >>> res = simulate_noisy_gd(SimulationConfig(num_classes=5, dim=20, samples=50, noise_multiplier=2.0,
    ...                                          clip=1.0, trials=400, seed=0))
    >>> abs(res.error - res.error_closed_form) < 3 * res.error_stderr + 1e-3
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nclens.core.console import progress_bar
from nclens.core.geometry import simplex_etf
from nclens.core.stats import ClassStats
from nclens.nn.losses import LOSSES
from nclens.privacy.accounting import noisy_gd_epsilon
from nclens.privacy.shift import feature_shift_from_stats

__all__ = [
    "SIM_LOSSES",
    "SimulationConfig",
    "SimulationResult",
    "LayerPeeledModel",
    "layer_peeled_model",
    "class_counts",
    "loss_residual",
    "closed_form_error",
    "one_step_threshold",
    "one_step_thresholds",
    "one_step_error",
    "error_from_thresholds",
    "noisy_gd_linear",
    "simulate_noisy_gd",
]

_KINDS = ("gaussian", "structured")
#: Losses the simulator trains with: names (and meanings) of the one registry nclens.nn.losses.LOSSES.
SIM_LOSSES = ("ce", "mse", "mse_sum", "mse_half")
assert all(name in LOSSES for name in SIM_LOSSES)
#: Elements of one (trials × K × d) chunk of heads (float64 ≈ 64 MiB).
_CHUNK_ELEMENTS = 2**23


def _mse_scale(loss: str, num_classes: int) -> float:
    """c in ∂ℓ/∂z = c (z − t): the registry's mse = (1/K)Σ_k → 2/K; mse_sum = Σ_k → 2; mse_half → 1."""
    return {"mse": 2.0 / num_classes, "mse_sum": 2.0, "mse_half": 1.0}[loss]


def loss_residual(logits: Tensor, onehot: Tensor, loss: str) -> Tensor:
    """∂ℓ/∂z per sample (…, K) for the registered loss ``loss`` at logits z and one-hot targets.

    ce: softmax(z) − e_y; mse / mse_sum / mse_half: c (z − e_y) with c = 2/K, 2, 1 (the derivatives
    of the per-sample losses of :data:`nclens.nn.losses.LOSSES`).
    """
    if loss == "ce":
        return torch.softmax(logits, dim=-1) - onehot
    if loss in SIM_LOSSES:
        return _mse_scale(loss, onehot.shape[-1]) * (logits - onehot)
    raise ValueError(f"loss must be one of {list(SIM_LOSSES)} (names of nclens.nn.losses.LOSSES), got {loss!r}")


def class_counts(num_classes: int, samples: int, imbalance: float = 1.0) -> tuple[int, ...]:
    """n_c of the simulator: equal (ρ = 1; ``samples`` a multiple of K), else ∝ ρ^{−c/(K−1)}.

    The unequal counts are the largest-remainder apportionment of ``samples``: class 0 is the
    largest, class K−1 the smallest (about ρ times fewer). Every class keeps at least one sample.

    Example:
        >>> class_counts(3, 30), class_counts(3, 70, imbalance=4.0)
        ((10, 10, 10), (40, 20, 10))
    """
    k = int(num_classes)
    if not (math.isfinite(imbalance) and imbalance >= 1.0):
        raise ValueError(f"imbalance must be a finite number >= 1 (largest / smallest class), got {imbalance!r}")
    if imbalance == 1.0:
        if samples < k or samples % k:
            raise ValueError(f"samples must be a positive multiple of K={k} (balanced classes), got {samples!r}")
        return (samples // k,) * k
    weights = imbalance ** (-np.arange(k) / (k - 1))
    share = samples * weights / weights.sum()
    base = np.floor(share).astype(int)
    order = np.argsort(-(share - base), kind="stable")
    base[order[: samples - int(base.sum())]] += 1
    if int(base.min()) < 1:
        raise ValueError(f"samples={samples} with imbalance={imbalance:g} leaves a class empty; use more samples")
    return tuple(int(c) for c in base)


@dataclass(frozen=True)
class SimulationConfig:
    """One layer-peeled NoisyGD experiment.

    Attributes:
        num_classes: K >= 2.
        dim: feature dimension p >= K−1.
        samples: n private training samples (a multiple of K when ``imbalance`` = 1).
        noise_multiplier: σ (0 = no noise; then ``clip`` may be ``None`` = no clipping).
        clip: C, the per-sample gradient clipping norm.
        perturb: τ, the per-coordinate perturbation std (0 = none); the shift norm grows as τ√p.
        perturb_kind: ``"gaussian"`` (per sample) or ``"structured"`` (per class, fixed).
        shift_norm: β, a perturbation whose norm does not grow with p: per-coordinate std β/√p
            (gaussian) or per-class shifts of norm β inside the ETF's span (structured). Exclusive
            with ``perturb``.
        offset: norm of a common shift b ⟂ span(ETF) added to every feature.
        radius: r, the norm of the ETF vertices.
        pca: d, project on the top-d principal components of the public sample (``None`` = off).
        normalise: scale every feature to unit norm (after PCA).
        loss: ``ce``, ``mse`` (mean over N·K), ``mse_sum`` or ``mse_half`` (nclens.nn.losses.LOSSES).
        imbalance: ρ >= 1, largest / smallest class of the training set (the test set is balanced).
        init_norm: η₀, Frobenius norm of the fixed random initial head W₀ in the span of the class
            centres (0 = W₀ = 0); see the module docstring.
        steps: T NoisyGD steps.
        lr: η, the step size.
        trials: Monte Carlo draws of the DP noise.
        test_per_class: test samples per class.
        public_samples: public sample size for PCA (default ``samples``).
        delta: δ of the reported ε.
        seed: seed of the dataset, W₀ and the noise.
    """

    num_classes: int = 10
    dim: int = 100
    samples: int = 100
    noise_multiplier: float = 5.0
    clip: float | None = 1.0
    perturb: float = 0.0
    perturb_kind: str = "gaussian"
    shift_norm: float | None = None
    offset: float = 0.0
    radius: float = 1.0
    pca: int | None = None
    normalise: bool = False
    loss: str = "ce"
    imbalance: float = 1.0
    init_norm: float = 0.0
    steps: int = 1
    lr: float = 1.0
    trials: int = 1000
    test_per_class: int = 10
    public_samples: int | None = None
    delta: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        k, p = self.num_classes, self.dim
        if not isinstance(k, int) or k < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {k!r}")
        if not isinstance(p, int) or p < k - 1:
            raise ValueError(f"dim must be an integer >= K-1 = {k - 1}, got {p!r}")
        if not isinstance(self.samples, int) or self.samples < k:
            raise ValueError(f"samples must be an integer >= K={k}, got {self.samples!r}")
        class_counts(k, self.samples, self.imbalance)  # checks the counts
        if not math.isfinite(self.noise_multiplier) or self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier!r}")
        if self.clip is None:
            if self.noise_multiplier > 0:
                raise ValueError("clip=None (no clipping) is only allowed without noise: the noise std is σ·C")
        elif not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a positive number or None, got {self.clip!r}")
        if not (math.isfinite(self.perturb) and self.perturb >= 0):
            raise ValueError(f"perturb must be finite and >= 0, got {self.perturb!r}")
        if self.perturb_kind not in _KINDS:
            raise ValueError(f"perturb_kind must be one of {_KINDS}, got {self.perturb_kind!r}")
        if self.shift_norm is not None:
            if not (math.isfinite(self.shift_norm) and self.shift_norm >= 0):
                raise ValueError(f"shift_norm must be finite and >= 0 (or None), got {self.shift_norm!r}")
            if self.perturb > 0 and self.shift_norm > 0:
                raise ValueError("give either perturb (per-coordinate std τ) or shift_norm (norm β), not both")
        if not (math.isfinite(self.offset) and self.offset >= 0):
            raise ValueError(f"offset must be finite and >= 0, got {self.offset!r}")
        if self.offset > 0 and p < k:
            raise ValueError(f"an offset orthogonal to the ETF needs dim >= K = {k}, got dim={p}")
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"radius must be positive, got {self.radius!r}")
        if self.pca is not None and (not isinstance(self.pca, int) or not 1 <= self.pca <= p):
            raise ValueError(f"pca must be an integer in [1, dim={p}] or None, got {self.pca!r}")
        if self.loss not in SIM_LOSSES:
            raise ValueError(f"loss must be one of {list(SIM_LOSSES)} (names of nclens.nn.losses.LOSSES), "
                             f"got {self.loss!r}")
        if not (math.isfinite(self.init_norm) and self.init_norm >= 0):
            raise ValueError(f"init_norm must be finite and >= 0, got {self.init_norm!r}")
        for name in ("steps", "trials", "test_per_class"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.public_samples is not None and (not isinstance(self.public_samples, int) or self.public_samples < 2):
            raise ValueError(f"public_samples must be an integer >= 2 or None, got {self.public_samples!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta!r}")

    @property
    def exact_collapse(self) -> bool:
        """Whether every training feature of a class is the same point (no per-sample spread)."""
        spread = self.perturb > 0 or (self.shift_norm or 0.0) > 0
        return self.perturb_kind == "structured" or not spread

    @property
    def shift_sq_norm(self) -> float:
        """E‖δ‖² of the per-sample (gaussian) perturbation: τ²p or β² (0 for structured shifts)."""
        if self.perturb_kind != "gaussian":
            return 0.0
        return self.perturb**2 * self.dim if self.perturb > 0 else float(self.shift_norm or 0.0) ** 2


@dataclass(frozen=True)
class SimulationResult:
    """Outcome of :func:`simulate_noisy_gd`.

    Attributes:
        error: Monte Carlo mean test error over the DP-noise trials.
        error_stderr: its standard error (std of the per-trial errors / √trials).
        error_closed_form: the exact one-step closed form (exactly collapsed features), else ``None``.
        error_large_p: the p → ∞ form for per-sample Gaussian shifts at the same E‖δ‖² (one step,
            no PCA/normalisation, W₀ = 0, no offset), else ``None``.
        error_nonprivate: test error of the same training without noise (σ = 0, same clipping).
        epsilon: ε at ``delta`` (RDP of the Gaussian mechanism, T steps at sampling rate 1).
        delta: δ.
        feature_shift: feature shift of the training features (after remedies), see
            :func:`~nclens.privacy.feature_shift_from_stats`.
        class_counts: n_c of the training set.
        config: the configuration (as a dict).
    """

    error: float
    error_stderr: float
    error_closed_form: float | None
    error_large_p: float | None
    error_nonprivate: float
    epsilon: float
    delta: float
    feature_shift: float
    class_counts: tuple[int, ...]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the config under ``config``)."""
        out = asdict(self)
        out["class_counts"] = list(self.class_counts)
        return out


@dataclass(frozen=True)
class LayerPeeledModel:
    """The feature distribution of the layer-peeled model (class means, offset, structured shifts)."""

    means: Tensor  # (K, p) ETF vertices of norm r
    offset: Tensor  # (p,)
    class_shift: Tensor  # (K, p): v_c (structured) or zeros
    noise_std: float  # per-coordinate std of the per-sample (gaussian) perturbation
    perturb_kind: str

    def sample(self, per_class: int | Sequence[int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Features (float64 (Σ n_c, p)) and labels: ``per_class`` samples of every class, or n_c each."""
        k, p = self.means.shape
        counts = [int(per_class)] * k if isinstance(per_class, (int, np.integer)) else [int(c) for c in per_class]
        y = torch.repeat_interleave(torch.arange(k), torch.tensor(counts))  # (n,)
        x = self.means[y] + self.offset + self.class_shift[y]
        if self.perturb_kind == "gaussian" and self.noise_std > 0:
            x = x + self.noise_std * torch.randn(y.numel(), p, generator=generator, dtype=torch.float64)
        return x, y


def layer_peeled_model(config: SimulationConfig) -> LayerPeeledModel:
    """The seeded feature model of ``config`` (ETF of radius r in R^p, offset, structured shifts)."""
    k, p = config.num_classes, config.dim
    gen = torch.Generator().manual_seed(config.seed + 7919)
    means = simplex_etf(k, p, radius=config.radius, seed=config.seed)  # (K, p)
    offset = torch.zeros(p, dtype=torch.float64)
    if config.offset > 0:
        b = torch.randn(p, generator=gen, dtype=torch.float64)
        q, _ = torch.linalg.qr(means.T)  # (p, K) basis containing span(μ)
        b = b - q @ (q.T @ b)
        offset = config.offset * b / b.norm()
    beta = float(config.shift_norm or 0.0)
    class_shift = torch.zeros(k, p, dtype=torch.float64)
    noise_std = 0.0
    if config.perturb_kind == "structured":
        if config.perturb > 0:
            class_shift = config.perturb * torch.randn(k, p, generator=gen, dtype=torch.float64)
        elif beta > 0:  # v_c = β a_c M/‖a_c M‖ in span(μ), a_c drawn independently of p
            coef = torch.randn(k, k, generator=torch.Generator().manual_seed(config.seed + 7927), dtype=torch.float64)
            v = coef @ means  # (K, p)
            class_shift = beta * v / v.norm(dim=1, keepdim=True)
    else:
        noise_std = config.perturb if config.perturb > 0 else beta / math.sqrt(p)
    return LayerPeeledModel(means, offset, class_shift, float(noise_std), config.perturb_kind)


def _initial_head(config: SimulationConfig, centres: Tensor) -> Tensor | None:
    """W₀ = η₀ A C/‖A C‖_F in the span of the class centres C (K×d, as the head sees them), or ``None``.

    A ~ N(0, I) is a K×K draw seeded by ``seed`` alone (not by p), so W₀Cᵀ depends on CCᵀ only.
    """
    if config.init_norm == 0:
        return None
    k = centres.shape[0]
    gen = torch.Generator().manual_seed(config.seed + 104729)
    w = torch.randn(k, k, generator=gen, dtype=torch.float64) @ centres  # (K, d)
    return config.init_norm * w / w.norm().clamp_min(1e-300)


def _noise_generator(seed: int, dim: int) -> torch.Generator:
    """The DP-noise stream of (seed, p): independent across dimensions and of the dataset's stream."""
    state = np.random.SeedSequence([int(seed), int(dim), 0x6E6F697365]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


# ------------------------------------------------------------------------------------ closed forms
def error_from_thresholds(thresholds: Tensor) -> float:
    """mean_y [1 − ∫ φ(z) Π_{k≠y} Φ(z + t_{yk}) dz] = mean_y P(max_{k≠y}(ξ_k − ξ_y) > t_{yk}), ξ iid N(0, 1).

    Args:
        thresholds: (K, K) t_{yk}; the diagonal is ignored; ±inf allowed.
    """
    from scipy import integrate, special, stats

    t = torch.as_tensor(thresholds, dtype=torch.float64).cpu().numpy()
    k = t.shape[0]
    if t.shape != (k, k) or k < 2:
        raise ValueError(f"thresholds must be a K×K matrix with K >= 2, got shape {t.shape}")
    errors = []
    known: dict[tuple[float, ...], float] = {}  # the error depends on the multiset of t_{y·} only
    for y in range(k):
        row = np.sort(np.delete(t[y], y))  # (K-1,)
        key = tuple(np.round(row, 12).tolist())
        if key in known:
            errors.append(known[key])
            continue
        if (row == np.inf).all():
            known[key] = 0.0
            errors.append(0.0)
            continue

        def integrand(z: float, row: np.ndarray = row) -> float:
            return math.exp(stats.norm.logpdf(z) + float(special.log_ndtr(z + row).sum()))

        correct, _ = integrate.quad(integrand, -np.inf, np.inf, epsabs=1e-13, epsrel=1e-11, limit=200)
        known[key] = min(1.0, max(0.0, 1.0 - correct))
        errors.append(known[key])
    return float(np.mean(errors))


def closed_form_error(threshold: float, num_classes: int) -> float:
    """P(max_{k≠y} (ξ_k − ξ_y) > t) = 1 − ∫ φ(z) Φ(z + t)^{K−1} dz, ξ iid N(0, 1).

    Wang et al. (2024): the error of one NoisyGD step from zero on exact, balanced ETF features, with
    t = :func:`one_step_threshold`. For K = 2 it equals 1 − Φ(t/√2).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if math.isinf(threshold):
        return 0.0
    return error_from_thresholds(torch.full((num_classes, num_classes), float(threshold), dtype=torch.float64))


def one_step_threshold(
    num_classes: int, samples: int, noise_multiplier: float, clip: float, radius: float = 1.0
) -> float:
    """t = a r n / ((K−1) σ C), a = min(1, C/(√((K−1)/K) r)): the margin-to-noise ratio of one CE step.

    The balanced, exact-ETF, W₀ = 0 case of :func:`one_step_thresholds`. With r = 1 and
    C ≥ √((K−1)/K) this is 1/((K−1) s), s = σC/n (Wang et al. 2024).
    """
    k = num_classes
    if noise_multiplier == 0:
        return math.inf
    a = min(1.0, clip / (math.sqrt((k - 1) / k) * radius))
    return a * radius * samples / ((k - 1) * noise_multiplier * clip)


def one_step_thresholds(
    means: Tensor,
    counts: Sequence[int] | Tensor,
    *,
    noise_multiplier: float,
    clip: float | None,
    loss: str = "ce",
    lr: float = 1.0,
    init: Tensor | None = None,
    extra_sq_norm: float = 0.0,
) -> Tensor:
    """t_{yk} of one NoisyGD step on exactly collapsed features (module docstring), (K, K) float64.

    Args:
        means: (K, d) the training (and test) feature of each class.
        counts: (K,) n_c of the training set.
        noise_multiplier, clip: σ > 0 and C (``None``: no clipping).
        loss: a name of :data:`SIM_LOSSES`.
        lr: η (matters only with ``init``).
        init: W₀ (K, d) or ``None`` (zero).
        extra_sq_norm: β², added to ‖M_c‖² in the clip factors and the noise (the p → ∞ limit of
            per-sample Gaussian shifts with E‖δ‖² = β²; needs ``init`` = None).
    """
    m = torch.as_tensor(means, dtype=torch.float64)
    k = m.shape[0]
    n_c = torch.as_tensor(counts, dtype=torch.float64)
    if m.ndim != 2 or n_c.shape != (k,):
        raise ValueError(f"means must be K×d and counts of length K, got {tuple(m.shape)} and {tuple(n_c.shape)}")
    if not noise_multiplier > 0:
        raise ValueError(f"the closed form needs noise_multiplier > 0, got {noise_multiplier!r}")
    if extra_sq_norm and init is not None:
        raise ValueError("extra_sq_norm (the large-p limit) is defined for W0 = 0 only")
    gram = m @ m.T  # (K, K)
    sq = torch.diagonal(gram) + float(extra_sq_norm)  # ‖h‖² per class
    b = torch.zeros(k, k, dtype=torch.float64) if init is None else torch.as_tensor(init, dtype=torch.float64) @ m.T
    eye = torch.eye(k, dtype=torch.float64)
    u = loss_residual(b.T, eye, loss).T  # (K, K): column c = u_c
    if clip is None:
        a = torch.ones(k, dtype=torch.float64)
        c_noise = 1.0
    else:
        a = torch.clamp(clip / (u.norm(dim=0) * sq.sqrt()).clamp_min(1e-300), max=1.0)
        c_noise = float(clip)
    s = (u * (n_c * a)[None, :]) @ gram  # S[k, y] = Σ_c n_c a_c u[k, c] G[c, y]
    n = float(n_c.sum())
    diag_b, diag_s = torch.diagonal(b), torch.diagonal(s)
    margin = (n / lr) * (diag_b[:, None] - b.T) - (diag_s[:, None] - s.T)  # [y, k]
    return margin / (noise_multiplier * c_noise * sq.sqrt())[:, None]


def one_step_error(means: Tensor, counts: Sequence[int] | Tensor, **kwargs: Any) -> float:
    """The closed-form test error (balanced test set) of :func:`one_step_thresholds`."""
    return error_from_thresholds(one_step_thresholds(means, counts, **kwargs))


# --------------------------------------------------------------------------------------- simulation
def noisy_gd_linear(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    steps: int,
    lr: float,
    clip: float | None,
    noise_multiplier: float,
    trials: int,
    generator: torch.Generator,
    loss: str = "ce",
    init: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """NoisyGD on a bias-free linear head, ``trials`` independent noise draws at once.

    W_{t+1} = W_t − (η/n)(Σ_i clip_C(g_i) + σ C Z_t), g_i = r_i h_iᵀ (r_i = ∂ℓ/∂z, :func:`loss_residual`);
    per-sample norms ‖g_i‖ = ‖r_i‖ ‖h_i‖ (no n×K×p tensor is formed).

    Args:
        x: (n, p) float64 features. y: (n,) labels in 0..K−1.
        num_classes: K. steps, lr, clip, noise_multiplier: T, η, C (None = no clipping), σ.
        trials: number of independent heads. generator: source of the noise.
        loss: a name of :data:`SIM_LOSSES`. init: W₀ (K, p) or ``None`` (zero).
        noise: optional given Z, (T, trials, K, p), instead of drawing it.

    Returns:
        (trials, K, p) heads.
    """
    n, p = x.shape
    onehot = torch.nn.functional.one_hot(y, num_classes).to(x)  # (n, K)
    xnorm = x.norm(dim=1)  # (n,)
    w = torch.zeros(trials, num_classes, p, dtype=x.dtype, device=x.device)
    if init is not None:
        w = w + init.to(x)[None]
    for step in range(steps):
        resid = loss_residual(torch.einsum("np,tkp->tnk", x, w), onehot, loss)  # (T, n, K)
        if clip is not None:
            gnorm = resid.norm(dim=-1) * xnorm  # (T, n)
            resid = resid * torch.clamp(clip / gnorm.clamp_min(1e-300), max=1.0)[..., None]
        grad = torch.einsum("tnk,np->tkp", resid, x)  # (T, K, p)
        if noise_multiplier > 0:
            z = noise[step] if noise is not None else torch.randn(trials, num_classes, p, generator=generator,
                                                                  dtype=x.dtype)
            grad = grad + noise_multiplier * clip * z.to(x)
        w = w - (lr / n) * grad
    return w


def _pca_fit(x: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """Mean (p,) and top-d principal directions (d, p) of ``x`` (float64).

    For p > n the directions come from the n×n Gram matrix (exact: v_j = X_cᵀ u_j / √λ_j for its top
    eigenpairs), which costs one GEMM instead of an n×p SVD.
    """
    n, p = x.shape
    if min(n - 1, p) < d:
        raise ValueError(f"PCA to d={d} needs at least {d + 1} public samples, got {n}")
    mean = x.mean(0)
    xc = x - mean
    if p <= n:
        _, _, vh = torch.linalg.svd(xc, full_matrices=False)  # vh (p, p)
        return mean, vh[:d]
    evals, evecs = torch.linalg.eigh(xc @ xc.T)  # ascending, (n,), (n, n)
    top, vecs = evals.flip(0)[:d], evecs.flip(1)[:, :d]  # (d,), (n, d)
    comps = (xc.T @ vecs) / top.clamp_min(1e-300).sqrt()  # (p, d), orthonormal columns
    return mean, comps.T


def simulate_noisy_gd(config: SimulationConfig, *, progress: bool = False) -> SimulationResult:
    """Monte Carlo test error of NoisyGD in the layer-peeled model, beside the closed forms and ε.

    Draws one seeded dataset (train n_c per class, test K·m, public for PCA) from
    :func:`layer_peeled_model`, trains ``trials`` heads with independent DP noise
    (:func:`noisy_gd_linear`, in chunks, in the exact reduced basis when p > n + m) and averages
    their test errors. See the module docstring for the model and the closed forms.

    Args:
        config: the experiment.
        progress: show a progress bar over the chunks of trials.
    """
    cfg = config
    k = cfg.num_classes
    counts = class_counts(k, cfg.samples, cfg.imbalance)
    model = layer_peeled_model(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = model.sample(counts, gen)
    xt, yt = model.sample(cfg.test_per_class, gen)
    centres = model.means + model.offset + model.class_shift  # (K, p) the class centres
    if cfg.pca is not None:
        n_pub = cfg.public_samples if cfg.public_samples is not None else cfg.samples
        xp, _ = model.sample(max(1, -(-n_pub // k)), gen)
        mean, comps = _pca_fit(xp, cfg.pca)
        x, xt, centres = ((a - mean) @ comps.T for a in (x, xt, centres))  # (n, d), (m, d), (K, d)
    if cfg.normalise:
        x, xt, centres = (a / a.norm(dim=1, keepdim=True).clamp_min(1e-300) for a in (x, xt, centres))
    shift = feature_shift_from_stats(ClassStats(num_classes=k, scatter="trace").update(x, y)).rms
    init = _initial_head(cfg, centres)
    gen = _noise_generator(cfg.seed, cfg.dim)

    # exact reduction: run in an orthonormal basis of span(train ∪ test) when that is smaller than d
    xr, xtr, initr = x, xt, init
    first = torch.tensor([int(sum(counts[:c])) for c in range(k)])  # the first training sample of each class
    rows = x[first] if cfg.exact_collapse else torch.cat([x, xt])  # exactly collapsed: the class points span all
    if x.shape[1] > rows.shape[0]:
        basis, _ = torch.linalg.qr(rows.T)  # (d, r), orthonormal columns whose span holds every feature
        xr, xtr = x @ basis, xt @ basis
        initr = init @ basis if init is not None else None

    train = dict(steps=cfg.steps, lr=cfg.lr, clip=cfg.clip, loss=cfg.loss, init=initr)
    w0 = noisy_gd_linear(xr, y, k, noise_multiplier=0.0, trials=1, generator=gen, **train)
    err_np = float((torch.einsum("mp,kp->mk", xtr, w0[0]).argmax(1) != yt).double().mean())

    chunk = max(1, min(cfg.trials, _CHUNK_ELEMENTS // (k * xr.shape[1])))
    errors = []
    with progress_bar(progress, "NoisyGD trials", cfg.trials) as advance:
        for start in range(0, cfg.trials, chunk):
            t = min(chunk, cfg.trials - start)
            w = noisy_gd_linear(xr, y, k, noise_multiplier=cfg.noise_multiplier, trials=t, generator=gen, **train)
            pred = torch.einsum("mp,tkp->tmk", xtr, w).argmax(-1)  # (t, m)
            errors.append((pred != yt).double().mean(1))
            advance(t)
    per_trial = torch.cat(errors)
    stderr = float(per_trial.std() / math.sqrt(cfg.trials)) if cfg.trials > 1 else math.nan

    closed = large_p = None
    if cfg.steps == 1 and cfg.noise_multiplier > 0:
        common = dict(noise_multiplier=cfg.noise_multiplier, clip=cfg.clip, loss=cfg.loss)
        if cfg.exact_collapse:
            closed = one_step_error(x[first], counts, lr=cfg.lr, init=init, **common)
        elif (cfg.perturb_kind == "gaussian" and cfg.pca is None and not cfg.normalise and cfg.init_norm == 0
              and cfg.offset == 0):
            large_p = one_step_error(model.means, counts, extra_sq_norm=cfg.shift_sq_norm, **common)
    eps = noisy_gd_epsilon(cfg.noise_multiplier, steps=cfg.steps, delta=cfg.delta)
    return SimulationResult(
        error=float(per_trial.mean()),
        error_stderr=stderr,
        error_closed_form=closed,
        error_large_p=large_p,
        error_nonprivate=err_np,
        epsilon=eps,
        delta=cfg.delta,
        feature_shift=shift,
        class_counts=counts,
        config=asdict(cfg),
    )
