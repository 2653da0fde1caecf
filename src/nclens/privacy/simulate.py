"""Layer-peeled simulator of private last-layer training on (near-)collapsed features.

Features (Wang, Zhu, Su & Wang, ICML 2024): the K unit-free vertices μ_c (radius r) of a simplex ETF
in R^p, optionally moved by a common offset b ⟂ span(μ) of norm ``offset``, and perturbed either per
sample (``"gaussian"``: h_i = μ_{y_i} + b + τ g_i, g_i ~ N(0, I_p)) or per class
(``"structured"``: h_i = μ_{y_i} + b + τ v_{y_i}, v_c ~ N(0, I_p) fixed). A linear head W (K×p), no
bias, starts at 0 and takes T NoisyGD steps (full batch, sampling rate 1) on the cross-entropy::

    W ← W − (η/n) ( Σ_i clip_C(g_i) + σ C Z ),   g_i = (softmax(W h_i) − e_{y_i}) h_iᵀ,  Z ~ N(0, I),

clip_C(g) = g · min(1, C/‖g‖) and ‖g_i‖ = ‖softmax(W h_i) − e_{y_i}‖ ‖h_i‖ (an outer product).
Everything is vectorised over Monte Carlo trials of the DP noise (one seeded dataset).

Closed form (one step from zero, exact ETF features, balanced classes, n samples). The mean clipped
gradient is −(a/K) M with a = min(1, C/(√((K−1)/K) r)); the score margin of the true class is
a r²/(K−1) and the noise on every score is (σ C r/n) ξ_k, ξ_k iid N(0, 1). So::

    error = P( max_{k≠y} (ξ_k − ξ_y) > a r n / ((K−1) σ C) ) = 1 − ∫ φ(z) Φ(z + t)^{K−1} dz,

independent of p; with r = 1 and C ≥ √((K−1)/K), t = 1/((K−1) s), s = σC/n (the issue's form).
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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nclens.core.geometry import simplex_etf
from nclens.core.stats import ClassStats
from nclens.privacy.accounting import noisy_gd_epsilon
from nclens.privacy.shift import feature_shift_from_stats

__all__ = [
    "SimulationConfig",
    "SimulationResult",
    "LayerPeeledModel",
    "layer_peeled_model",
    "closed_form_error",
    "one_step_threshold",
    "noisy_gd_linear",
    "simulate_noisy_gd",
]

_KINDS = ("gaussian", "structured")
#: Elements of one (trials × K × p) chunk of heads (float64 ≈ 64 MiB).
_CHUNK_ELEMENTS = 2**23


@dataclass(frozen=True)
class SimulationConfig:
    """One layer-peeled NoisyGD experiment.

    Attributes:
        num_classes: K >= 2.
        dim: feature dimension p >= K−1.
        samples: n private training samples (a multiple of K: balanced classes).
        noise_multiplier: σ (0 = no noise; then ``clip`` may be ``None`` = no clipping).
        clip: C, the per-sample gradient clipping norm.
        perturb: τ, the perturbation scale (0 = exact ETF features).
        perturb_kind: ``"gaussian"`` (per sample) or ``"structured"`` (per class, fixed).
        offset: norm of a common shift b ⟂ span(ETF) added to every feature.
        radius: r, the norm of the ETF vertices.
        pca: d, project on the top-d principal components of the public sample (``None`` = off).
        normalise: scale every feature to unit norm (after PCA).
        steps: T NoisyGD steps.
        lr: η, the step size.
        trials: Monte Carlo draws of the DP noise.
        test_per_class: test samples per class.
        public_samples: public sample size for PCA (default ``samples``).
        delta: δ of the reported ε.
        seed: seed of the dataset and the noise.
    """

    num_classes: int = 10
    dim: int = 100
    samples: int = 100
    noise_multiplier: float = 5.0
    clip: float | None = 1.0
    perturb: float = 0.0
    perturb_kind: str = "gaussian"
    offset: float = 0.0
    radius: float = 1.0
    pca: int | None = None
    normalise: bool = False
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
        if not isinstance(self.samples, int) or self.samples < k or self.samples % k:
            raise ValueError(f"samples must be a positive multiple of K={k} (balanced classes), got {self.samples!r}")
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
        if not (math.isfinite(self.offset) and self.offset >= 0):
            raise ValueError(f"offset must be finite and >= 0, got {self.offset!r}")
        if self.offset > 0 and p < k:
            raise ValueError(f"an offset orthogonal to the ETF needs dim >= K = {k}, got dim={p}")
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"radius must be positive, got {self.radius!r}")
        if self.pca is not None and (not isinstance(self.pca, int) or not 1 <= self.pca <= p):
            raise ValueError(f"pca must be an integer in [1, dim={p}] or None, got {self.pca!r}")
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


@dataclass(frozen=True)
class SimulationResult:
    """Outcome of :func:`simulate_noisy_gd`.

    Attributes:
        error: Monte Carlo mean test error over the DP-noise trials.
        error_stderr: its standard error (std of the per-trial errors / √trials).
        error_closed_form: the closed form (one step, exact features), else ``None``.
        error_nonprivate: test error of the same training without noise (σ = 0, same clipping).
        epsilon: ε at ``delta`` (RDP of the Gaussian mechanism, T steps at sampling rate 1).
        delta: δ.
        feature_shift: feature shift of the training features (after remedies), see
            :func:`~nclens.privacy.feature_shift_from_stats`.
        config: the configuration (as a dict).
    """

    error: float
    error_stderr: float
    error_closed_form: float | None
    error_nonprivate: float
    epsilon: float
    delta: float
    feature_shift: float
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the config flattened in under ``config``)."""
        return asdict(self)


