"""Private linear heads on frozen features (NoisyGD / DP-SGD through Opacus) and feature remedies.

Algorithms (Abadi et al. 2016; Wang et al. 2024):

- ``"noisygd"`` — full-batch noisy gradient descent: every step uses all n samples (sampling rate
  1), clips each per-sample gradient to norm C and adds N(0, σ²C² I) to the sum, then divides by n.
  Its RDP is T α/(2σ²) (:mod:`~nclens.privacy.accounting`).
- ``"dpsgd"`` — DP-SGD with Poisson sampling at rate q = batch_size/n, the same clipping and noise.
- ``"nonprivate"`` — the same full-batch GD without clipping or noise (ε = ∞, no Opacus needed).

Two engines train the same algorithm. ``engine="opacus"``: Opacus (``make_private`` with a given σ,
or ``make_private_with_epsilon`` for a target ε) does the per-sample clipping, the noise and the
accounting (``accountant`` = ``"rdp"``, ``"prv"`` or ``"gdp"``). ``engine="fused"``: the per-sample
gradients of a linear head are outer products, g_i = r_i [h_i; 1]ᵀ with r_i = softmax(z_i) − e_{y_i}
and ‖g_i‖ = ‖r_i‖ (‖h_i‖² + 1)^{1/2}, so the clipped sum is one matrix product (Σ_i a_i r_i h_iᵀ =
(a∘R)ᵀH) and no n×K×D tensor is formed — the same step as Opacus' (tested to float32 round-off), far
faster on wide features; its noise multiplier and ε come from the same RDP accounting (ours for
full-batch NoisyGD, tested equal to Opacus'; Opacus' accountants for Poisson-sampled DP-SGD). ε at δ
is reported for every run. Opacus is imported inside the functions, so ``import nclens`` works
without the ``privacy`` extra. The head starts at zero, as in the paper. A non-finite loss stops
training with a ``FloatingPointError`` naming the step and the learning rate.

Remedies (Wang et al. 2024, Sec. 5), fitted on *public* features so they cost no privacy:
centring on the public mean, PCA to d dimensions, and per-sample L2 normalisation
(:class:`FeaturePreprocessor`: x ↦ normalise(Vᵀ(x − m))).

Example:
    >>> import torch
    >>> from nclens.data import gaussian_features
    >>> from nclens.privacy import PrivateLinearHead
    >>> f = gaussian_features(num_classes=3, dim=8, per_class=100, sigma=0.2, seed=0)
    >>> head = PrivateLinearHead(algorithm="nonprivate", epochs=50, lr=1.0).fit(f.features, f.labels)
    >>> head.score(f.features, f.labels) > 0.95
    True
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from nclens.core.console import progress_bar
from nclens.core.stats import validate_features, validate_labels

__all__ = [
    "head_noise_multiplier",
    "head_epsilon",
    "PrivateHeadConfig",
    "PrivateHeadResult",
    "train_private_head",
    "PrivateLinearHead",
    "FeaturePreprocessor",
    "l2_normalise",
    "pca_basis",
]

_ALGORITHMS = ("noisygd", "dpsgd", "nonprivate")
_ACCOUNTANTS = ("rdp", "prv", "gdp")
_ENGINES = ("opacus", "fused")


@dataclass(frozen=True)
class PrivateHeadConfig:
    """How to train a linear head privately.

    Attributes:
        algorithm: ``"noisygd"`` (full batch), ``"dpsgd"`` (Poisson sampling) or ``"nonprivate"``.
        epochs: passes over the data (NoisyGD: one step per epoch).
        lr: SGD step size η.
        momentum: SGD momentum.
        clip: C, per-sample gradient clipping norm.
        noise_multiplier: σ; exactly one of ``noise_multiplier`` and ``target_epsilon`` for the
            private algorithms.
        target_epsilon: ε to reach at ``delta`` after ``epochs`` (σ found by Opacus).
        delta: δ.
        batch_size: expected batch size of DP-SGD (ignored by NoisyGD / non-private).
        accountant: Opacus accountant, ``"rdp"``, ``"prv"`` or ``"gdp"``.
        bias: learn a bias.
        seed: seed of the noise and the sampling.
        engine: ``"opacus"`` (Opacus' GradSampleModule) or ``"fused"`` (closed-form per-sample
            gradients of the linear head, see the module docstring).
        lr_key: the config key a divergence error names (e.g. ``heads.lr``).
    """

    algorithm: str = "noisygd"
    epochs: int = 100
    lr: float = 1.0
    momentum: float = 0.0
    clip: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    batch_size: int = 256
    accountant: str = "rdp"
    bias: bool = True
    seed: int = 0
    engine: str = "opacus"
    lr_key: str = "lr"

    def __post_init__(self) -> None:
        if self.engine not in _ENGINES:
            raise ValueError(f"engine must be one of {_ENGINES}, got {self.engine!r}")
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {_ALGORITHMS}, got {self.algorithm!r}")
        if self.accountant not in _ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {_ACCOUNTANTS}, got {self.accountant!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be positive, got {self.clip!r}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.algorithm != "nonprivate":
            given = (self.noise_multiplier is not None) + (self.target_epsilon is not None)
            if given != 1:
                raise ValueError(
                    f"{self.algorithm} needs exactly one of noise_multiplier and target_epsilon, got "
                    f"noise_multiplier={self.noise_multiplier!r}, target_epsilon={self.target_epsilon!r}"
                )
            if self.noise_multiplier is not None and not (
                math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
            ):
                raise ValueError(f"noise_multiplier must be positive, got {self.noise_multiplier!r}")
            if self.target_epsilon is not None and not (
                math.isfinite(self.target_epsilon) and self.target_epsilon > 0
            ):
                raise ValueError(f"target_epsilon must be positive, got {self.target_epsilon!r}")


@dataclass(frozen=True)
class PrivateHeadResult:
    """A trained head and its privacy guarantee.

    Attributes:
        weight: (K, D) float32. bias: (K,) or ``None``.
        epsilon: ε at ``delta`` (``inf`` for non-private training).
        delta: δ. noise_multiplier: σ used (0 for non-private). sample_rate: q. steps: optimiser steps.
        loss: training cross-entropy (without noise) after every epoch.
        config: the configuration as a dict.
    """

    weight: Tensor
    bias: Tensor | None
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    loss: list[float] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def _quiet_opacus_warnings() -> None:
    """Silence Opacus' known, expected warnings (inside a ``warnings.catch_warnings`` block)."""
    for message in (".*[Ss]ecure RNG.*", ".*[Oo]ptimal order.*", ".*[Ff]ull backward hook.*"):
        warnings.filterwarnings("ignore", message=message)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG inside the block and restore it afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


