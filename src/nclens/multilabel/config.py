"""Typed, frozen configs of the multi-label NC experiments.

* :class:`MultiLabelConfig` (kind ``multilabel``): ``data``, ``model``, ``optim``, ``train`` — train the
  variants (learned head / fixed ETF head / fixed ETF head with feature dimension K) with each loss and
  seed under one budget, measure MLab NC during training.
* :class:`UFMStudyConfig` (kind ``multilabel-ufm``): ``ufm`` (one UFM problem, a
  :class:`~nclens.multilabel.ufm.UFMConfig` whose ``seed`` is the first restart's) and the study around it —
  ``losses`` × ``lambdas`` × ``restarts`` random initialisations.

Every range is checked here, so a bad value (``data.per_set=[0]``, ``train.seeds=[]``, ``ufm.tol=nan``)
is refused before a run folder is created.

Example:
    >>> from nclens.runs.config import override_config
    >>> cfg = override_config(MultiLabelConfig(), ["train.epochs=3", "train.losses=[pal, pal_normalized]"])
    >>> cfg.train.epochs, cfg.train.losses, cfg.num_tags
    (3, ('pal', 'pal_normalized'), 10)
    >>> override_config(cfg, ["data.per_set=[0]"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: data.per_set must start with a positive number of samples per singleton ..., got [0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nclens.multilabel.ufm import UFM_LOSSES, UFMConfig
from nclens.runs.config import check_choice, check_nonempty, check_positive
from nclens.train.optim import OptimConfig

__all__ = [
    "DATASETS",
    "VARIANTS",
    "LOSSES",
    "MLDataConfig",
    "MLModelConfig",
    "MLTrainConfig",
    "MultiLabelConfig",
    "UFMStudyConfig",
]

#: ``multilabel-digits``: nclens's composites of scikit-learn's 8×8 digits (embedded, 16×16);
#: ``ml-fashion-mnist`` / ``ml-mnist``: Li et al.'s ML-MNIST recipe on real Fashion-MNIST / MNIST files.
DATASETS = ("multilabel-digits", "ml-fashion-mnist", "ml-mnist")
#: learned linear head; fixed simplex-ETF head (Li et al.'s ``--etf``); fixed ETF with feature dim K
#: (``--etf --fix_dim``)
VARIANTS = ("learned", "fixed_etf", "fixed_etf_dimk")
#: the registered losses a multi-label run may train with (0/1 targets: ``pal``; 0.5/0.5 targets: ``pal_normalized``)
LOSSES = ("pal", "pal_normalized")


def _counts(where: str, values: tuple[int, ...], max_mult: int) -> None:
    check_nonempty(where, values)
    if any(v < 0 for v in values):
        raise ValueError(f"{where} must list non-negative counts per multiplicity, got {list(values)}")
    if values[0] < 1:
        raise ValueError(f"{where} must start with a positive number of samples per singleton (the MLab NC "
                         f"metrics are defined by the singleton means), got {list(values)}")
    if len(values) > max_mult:
        raise ValueError(f"{where} lists {len(values)} multiplicities; at most {max_mult} here, got {list(values)}")


@dataclass(frozen=True)
class MLDataConfig:
    """The multi-label data.

    ``dataset``: multilabel-digits (embedded; ``max_shift`` pixels of shift, ``test_fraction`` of the
    source digits held out) | ml-fashion-mnist | ml-mnist (Li et al.'s ``Exp_MNIST.ipynb`` recipe on the
    real files, read by :func:`nclens.data.load_images` from ``root`` or the default places — never
    downloaded; training composites from the train split, test composites from the test split).
    ``per_set`` / ``test_per_set``: samples per label set by multiplicity (singletons, pairs[, triples]).
    ``classes``: the source classes used as tags (default all 10). ``pool``: average-pool the composed
    canvas by this factor (CPU scaling; 1 = the paper's 56×56). ``source_per_class``: draw the
    composites from a seeded class-balanced subset of this many source images per class (0 = the whole
    split). The composition seed is the run's seed (each seed draws new composites).
    """

    dataset: str = "multilabel-digits"
    per_set: tuple[int, ...] = (30, 6)
    test_per_set: tuple[int, ...] = (30, 6)
    classes: tuple[int, ...] = ()
    max_shift: int = 1
    test_fraction: float = 0.25
    pool: int = 1
    source_per_class: int = 0
    root: str | None = None

    def __post_init__(self) -> None:
        check_choice("data.dataset", self.dataset, DATASETS)
        max_mult = 4 if self.dataset == "multilabel-digits" else 2
        _counts("data.per_set", self.per_set, max_mult)
        _counts("data.test_per_set", self.test_per_set, max_mult)
        tags = self.classes or tuple(range(10))
        if len(set(tags)) != len(tags) or any(not 0 <= t <= 9 for t in tags) or len(tags) < 2:
            raise ValueError(f"data.classes must be at least 2 distinct class ids in 0..9, got {list(self.classes)}")
        if max(len(self.per_set), len(self.test_per_set)) > len(tags) - 1:
            raise ValueError(f"data.per_set multiplicities must stay below K={len(tags)} tags")
        check_positive("data.max_shift", self.max_shift, zero_ok=True)
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must lie in (0, 1), got {self.test_fraction}")
        check_positive("data.pool", self.pool)
        if self.dataset == "multilabel-digits" and self.pool != 1:
            raise ValueError("data.pool applies to the 56×56 ML-(Fashion-)MNIST canvas; multilabel-digits needs pool=1")
        if self.dataset != "multilabel-digits" and 56 % self.pool:
            raise ValueError(f"data.pool must divide the 56-pixel canvas (1, 2, 4, 7, 8, ...), got {self.pool}")
        check_positive("data.source_per_class", self.source_per_class, zero_ok=True)

    @property
    def num_tags(self) -> int:
        """K, the number of tags."""
        return len(self.classes) if self.classes else 10


@dataclass(frozen=True)
class MLModelConfig:
    """The CNN: conv blocks of ``channels`` (3×3 conv[, BatchNorm], ReLU, 2×2 max-pool), a hidden layer of
    ``hidden`` units[, BatchNorm], ReLU, then the last block (Linear) to ``feature_dim`` features (K for
    ``fixed_etf_dimk``) and the head."""

    channels: tuple[int, ...] = (16, 32)
    hidden: int = 256
    feature_dim: int = 256
    batch_norm: bool = True

    def __post_init__(self) -> None:
        check_nonempty("model.channels", self.channels)
        if any(c < 1 for c in self.channels):
            raise ValueError(f"model.channels must be positive, got {list(self.channels)}")
        check_positive("model.hidden", self.hidden)
        check_positive("model.feature_dim", self.feature_dim)


@dataclass(frozen=True)
class MLTrainConfig:
    """Training, identical for every variant, loss and seed.

    ``losses``: pal (0/1 targets) and/or pal_normalized (Y/|Y| — the paper's 0.5/0.5 pair targets).
    ``feature_decay``: λ_h of Li et al.'s ``train_param_eff.py`` — the loss of every step adds
    λ_h ‖H_B‖²_F, the squared Frobenius norm of the batch's features (summed over the batch; official
    default 1e-3, 0 = off). ``batch_size`` 0 = full batch. MLab NC of the training features and the
    test scores are measured at epoch 0 (initialisation), every ``eval_every`` epochs and at the end.
    ``f1_ratio``: the example-F1 rule predicts tag k when p_k ≥ r·max_j p_j.
    """

    epochs: int = 600
    batch_size: int = 0
    losses: tuple[str, ...] = ("pal",)
    feature_decay: float = 0.0
    variants: tuple[str, ...] = VARIANTS
    seeds: tuple[int, ...] = (0,)
    eval_every: int = 25
    f1_ratio: float = 0.5
    device: str = "auto"
    checkpoint_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        check_positive("train.epochs", self.epochs)
        check_positive("train.batch_size", self.batch_size, zero_ok=True)
        check_nonempty("train.losses", self.losses)
        for loss in self.losses:
            check_choice("train.losses[]", loss, LOSSES)
        check_nonempty("train.variants", self.variants)
        for v in self.variants:
            check_choice("train.variants[]", v, VARIANTS)
        check_nonempty("train.seeds", self.seeds)
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"train.seeds must be distinct non-negative integers, got {list(self.seeds)}")
        if len(set(self.losses)) != len(self.losses) or len(set(self.variants)) != len(self.variants):
            raise ValueError("train.losses and train.variants must not repeat an entry")
        check_positive("train.feature_decay", self.feature_decay, zero_ok=True)
        check_positive("train.eval_every", self.eval_every)
        check_positive("train.checkpoint_every", self.checkpoint_every)
        if not 0.0 < self.f1_ratio <= 1.0:
            raise ValueError(f"train.f1_ratio must lie in (0, 1], got {self.f1_ratio}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")

    def measured_epochs(self) -> list[int]:
        """0 (initialisation), every ``eval_every`` epochs and the last one."""
        return sorted(set(range(0, self.epochs + 1, self.eval_every)) | {self.epochs})


@dataclass(frozen=True)
class MultiLabelConfig:
    """A multi-label NC training experiment (kind ``multilabel``)."""

    name: str = "multilabel"
    data: MLDataConfig = field(default_factory=MLDataConfig)
    model: MLModelConfig = field(default_factory=MLModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.2, weight_decay=1e-2))
    train: MLTrainConfig = field(default_factory=MLTrainConfig)

    def __post_init__(self) -> None:
        if "fixed_etf_dimk" in self.train.variants and self.num_tags < 2:
            raise ValueError("fixed_etf_dimk needs at least 2 tags")
        if self.model.feature_dim < self.num_tags and "fixed_etf" in self.train.variants:
            raise ValueError(f"model.feature_dim must be >= K = {self.num_tags} for the official fixed ETF head "
                             f"(W·I_(K×D)), got {self.model.feature_dim}")
        if self.model.batch_norm and self.train.batch_size > 0 and self.num_train % self.train.batch_size == 1:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} leaves a last batch of 1 of the {self.num_train} training "
                f"samples, which BatchNorm cannot train on; choose another batch size (0 = full batch)"
            )

    @property
    def num_tags(self) -> int:
        """K, the number of tags."""
        return self.data.num_tags

    @property
    def num_train(self) -> int:
        """N, the number of training composites: Σ_m C(K, m)·per_set[m−1]."""
        from math import comb

        return sum(comb(self.num_tags, m) * c for m, c in enumerate(self.data.per_set, start=1))


@dataclass(frozen=True)
class UFMStudyConfig:
    """A UFM study (kind ``multilabel-ufm``): solve ``ufm`` for every loss in ``losses`` (empty: ``ufm.loss``)
    × every λ in ``lambdas`` (λ_W = λ_H = λ_b = λ; empty: ``ufm``'s weight decays) × ``restarts`` random
    initialisations (seeds ``ufm.seed``, ``ufm.seed`` + 1, ...), and compare with the theory."""

    name: str = "multilabel-ufm"
    ufm: UFMConfig = field(default_factory=UFMConfig)
    losses: tuple[str, ...] = ()
    lambdas: tuple[float, ...] = ()
    restarts: int = 1

    def __post_init__(self) -> None:
        for loss in self.losses:
            check_choice("losses[]", loss, list(UFM_LOSSES))
        if len(set(self.losses)) != len(self.losses) or len(set(self.lambdas)) != len(self.lambdas):
            raise ValueError("losses and lambdas must not repeat an entry")
        for lam in self.lambdas:
            if not lam > 0:
                raise ValueError(f"lambdas must be > 0 (λ_W = λ_H = λ_b = λ), got {list(self.lambdas)}")
        check_positive("restarts", self.restarts)

    def cases(self) -> list[dict[str, object]]:
        """``[{"loss", "lambda", "restart", "seed", "key"}, ...]`` in solving order (``lambda`` None = ufm's decays)."""
        losses = self.losses or (self.ufm.loss,)
        lambdas: tuple[float | None, ...] = self.lambdas or (None,)
        out = []
        for loss in losses:
            for lam in lambdas:
                for r in range(self.restarts):
                    lam_text = "ufm" if lam is None else f"{lam:g}"
                    out.append({"loss": loss, "lambda": lam, "restart": r, "seed": self.ufm.seed + r,
                                "key": f"{loss}/lambda={lam_text}/restart={r}"})
        return out