@dataclass(frozen=True)
class LayerPeeledModel:
    """The feature distribution of the layer-peeled model (class means, offset, structured shifts)."""

    means: Tensor  # (K, p) ETF vertices of norm r
    offset: Tensor  # (p,)
    class_shift: Tensor  # (K, p): τ v_c (structured) or zeros
    perturb: float
    perturb_kind: str

    def sample(self, per_class: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``per_class`` features of every class (float64 (K·per_class, p)) and their labels."""
        k, p = self.means.shape
        y = torch.arange(k).repeat_interleave(per_class)  # (n,)
        x = self.means[y] + self.offset + self.class_shift[y]
        if self.perturb_kind == "gaussian" and self.perturb > 0:
            x = x + self.perturb * torch.randn(y.numel(), p, generator=generator, dtype=torch.float64)
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
    class_shift = torch.zeros(k, p, dtype=torch.float64)
    if config.perturb_kind == "structured" and config.perturb > 0:
        class_shift = config.perturb * torch.randn(k, p, generator=gen, dtype=torch.float64)
    return LayerPeeledModel(means, offset, class_shift, float(config.perturb), config.perturb_kind)


def closed_form_error(threshold: float, num_classes: int) -> float:
    """P(max_{k≠y} (ξ_k − ξ_y) > t) = 1 − ∫ φ(z) Φ(z + t)^{K−1} dz, ξ iid N(0, 1).

    Wang et al. (2024): the error of one NoisyGD step from zero on exact ETF features, with
    t = :func:`one_step_threshold`. For K = 2 it equals 1 − Φ(t/√2).
    """
    from scipy import integrate, special, stats

    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if math.isinf(threshold):
        return 0.0
    k = num_classes

    def integrand(z: float) -> float:
        return math.exp(stats.norm.logpdf(z) + (k - 1) * special.log_ndtr(z + threshold))

    correct, _ = integrate.quad(integrand, -np.inf, np.inf, epsabs=1e-13, epsrel=1e-11, limit=200)
    return float(min(1.0, max(0.0, 1.0 - correct)))


def one_step_threshold(
    num_classes: int, samples: int, noise_multiplier: float, clip: float, radius: float = 1.0
) -> float:
    """t = a r n / ((K−1) σ C), a = min(1, C/(√((K−1)/K) r)): the margin-to-noise ratio of one step.

    With r = 1 and C ≥ √((K−1)/K) this is 1/((K−1) s), s = σC/n (Wang et al. 2024).
    """
    k = num_classes
    if noise_multiplier == 0:
        return math.inf
    a = min(1.0, clip / (math.sqrt((k - 1) / k) * radius))
    return a * radius * samples / ((k - 1) * noise_multiplier * clip)


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
) -> Tensor:
    """NoisyGD on a bias-free linear head, ``trials`` independent noise draws at once.

    W_{t+1} = W_t − (η/n)(Σ_i clip_C(g_i) + σ C Z_t), W_0 = 0, g_i = (softmax(W h_i) − e_{y_i}) h_iᵀ;
    per-sample norms ‖g_i‖ = ‖softmax − e_y‖ ‖h_i‖ (no n×K×p tensor is formed).

    Args:
        x: (n, p) float64 features. y: (n,) labels in 0..K−1.
        num_classes: K. steps, lr, clip, noise_multiplier: T, η, C (None = no clipping), σ.
        trials: number of independent heads. generator: source of the noise.

    Returns:
        (trials, K, p) heads.
    """
    n, p = x.shape
    onehot = torch.nn.functional.one_hot(y, num_classes).to(x)  # (n, K)
    xnorm = x.norm(dim=1)  # (n,)
    w = torch.zeros(trials, num_classes, p, dtype=x.dtype, device=x.device)
    for _ in range(steps):
        prob = torch.softmax(torch.einsum("np,tkp->tnk", x, w), dim=-1)  # (T, n, K)
        resid = prob - onehot  # (T, n, K)
        if clip is not None:
            gnorm = resid.norm(dim=-1) * xnorm  # (T, n)
            resid = resid * torch.clamp(clip / gnorm.clamp_min(1e-300), max=1.0)[..., None]
        grad = torch.einsum("tnk,np->tkp", resid, x)  # (T, K, p)
        if noise_multiplier > 0:
            noise = torch.randn(trials, num_classes, p, generator=generator, dtype=x.dtype).to(x.device)
            grad = grad + noise_multiplier * clip * noise
        w = w - (lr / n) * grad
    return w


def _pca_fit(x: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """Mean (p,) and top-d principal directions (d, p) of ``x`` (float64)."""
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)  # vh (min(n,p), p)
    if vh.shape[0] < d:
        raise ValueError(f"PCA to d={d} needs at least {d} public samples, got {x.shape[0]}")
    return mean, vh[:d]


def simulate_noisy_gd(config: SimulationConfig, *, progress: bool = False) -> SimulationResult:
    """Monte Carlo test error of NoisyGD in the layer-peeled model, beside the closed form and ε.

    Draws one seeded dataset (train n, test K·m, public for PCA) from :func:`layer_peeled_model`,
    trains ``trials`` heads with independent DP noise (:func:`noisy_gd_linear`, in chunks) and
    averages their test errors. See the module docstring for the model and the closed form.

    Args:
        config: the experiment.
        progress: show a progress bar over the chunks of trials.
    """
    from rich.progress import Progress

    cfg = config
    k = cfg.num_classes
    model = layer_peeled_model(cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = model.sample(cfg.samples // k, gen)
    xt, yt = model.sample(cfg.test_per_class, gen)
    if cfg.pca is not None:
        n_pub = cfg.public_samples if cfg.public_samples is not None else cfg.samples
        xp, _ = model.sample(max(1, -(-n_pub // k)), gen)
        mean, comps = _pca_fit(xp, cfg.pca)
        x, xt = (x - mean) @ comps.T, (xt - mean) @ comps.T  # (n, d), (m, d)
    if cfg.normalise:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
        xt = xt / xt.norm(dim=1, keepdim=True).clamp_min(1e-300)
    shift = feature_shift_from_stats(ClassStats(num_classes=k, scatter="trace").update(x, y)).rms

    train = dict(steps=cfg.steps, lr=cfg.lr, clip=cfg.clip)
    w0 = noisy_gd_linear(x, y, k, noise_multiplier=0.0, trials=1, generator=gen, **train)
    err_np = float((torch.einsum("mp,kp->mk", xt, w0[0]).argmax(1) != yt).double().mean())

    chunk = max(1, min(cfg.trials, _CHUNK_ELEMENTS // (k * x.shape[1])))
    errors = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("NoisyGD trials", total=cfg.trials)
        for start in range(0, cfg.trials, chunk):
            t = min(chunk, cfg.trials - start)
            w = noisy_gd_linear(x, y, k, noise_multiplier=cfg.noise_multiplier, trials=t, generator=gen, **train)
            pred = torch.einsum("mp,tkp->tmk", xt, w).argmax(-1)  # (t, m)
            errors.append((pred != yt).double().mean(1))
            bar.advance(task, t)
    per_trial = torch.cat(errors)
    stderr = float(per_trial.std() / math.sqrt(cfg.trials)) if cfg.trials > 1 else math.nan

    closed = None
    exact = cfg.perturb == 0 and cfg.offset == 0 and cfg.steps == 1 and cfg.noise_multiplier > 0
    if exact and (cfg.pca is None or cfg.pca >= k - 1):
        radius = 1.0 if cfg.normalise else cfg.radius
        assert cfg.clip is not None  # σ > 0 requires a clip
        closed = closed_form_error(one_step_threshold(k, cfg.samples, cfg.noise_multiplier, cfg.clip, radius), k)
    eps = noisy_gd_epsilon(cfg.noise_multiplier, steps=cfg.steps, delta=cfg.delta)
    return SimulationResult(
        error=float(per_trial.mean()),
        error_stderr=stderr,
        error_closed_form=closed,
        error_nonprivate=err_np,
        epsilon=eps,
        delta=cfg.delta,
        feature_shift=shift,
        config=asdict(cfg),
    )