#: a training loss above this multiple of the zero head's loss (log K) is divergence (as the Trainer's rule)
DIVERGENCE_FACTOR = 1e6


def _check_loss(value: float, step: int, cfg: PrivateHeadConfig, num_classes: int) -> None:
    """Non-finite loss, or more than DIVERGENCE_FACTOR × log K (the zero head's CE): a clear error naming the knob."""
    start = math.log(num_classes)
    if not math.isfinite(value) or value > DIVERGENCE_FACTOR * start:
        what = f"became {value}" if not math.isfinite(value) else f"grew from {start:.4g} (zero head) to {value:.4g}"
        raise FloatingPointError(
            f"private head training diverged: the loss {what} after step {step}; lower {cfg.lr_key} "
            f"(now {cfg.lr:g})"
        )


def _steps_per_epoch(cfg: PrivateHeadConfig, n: int) -> int:
    """Optimiser steps per epoch: 1 (full batch) or Opacus' len(loader) = ⌈n / batch_size⌉ (DP-SGD)."""
    return 1 if cfg.algorithm != "dpsgd" else math.ceil(n / min(cfg.batch_size, n))


def head_noise_multiplier(config: PrivateHeadConfig, n: int) -> tuple[float, float, int]:
    """(σ, sampling rate q, steps) of ``config`` on n samples (σ from ``target_epsilon`` when given).

    Full-batch NoisyGD with the RDP accountant uses :func:`~nclens.privacy.accounting.noisy_gd_noise_multiplier`
    (exact bisection); every other case Opacus' ``get_noise_multiplier`` (needs the ``privacy`` extra).
    """
    cfg = config
    if cfg.algorithm == "nonprivate":
        return 0.0, 1.0, cfg.epochs
    per_epoch = _steps_per_epoch(cfg, n)
    rate, steps = 1.0 / per_epoch, cfg.epochs * per_epoch
    if cfg.noise_multiplier is not None:
        return float(cfg.noise_multiplier), rate, steps
    if cfg.algorithm == "noisygd" and cfg.accountant == "rdp":
        from nclens.privacy.accounting import noisy_gd_noise_multiplier

        return noisy_gd_noise_multiplier(cfg.target_epsilon, steps=steps, delta=cfg.delta), rate, steps
    sigma = _opacus_noise_multiplier(float(cfg.target_epsilon), float(cfg.delta), rate, steps, cfg.accountant)
    return sigma, rate, steps


