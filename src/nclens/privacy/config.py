"""Typed, frozen configs of the differential-privacy experiments (kinds ``dp-dimension``, ``dp-threshold``,
``dp-features``).

Every range and non-empty list is checked here, so a bad value is refused before a run folder is
created; checks that need files (feature files present) are the experiments' ``check()``.

Example:
    >>> from nclens.runs.config import build_config, override_config
    >>> cfg = override_config(DimensionConfig(), ["dims=[10, 100]", "model.trials=50"])
    >>> cfg.dims, cfg.model.trials
    ((10, 100), 50)
    >>> build_config(DimensionConfig, {"dims": []})
    Traceback (most recent call last):
    ...
    ValueError: dims must not be empty
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nclens.privacy.simulate import SIM_LOSSES
from nclens.runs.config import check_choice, check_nonempty, check_positive
from nclens.train.optim import OptimConfig

__all__ = [
    "LayerPeeledConfig",
    "DimensionConfig",
    "ThresholdVariant",
    "ThresholdConfig",
    "RemedyConfig",
    "PerturbationConfig",
    "PretrainConfig",
    "FeatureFileConfig",
    "SplitConfig",
    "HeadsConfig",
    "FeaturesConfig",
]

_PERTURB_KINDS = ("gaussian", "structured")


def _int_list(where: str, values: Iterable[Any], *, minimum: int) -> None:
    check_nonempty(where, values)
    bad = [v for v in values if v < minimum]
    if bad:
        raise ValueError(f"{where} must be integers >= {minimum}, got {list(values)}")
    if len(set(values)) != len(list(values)):
        raise ValueError(f"{where} must not repeat a value, got {list(values)}")


def _nonneg_list(where: str, values: Iterable[float]) -> None:
    check_nonempty(where, values)
    bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ValueError(f"{where} must be finite numbers >= 0, got {list(values)}")


def _in_unit(where: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{where} must lie in (0, 1), got {value!r}")


@dataclass(frozen=True)
class LayerPeeledConfig:
    """The layer-peeled setting shared by the simulator sweeps (fields of :class:`~nclens.privacy.SimulationConfig`).

    K classes, n training samples, NoisyGD noise multiplier σ and clipping norm C, ETF radius r,
    Monte Carlo ``trials`` of the DP noise, ``test_per_class`` test samples, δ of the reported ε.
    """

    num_classes: int = 10
    samples: int = 100
    noise_multiplier: float = 5.0
    clip: float = 1.0
    radius: float = 1.0
    trials: int = 500
    test_per_class: int = 20
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"model.num_classes must be >= 2, got {self.num_classes}")
        check_positive("model.samples", self.samples)
        check_positive("model.noise_multiplier", self.noise_multiplier)
        check_positive("model.clip", self.clip)
        check_positive("model.radius", self.radius)
        check_positive("model.trials", self.trials)
        check_positive("model.test_per_class", self.test_per_class)
        _in_unit("model.delta", self.delta)


@dataclass(frozen=True)
class DimensionConfig:
    """Kind ``dp-dimension``: NoisyGD accuracy against the feature dimension p (layer-peeled model).

    Cells: every ``dims`` × ``perturbs`` (per-coordinate std τ, so the shift norm grows as τ√p) ×
    (no PCA, PCA to ``pca``) × ``seeds``; PCA arms are skipped where ``pca`` > p.
    """

    name: str = "dp-dimension"
    model: LayerPeeledConfig = field(default_factory=LayerPeeledConfig)
    dims: tuple[int, ...] = (10, 100, 1000, 10000)
    perturbs: tuple[float, ...] = (0.0, 0.1)
    perturb_kind: str = "gaussian"
    pca: int | None = 9
    normalise: bool = False
    steps: int = 1
    lr: float = 1.0
    public_samples: int = 1000
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        _int_list("dims", self.dims, minimum=self.model.num_classes - 1)
        _nonneg_list("perturbs", self.perturbs)
        check_choice("perturb_kind", self.perturb_kind, _PERTURB_KINDS)
        if self.pca is not None:
            check_positive("pca", self.pca)
        check_positive("steps", self.steps)
        check_positive("lr", self.lr)
        check_positive("public_samples", self.public_samples)
        _int_list("seeds", self.seeds, minimum=0)


@dataclass(frozen=True)
class ThresholdVariant:
    """One row family of the threshold sweep: the base setting with some knobs changed.

    ``loss`` (a name of nclens.nn.losses.LOSSES: ce | mse | mse_sum | mse_half), ``imbalance`` (largest /
    smallest class), ``steps`` and ``lr``, ``init_norm`` (‖W₀‖_F, the model-space perturbation),
    ``perturb_kind`` (gaussian per sample | structured per class), ``noise_multiplier`` (``None``:
    the base σ·√steps, which keeps ε fixed: T steps at σ√T have one step's RDP at σ) and ``betas``
    (empty: the sweep's ``betas``).
    """

    name: str = "base"
    loss: str = "ce"
    imbalance: float = 1.0
    steps: int = 1
    lr: float = 1.0
    init_norm: float = 0.0
    perturb_kind: str = "gaussian"
    noise_multiplier: float | None = None
    betas: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_choice(f"variants[{self.name}].loss", self.loss, SIM_LOSSES)
        if not (math.isfinite(self.imbalance) and self.imbalance >= 1.0):
            raise ValueError(f"variants[{self.name}].imbalance must be >= 1, got {self.imbalance!r}")
        check_positive(f"variants[{self.name}].steps", self.steps)
        check_positive(f"variants[{self.name}].lr", self.lr)
        check_positive(f"variants[{self.name}].init_norm", self.init_norm, zero_ok=True)
        check_choice(f"variants[{self.name}].perturb_kind", self.perturb_kind, _PERTURB_KINDS)
        if self.noise_multiplier is not None:
            check_positive(f"variants[{self.name}].noise_multiplier", self.noise_multiplier)
        if self.betas:
            _nonneg_list(f"variants[{self.name}].betas", self.betas)


@dataclass(frozen=True)
class ThresholdConfig:
    """Kind ``dp-threshold``: the (β, p) sweep at a fixed shift norm β (Wang et al. 2024, the threshold).

    Every ``variants`` × its β (``betas``) × ``dims`` × ``seeds`` is one cell (a
    :func:`~nclens.privacy.simulate_noisy_gd` run, with the exact closed form where features are
    exactly collapsed and the p → ∞ form for per-sample shifts). A β is *flat in p* when for every p
    the seed-paired gap mean_s[err_s(p) − err_s(p_max)] lies within ``flat_sigmas`` of its standard
    error (over seeds, floored by the Monte Carlo error; :func:`~nclens.privacy.experiment.flatness`);
    the threshold is the largest β of the grid up to which every β is flat.
    """

    name: str = "dp-threshold"
    model: LayerPeeledConfig = field(default_factory=LayerPeeledConfig)
    betas: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
    dims: tuple[int, ...] = (10, 100, 1000, 10000)
    variants: tuple[ThresholdVariant, ...] = (ThresholdVariant(),)
    flat_sigmas: float = 3.0
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        _nonneg_list("betas", self.betas)
        _int_list("dims", self.dims, minimum=self.model.num_classes)
        _int_list("seeds", self.seeds, minimum=0)
        check_nonempty("variants", self.variants)
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants need distinct names, got {names}")
        check_positive("flat_sigmas", self.flat_sigmas)

    def variant_betas(self, variant: ThresholdVariant) -> tuple[float, ...]:
        """The β grid of one variant."""
        return variant.betas or self.betas


@dataclass(frozen=True)
class RemedyConfig:
    """One preprocessing arm, fitted on public features: centre, PCA to ``pca`` dims, L2-normalise."""

    name: str = "centred"
    pca: int | None = None
    normalise: bool = False

    def __post_init__(self) -> None:
        if self.pca is not None:
            check_positive(f"remedies[{self.name}].pca", self.pca)


@dataclass(frozen=True)
class PerturbationConfig:
    """A feature perturbation of real features (the robustness question of Wang et al. 2024, on real data).

    Every sample of every split (public, private, test) gets independent Gaussian noise δ_i ~ N(0, s² I_D)
    with s = β r/√D, so that E‖δ_i‖ ≈ β r whatever D; r = (mean_i ‖h_i − h̄‖²)^{1/2} is the RMS spread
    of the set's private features about their mean (``shift_norm`` β is in units of the features' own
    scale). The perturbed copy of feature set ``name`` is the feature set ``name~<perturbation name>``.
    """

    name: str = ""
    shift_norm: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("every entry of perturbations needs a name")
        if not (math.isfinite(self.shift_norm) and self.shift_norm > 0):
            raise ValueError(f"perturbations[{self.name}].shift_norm must be a positive number, got "
                             f"{self.shift_norm!r}")


@dataclass(frozen=True)
class PretrainConfig:
    """Pre-training on a public split (the checkpoint source of ``dp-features``; off with no ``checkpoints``).

    An MLP (``depth`` × ``width``, BatchNorm) is trained by the one Trainer on the public part of
    ``dataset``'s training split; the weights at each epoch of ``checkpoints`` (0 = the random
    initialisation) give one feature set each — the input of ``classifier``.
    """

    dataset: str = "digits"
    mnist1d_samples: int = 4000
    depth: int = 2
    width: int = 128
    batchnorm: bool = True
    epochs: int = 200
    checkpoints: tuple[int, ...] = (0, 1, 3, 10, 30, 200)
    loss: str = "ce"
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.05, momentum=0.9, weight_decay=5e-4,
                                                                   schedule="cosine"))
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("pretrain.dataset", self.dataset, ("digits", "mnist1d"))
        check_choice("pretrain.loss", self.loss, SIM_LOSSES)
        check_positive("pretrain.depth", self.depth, zero_ok=True)
        check_positive("pretrain.width", self.width)
        check_positive("pretrain.epochs", self.epochs)
        check_positive("pretrain.batch_size", self.batch_size)
        bad = [c for c in self.checkpoints if not 0 <= c <= self.epochs]
        if bad:
            raise ValueError(f"pretrain.checkpoints must be epochs in [0, pretrain.epochs={self.epochs}], got {bad}")
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise ValueError(f"pretrain.checkpoints must not repeat an epoch, got {list(self.checkpoints)}")


@dataclass(frozen=True)
class FeatureFileConfig:
    """A feature file (``.npz`` / ``.safetensors`` with ``features`` and ``labels``, e.g. from ``nclens extract``)."""

    name: str = ""
    path: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.path:
            raise ValueError(f"every entry of files needs a name and a path, got name={self.name!r}, "
                             f"path={self.path!r}")


@dataclass(frozen=True)
class SplitConfig:
    """How the data are split into public (pre-training, remedy fitting), private (the head) and test.

    The checkpoint source splits the dataset's training split into public (``public_fraction``) and
    private; its test split is the dataset's. A feature file is split per class: ``test_fraction``
    to the test set, then ``public_fraction`` of the rest to the public set. ``private_per_class``
    keeps only that many (seeded) private samples per class (the private set's size n sets the DP
    noise σC/n per step). ``common_samples``: when every feature file holds ``indices`` (``nclens
    extract`` writes the dataset index of each sample), use only the images all files hold, so every
    network is split into the same public / private / test images. Seeded by ``seed``; ``seeds`` (feature
    files only) repeats every file's experiment on each of several seeded splits, and the tables then
    average over splits × head seeds.
    """

    public_fraction: float = 0.5
    test_fraction: float = 0.2
    private_per_class: int | None = None
    common_samples: bool = True
    seed: int = 0
    seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _in_unit("split.public_fraction", self.public_fraction)
        _in_unit("split.test_fraction", self.test_fraction)
        if self.private_per_class is not None:
            check_positive("split.private_per_class", self.private_per_class)
        if self.seeds:
            _int_list("split.seeds", self.seeds, minimum=0)
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"split.seeds must not repeat a seed, got {list(self.seeds)}")

    @property
    def split_seeds(self) -> tuple[int, ...]:
        """The seeds of the splits: ``seeds``, or ``(seed,)`` when it is empty."""
        return tuple(self.seeds) or (self.seed,)


@dataclass(frozen=True)
class HeadsConfig:
    """The private linear heads (zero-initialised, CE): algorithms, privacy levels, hyper-parameters.

    ``algorithms``: noisygd (full batch, ``epochs`` steps) and/or dpsgd (Poisson sampling at
    ⌈n/batch_size⌉⁻¹, ``dpsgd_epochs`` epochs); every (feature set, remedy) also gets two non-private
    references (:data:`nclens.privacy.finetune.NONPRIVATE`): plain GD (``epochs`` steps, no clipping or
    noise) and a converged logistic regression (C by 3-fold CV on the private split). ``engine``: fused
    (closed-form per-sample gradients) or opacus.
    """

    algorithms: tuple[str, ...] = ("noisygd",)
    epsilons: tuple[float, ...] = (0.5, 1.0, 2.0, 8.0)
    delta: float = 1e-5
    epochs: int = 100
    dpsgd_epochs: int = 10
    lr: float = 2.0
    momentum: float = 0.0
    clip: float = 1.0
    batch_size: int = 256
    accountant: str = "rdp"
    engine: str = "fused"
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        check_nonempty("heads.algorithms", self.algorithms)
        for a in self.algorithms:
            check_choice("heads.algorithms", a, ("noisygd", "dpsgd"))
        check_nonempty("heads.epsilons", self.epsilons)
        if any(not e > 0 for e in self.epsilons):
            raise ValueError(f"heads.epsilons must be positive, got {list(self.epsilons)}")
        _in_unit("heads.delta", self.delta)
        check_positive("heads.epochs", self.epochs)
        check_positive("heads.dpsgd_epochs", self.dpsgd_epochs)
        check_positive("heads.lr", self.lr)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"heads.momentum must lie in [0, 1), got {self.momentum!r}")
        check_positive("heads.clip", self.clip)
        check_positive("heads.batch_size", self.batch_size)
        check_choice("heads.accountant", self.accountant, ("rdp", "prv", "gdp"))
        check_choice("heads.engine", self.engine, ("fused", "opacus"))
        _int_list("heads.seeds", self.seeds, minimum=0)


@dataclass(frozen=True)
class FeaturesConfig:
    """Kind ``dp-features``: private fine-tuning of a linear head on real features.

    Feature sets: the checkpoints of a network pre-trained on a public split (``pretrain``; none when
    ``pretrain.checkpoints`` is empty) and the feature files of ``files`` (e.g. ImageNet-pretrained
    EfficientNet-Lite0/1/2 features of Fashion-MNIST from ``nclens extract``). For each set: its
    collapse (nc1, …) and feature shift on the private split, then heads for every remedy ×
    algorithm × ε (and non-private) × seed, test accuracy.
    """

    name: str = "dp-features"
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    files: tuple[FeatureFileConfig, ...] = ()
    split: SplitConfig = field(default_factory=SplitConfig)
    perturbations: tuple[PerturbationConfig, ...] = ()
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    remedies: tuple[RemedyConfig, ...] = (
        RemedyConfig("centred"),
        RemedyConfig("normalised", normalise=True),
        RemedyConfig("pca+normalised", pca=10, normalise=True),
    )

    def __post_init__(self) -> None:
        if not self.pretrain.checkpoints and not self.files:
            raise ValueError("dp-features needs feature sets: pretrain.checkpoints and/or files")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names) or any(n.startswith("epoch_") for n in names):
            raise ValueError(f"files need distinct names that do not start with 'epoch_', got {names}")
        if len(self.split.split_seeds) > 1 and self.pretrain.checkpoints:
            raise ValueError(f"split.seeds={list(self.split.seeds)}: several splits are for feature files only; "
                             "the pre-training checkpoints use split.seed (leave split.seeds empty)")
        perturbations = [q.name for q in self.perturbations]
        if len(set(perturbations)) != len(perturbations):
            raise ValueError(f"perturbations need distinct names, got {perturbations}")
        check_nonempty("remedies", self.remedies)
        remedies = [r.name for r in self.remedies]
        if len(set(remedies)) != len(remedies):
            raise ValueError(f"remedies need distinct names, got {remedies}")

    def feature_sets(self) -> list[str]:
        """The names of the feature sets, in order: ``epoch_<e>`` for each checkpoint, then the files; each
        followed by its perturbed copies ``<set>~<perturbation>``."""
        base = [f"epoch_{e}" for e in self.pretrain.checkpoints] + [f.name for f in self.files]
        return [n for b in base for n in (b, *(f"{b}~{q.name}" for q in self.perturbations))]