@functools.lru_cache(maxsize=256)
def _opacus_noise_multiplier(epsilon: float, delta: float, rate: float, steps: int, accountant: str) -> float:
    """Opacus' σ for (ε, δ) after ``steps`` steps at rate q (cached: the same for every seed and remedy)."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        _quiet_opacus_warnings()
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=rate, steps=steps,
                                          accountant=accountant))


@functools.lru_cache(maxsize=256)
def _opacus_epsilon(sigma: float, rate: float, steps: int, delta: float, accountant: str) -> float:
    from opacus.accountants import create_accountant

    with warnings.catch_warnings():
        _quiet_opacus_warnings()
        acc = create_accountant(mechanism=accountant)
        acc.history = [(sigma, rate, steps)]
        return float(acc.get_epsilon(delta=delta))


def head_epsilon(config: PrivateHeadConfig, noise_multiplier: float, sample_rate: float, steps: int) -> float:
    """ε at δ of ``steps`` Gaussian-mechanism steps at sampling rate q (inf without noise)."""
    if config.algorithm == "nonprivate" or noise_multiplier == 0:
        return math.inf
    if sample_rate == 1.0 and config.accountant == "rdp":
        from nclens.privacy.accounting import noisy_gd_epsilon

        return noisy_gd_epsilon(noise_multiplier, steps=steps, delta=config.delta)
    return _opacus_epsilon(float(noise_multiplier), float(sample_rate), int(steps), float(config.delta),
                           config.accountant)


def _fused_head(x: Tensor, y: Tensor, k: int, cfg: PrivateHeadConfig, progress: bool) -> PrivateHeadResult:
    """NoisyGD / DP-SGD / GD of a zero-initialised linear head with closed-form per-sample gradients.

    Per step (Opacus' DPOptimizer): Σ_i a_i g_i + σ C Z over the batch (all n, or a Poisson sample at
    rate q), divided by the expected batch size (n, or ⌊q n⌋), then torch's SGD (with momentum).
    """
    n, d = x.shape
    dev = x.device
    sigma, rate, steps_total = head_noise_multiplier(cfg, n)
    private = cfg.algorithm != "nonprivate"
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    w = torch.zeros(k, d, dtype=x.dtype, device=dev)
    b = torch.zeros(k, dtype=x.dtype, device=dev) if cfg.bias else None
    buf_w = buf_b = None
    onehot = torch.nn.functional.one_hot(y, k).to(x)  # (n, K)
    sq = x.square().sum(1) + (1.0 if cfg.bias else 0.0)  # (n,) ‖[h; 1]‖²
    per_epoch = _steps_per_epoch(cfg, n)
    expected = n if cfg.algorithm != "dpsgd" else max(1, int(n * rate))
    losses: list[float] = []
    steps = 0
    full = cfg.algorithm != "dpsgd"  # the loss after epoch e is that of the logits of step e + 1 (one pass)
    with progress_bar(progress, f"{cfg.algorithm} head (fused)", cfg.epochs) as advance:
        for epoch in range(cfg.epochs):
            for _ in range(per_epoch):
                if cfg.algorithm == "dpsgd":
                    idx = torch.nonzero(torch.rand(n, generator=gen, device=dev) < rate).squeeze(1)
                    if idx.numel() == 0:  # an empty Poisson batch: skipped, as in the Opacus loop
                        continue
                    xb, ob, sb = x[idx], onehot[idx], sq[idx]
                else:
                    xb, ob, sb = x, onehot, sq
                z = xb @ w.T + (b if b is not None else 0.0)  # (B, K)
                if full and epoch > 0:
                    losses.append(float(torch.nn.functional.cross_entropy(z, y)))
                    _check_loss(losses[-1], steps, cfg, k)
                r = torch.softmax(z, dim=1) - ob  # (B, K) = ∂CE/∂z
                if private:
                    r = r * torch.clamp(cfg.clip / (r.norm(dim=1) * sb.sqrt()).clamp_min(1e-30), max=1.0)[:, None]
                gw, gb = r.T @ xb, r.sum(0)  # (K, D), (K,)
                if private:
                    gw = gw + sigma * cfg.clip * torch.randn(k, d, generator=gen, device=dev, dtype=x.dtype)
                    if gb is not None and b is not None:
                        gb = gb + sigma * cfg.clip * torch.randn(k, generator=gen, device=dev, dtype=x.dtype)
                gw, gb = gw / expected, gb / expected
                if cfg.momentum > 0:  # torch.optim.SGD: buf = μ buf + g (buf = g at the first step)
                    buf_w = gw if buf_w is None else cfg.momentum * buf_w + gw
                    buf_b = gb if buf_b is None else cfg.momentum * buf_b + gb
                    gw, gb = buf_w, buf_b
                w = w - cfg.lr * gw
                if b is not None:
                    b = b - cfg.lr * gb
                steps += 1
            if not full or epoch == cfg.epochs - 1:
                losses.append(float(torch.nn.functional.cross_entropy(x @ w.T + (b if b is not None else 0.0), y)))
                _check_loss(losses[-1], steps, cfg, k)
            advance()
    epsilon = head_epsilon(cfg, sigma, rate, steps_total) if private else math.inf
    return PrivateHeadResult(w.clone(), b.clone() if b is not None else None, epsilon, cfg.delta, sigma,
                             rate, steps, losses, asdict(cfg))


def train_private_head(
    features: Tensor,
    labels: Tensor,
    config: PrivateHeadConfig,
    *,
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> PrivateHeadResult:
    """Train a zero-initialised linear head on frozen features with NoisyGD / DP-SGD (Opacus or fused).

    Per step: g_i = ∇ CE(W h_i + b, y_i); ĝ = (1/B)(Σ_i g_i min(1, C/‖g_i‖) + N(0, σ²C² I));
    W ← W − η ĝ (Abadi et al. 2016). ε at δ from the RDP / PRV / GDP accountant.

    Args:
        features: (n, D) floating features. labels: (n,) integers in 0..K−1.
        config: the algorithm, its hyper-parameters and the engine.
        num_classes: K (default: max label + 1).
        device: where to train (default: the features' device).
        progress: show a progress bar over epochs.

    Raises:
        FloatingPointError: the training loss became non-finite (names ``config.lr_key``).
    """
    from torch.utils.data import DataLoader, TensorDataset

    x = validate_features(features)
    y = validate_labels(labels, x.shape[0])
    if x.shape[0] == 0:
        raise ValueError("features are empty")
    if bool((y < 0).any()):
        raise ValueError(f"labels must be in 0..K-1, got negative labels such as {int(y.min())}")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if k < 2 or int(y.max()) >= k:
        raise ValueError(f"labels must lie in 0..K-1 with K >= 2, got K={k} and max label {int(y.max())}")
    dev = torch.device(device) if device is not None else x.device
    x, y = x.to(dev, torch.float32), y.to(dev)
    n, d = x.shape
    cfg = config
    if cfg.engine == "fused":
        with _seeded(cfg.seed, dev):
            return _fused_head(x, y, k, cfg, progress)
    with _seeded(cfg.seed, dev), warnings.catch_warnings():
        _quiet_opacus_warnings()
        head = nn.Linear(d, k, bias=cfg.bias).to(dev)
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)
        optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        dataset = TensorDataset(x, y)
        engine = None
        sigma, rate = 0.0, 1.0
        if cfg.algorithm == "nonprivate":
            loader = DataLoader(dataset, batch_size=n, shuffle=False)
            model = head
        else:
            from opacus import PrivacyEngine

            full = cfg.algorithm == "noisygd"
            loader = DataLoader(dataset, batch_size=n if full else min(cfg.batch_size, n), shuffle=not full)
            engine = PrivacyEngine(accountant=cfg.accountant)
            noise_gen = torch.Generator(device=dev).manual_seed(cfg.seed)
            common = dict(
                module=head,
                optimizer=optimizer,
                data_loader=loader,
                max_grad_norm=cfg.clip,
                poisson_sampling=not full,
                noise_generator=noise_gen,
            )
            if cfg.target_epsilon is not None:
                model, optimizer, loader = engine.make_private_with_epsilon(
                    target_epsilon=cfg.target_epsilon, target_delta=cfg.delta, epochs=cfg.epochs, **common
                )
            else:
                model, optimizer, loader = engine.make_private(noise_multiplier=cfg.noise_multiplier, **common)
            sigma, rate = float(optimizer.noise_multiplier), 1.0 / len(loader)
        loss_fn = nn.CrossEntropyLoss()
        losses: list[float] = []
        steps = 0
        with progress_bar(progress, f"{cfg.algorithm} head", cfg.epochs) as advance:
            for _ in range(cfg.epochs):
                for xb, yb in loader:
                    if xb.shape[0] == 0:  # empty Poisson batch (probability (1-q)^n): skipped
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    optimizer.zero_grad(set_to_none=True)
                    loss_fn(model(xb), yb).backward()
                    optimizer.step()
                    steps += 1
                with torch.no_grad():
                    losses.append(float(loss_fn(head(x), y)))
                _check_loss(losses[-1], steps, cfg, k)
                advance()
        weight = head.weight.detach().clone()
        bias = head.bias.detach().clone() if head.bias is not None else None
        if engine is not None:
            epsilon = float(engine.get_epsilon(cfg.delta))
        else:
            epsilon = math.inf
    return PrivateHeadResult(weight, bias, epsilon, cfg.delta, sigma, rate, steps, losses, asdict(cfg))


class PrivateLinearHead:
    """scikit-learn-style private linear classifier on frozen features (wraps :func:`train_private_head`).

    Parameters are those of :class:`PrivateHeadConfig` (plus ``device``); ``fit`` learns
    ``classes_`` (sorted labels), ``weight_`` (K×D), ``bias_``, ``epsilon_``, ``noise_multiplier_``,
    ``n_steps_`` and ``loss_curve_``. Arbitrary integer labels are mapped to rows in ascending order.

    Example:
        >>> import torch
        >>> from nclens.privacy import PrivateLinearHead
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(200, 4, generator=g), torch.arange(200) % 2
        >>> x[:, 0] += 4 * y
        >>> PrivateLinearHead(algorithm="nonprivate", epochs=30).fit(x, y).score(x, y) > 0.9
        True
    """

    def __init__(
        self,
        algorithm: str = "noisygd",
        epochs: int = 100,
        lr: float = 1.0,
        momentum: float = 0.0,
        clip: float = 1.0,
        noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
        delta: float = 1e-5,
        batch_size: int = 256,
        accountant: str = "rdp",
        bias: bool = True,
        seed: int = 0,
        engine: str = "opacus",
        device: str | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.target_epsilon = target_epsilon
        self.delta = delta
        self.batch_size = batch_size
        self.accountant = accountant
        self.bias = bias
        self.seed = seed
        self.engine = engine
        self.device = device

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters (scikit-learn contract)."""
        names = ("algorithm", "epochs", "lr", "momentum", "clip", "noise_multiplier", "target_epsilon",
                 "delta", "batch_size", "accountant", "bias", "seed", "engine", "device")
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params: Any) -> PrivateLinearHead:
        """Set constructor parameters (scikit-learn contract)."""
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"unknown parameter {name!r}; valid: {sorted(valid)}")
            setattr(self, name, value)
        return self

    def fit(self, x: Tensor, y: Tensor) -> PrivateLinearHead:
        """Train on features ``x`` (n, D) and integer labels ``y`` (n,)."""
        params = self.get_params()
        device = params.pop("device")
        config = PrivateHeadConfig(**params)
        x = validate_features(x)
        y = validate_labels(y, x.shape[0])
        classes, index = torch.unique(y, return_inverse=True)
        if classes.numel() < 2:
            raise ValueError(f"need at least 2 classes, got labels {classes.tolist()}")
        result = train_private_head(x, index, config, num_classes=classes.numel(), device=device)
        self.classes_ = classes
        self.weight_ = result.weight
        self.bias_ = result.bias
        self.epsilon_ = result.epsilon
        self.noise_multiplier_ = result.noise_multiplier
        self.n_steps_ = result.steps
        self.loss_curve_ = result.loss
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "weight_"):
            raise ValueError("this PrivateLinearHead is not fitted yet; call fit(x, y) first")

    def decision_function(self, x: Tensor) -> Tensor:
        """Scores W x + b, (n, K)."""
        self._check_fitted()
        x = validate_features(x).to(self.weight_)
        if x.shape[1] != self.weight_.shape[1]:
            raise ValueError(f"features have D={x.shape[1]} columns, the head was fitted on D={self.weight_.shape[1]}")
        scores = x @ self.weight_.T
        return scores + self.bias_ if self.bias_ is not None else scores

    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels (n,)."""
        self._check_fitted()
        return self.classes_.to(self.weight_.device)[self.decision_function(x).argmax(1)]

    def score(self, x: Tensor, y: Tensor) -> float:
        """Accuracy on (x, y)."""
        y = validate_labels(y, validate_features(x).shape[0])
        return float((self.predict(x).cpu() == y.cpu()).double().mean())


def l2_normalise(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows scaled to unit Euclidean norm: x_i / max(‖x_i‖, eps) (feature normalisation)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def pca_basis(x: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """Mean m (D,) and the top-d principal directions V (d, D) of ``x`` (float64 SVD of x − m)."""
    x = validate_features(x).to(torch.float64)
    if not isinstance(d, int) or not 1 <= d <= min(x.shape):
        raise ValueError(f"PCA dimension must be an integer in [1, min(n, D)={min(x.shape)}], got {d!r}")
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)  # vh (min(n, D), D)
    return mean, vh[:d]


class FeaturePreprocessor:
    """Privacy-free remedies fitted on public features: centre, PCA to d dims, L2-normalise.

    transform(x) = normalise((x − m) Vᵀ) with m the public mean, V the top-``pca`` principal
    directions of the public features (identity when ``pca`` is None), normalise optional
    (Wang et al. 2024, Sec. 5). Learned: ``mean_`` (D,), ``components_`` (d, D) or ``None``.

    Example:
        >>> import torch
        >>> x = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
        >>> z = FeaturePreprocessor(pca=3, normalise=True).fit(x).transform(x)
        >>> z.shape, bool(torch.allclose(z.norm(dim=1), torch.ones(50, dtype=z.dtype)))
        (torch.Size([50, 3]), True)
    """

    def __init__(self, centre: bool = True, pca: int | None = None, normalise: bool = False) -> None:
        self.centre = centre
        self.pca = pca
        self.normalise = normalise

    def fit(self, x: Tensor) -> FeaturePreprocessor:
        """Learn the mean and principal directions from public features (n, D)."""
        x = validate_features(x).to(torch.float64)
        if self.pca is not None:
            self.mean_, self.components_ = pca_basis(x, self.pca)
        else:
            self.mean_, self.components_ = x.mean(0), None
        if not self.centre:
            self.mean_ = torch.zeros_like(self.mean_)
        self.n_features_in_ = x.shape[1]
        return self

    def transform(self, x: Tensor) -> Tensor:
        """Apply the remedies (float32 output)."""
        if not hasattr(self, "mean_"):
            raise ValueError("this FeaturePreprocessor is not fitted yet; call fit(public_features) first")
        x = validate_features(x).to(torch.float64)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"features have D={x.shape[1]} columns, fitted on D={self.n_features_in_}")
        z = x - self.mean_.to(x.device)
        if self.components_ is not None:
            z = z @ self.components_.to(x.device).T  # (n, d)
        if self.normalise:
            z = l2_normalise(z)
        return z.to(torch.float32)

    def fit_transform(self, x: Tensor) -> Tensor:
        """fit(x) then transform(x)."""
        return self.fit(x).transform(x)
