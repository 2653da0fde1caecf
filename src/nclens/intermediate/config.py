"""Typed, frozen config of the intermediate-NC experiment: ``data``, ``model``, ``optim``, ``train``, ``fixed_etf``.

Example:
    >>> from nclens.runs.config import override_config
    >>> cfg = override_config(IntermediateConfig(), ["train.epochs=3", "model.width=32"])
    >>> cfg.train.epochs, cfg.model.width, cfg.train.loss
    (3, 32, 'mse_sum')
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nclens.runs.config import check_choice, check_positive
from nclens.train.optim import OptimConfig

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "FixedETFConfig",
    "IntermediateConfig",
    "DATASETS",
    "ARCHS",
    "CLASSIFICATION_LOSSES",
]

DATASETS = ("digits", "mnist1d", "fashion-mnist", "fashionmnist", "mnist", "cifar10")
ARCHS = ("mlp", "cnn", "convnet", "resnet18", "resnet34", "resnet50")
SCATTERS = ("full", "trace", "projected", "auto")
CLASSIFICATION_LOSSES = ("ce", "mse", "mse_sum", "mse_half")


def _choice(section: str, name: str, value: Any, allowed: Iterable[Any]) -> None:
    check_choice(f"{section}.{name}", value, allowed)


def _positive(section: str, name: str, value: float, *, zero_ok: bool = False) -> None:
    check_positive(f"{section}.{name}", value, zero_ok=zero_ok)


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is split and batched.

    ``name``: digits | mnist1d (embedded) | fashion-mnist (``fashionmnist``) | mnist | cifar10 (real
    images from local files, never downloaded: ``root``, else ``$NCLENS_DATA``, else the Debian
    dataset location; see :mod:`nclens.intermediate.data`). ``per_class`` / ``test_per_class``: keep a
    seeded class-balanced subset of this many images per class of the train / test split;
    ``pad``: zero-pad images by this many pixels per side after normalising (the official 28→32: 2).
    ``train_subset``: keep this many training samples (stratified, seeded by ``split_seed``).
    ``augment``: random crop (padding 4) + horizontal flip for images.
    """

    name: str = "digits"
    root: str | None = None
    per_class: int | None = None
    test_per_class: int | None = None
    pad: int = 0
    num_samples: int = 4000
    test_fraction: float = 0.25
    split_seed: int = 0
    train_subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 1024
    augment: bool = False

    def __post_init__(self) -> None:
        _choice("data", "name", self.name, DATASETS)
        for key in ("per_class", "test_per_class"):
            if getattr(self, key) is not None:
                _positive("data", key, getattr(self, key))
                if self.name in ("digits", "mnist1d"):
                    raise ValueError(f"data.{key} selects real images; data.name={self.name!r} uses "
                                     "num_samples / train_subset")
        _positive("data", "pad", self.pad, zero_ok=True)
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must lie in (0, 1), got {self.test_fraction}")
        _positive("data", "batch_size", self.batch_size)
        _positive("data", "eval_batch_size", self.eval_batch_size)
        _positive("data", "num_samples", self.num_samples)
        if self.train_subset is not None:
            _positive("data", "train_subset", self.train_subset)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture.

    * ``mlp``: ``depth`` hidden Linear layers of ``width`` (Linear → BatchNorm → activation);
    * ``cnn``: nclens's plain CNN, ``depth`` 3×3 convs of ``width`` channels, global average pooling;
    * ``convnet``: the official ConvNet of Rangamani et al. (``src/Models.py``): ``depth`` blocks of
      ``width`` channels, the first two 2×2 stride-2 convs, the rest 3×3, BatchNorm, no average pooling,
      a Linear ``fc`` on the flattened maps (:class:`nclens.models.ConvNet`);
    * ``resnet18`` / ``resnet34`` / ``resnet50``: ``stem: small`` is nclens's small-image ResNet (3×3 stem,
      no max-pool; 18/34 only); ``stem: imagenet`` the torchvision shape (7×7 stride-2 stem, max-pool),
      as the official code builds it. ``impl``: own | torchvision (needs torchvision).
    """

    arch: str = "mlp"
    depth: int = 6
    width: int = 128
    batchnorm: bool = True
    bias: bool = True
    activation: str = "relu"
    impl: str = "own"
    stem: str = "small"

    def __post_init__(self) -> None:
        from nclens.models.mlp import ACTIVATIONS

        _choice("model", "arch", self.arch, ARCHS)
        _choice("model", "activation", self.activation, sorted(ACTIVATIONS))
        _choice("model", "impl", self.impl, ("own", "torchvision"))
        _choice("model", "stem", self.stem, ("small", "imagenet"))
        if self.arch == "resnet50" and self.stem != "imagenet":
            raise ValueError("model.arch='resnet50' exists only with model.stem='imagenet' (the torchvision shape)")
        if self.arch == "convnet" and self.depth < 2:
            raise ValueError(f"model.depth must be >= 2 for the ConvNet (two downsampling blocks), got {self.depth}")
        _positive("model", "width", self.width)
        _positive("model", "depth", self.depth, zero_ok=self.arch == "mlp")


@dataclass(frozen=True)
class TrainConfig:
    """Training and measurement.

    ``loss``: a registered classification loss (:data:`nclens.nn.losses.LOSSES`): ce | mse (PyTorch's
    ``nn.MSELoss``: mean over N·K of one-hot targets) | mse_sum (Σ_k, nclens 0.1's ``mse``) | mse_half;
    label smoothing applies to all. NC is measured at epoch 0
    (initialisation) and every ``measure_every`` epochs and at the last one, or exactly at
    ``measure_epochs`` when given, on the training data and (``measure_test``) the test data, for
    ``layers`` (empty: every Linear/Conv layer) in ``mode`` input | output with ``pool`` avg | flatten
    (the official code measures conv inputs flattened to C·H·W).

    ``scatter``: how nc1 is computed per layer — ``full`` (D×D scatter), ``projected`` (exact nc1 in two
    passes without a D×D matrix), ``trace`` (no nc1), ``auto`` (``full`` where the D×D scatter fits
    ``max_scatter_mib``, else ``projected``; stated in the records as ``scatter``).
    ``spectra_max_dim``: for layers with D ≤ this, also the per-class covariance spectra (within-class
    stable rank, the official ``ActivationCovSVs``/``ActivationStableRank``) in ``activations.jsonl``
    (K·D² memory; 0 = off).
    """

    epochs: int = 40
    loss: str = "mse_sum"
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    measure_every: int = 5
    measure_epochs: tuple[int, ...] = ()
    measure_test: bool = True
    eval_train: bool = True
    layers: tuple[str, ...] = ()
    mode: str = "input"
    pool: str = "avg"
    scatter: str = "auto"
    max_scatter_mib: int = 1024
    spectra_max_dim: int = 0
    checkpoint_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        _choice("train", "loss", self.loss, CLASSIFICATION_LOSSES)
        _choice("train", "scatter", self.scatter, SCATTERS)
        _positive("train", "max_scatter_mib", self.max_scatter_mib)
        _positive("train", "spectra_max_dim", self.spectra_max_dim, zero_ok=True)
        _choice("train", "mode", self.mode, ("input", "output"))
        _choice("train", "pool", self.pool, ("avg", "flatten"))
        _positive("train", "epochs", self.epochs)
        _positive("train", "measure_every", self.measure_every)
        _positive("train", "checkpoint_every", self.checkpoint_every)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        bad = [e for e in self.measure_epochs if not 0 <= e <= self.epochs]
        if bad:
            raise ValueError(f"train.measure_epochs must lie in [0, {self.epochs}], got {bad}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")

    def measured_epochs(self) -> list[int]:
        """The epochs at which NC is measured (0 = at initialisation), ascending."""
        if self.measure_epochs:
            return sorted(set(self.measure_epochs))
        return sorted(set(range(0, self.epochs + 1, self.measure_every)) | {self.epochs})


@dataclass(frozen=True)
class FixedETFConfig:
    """Fixed-ETF-layers sweep: for each L in ``num_fixed``, freeze the last L Linear layers of the MLP to
    ETF-like matrices and train the rest (``epochs``: 0 = same as train.epochs). ``enabled`` runs the
    sweep after the main run of kind ``intermediate``; kind ``intermediate-fixed-etf`` runs only the sweep.

    ``rule``: ``nclens`` — square layers √(d/(d−1))(I − 11ᵀ/d), the classifier a unit-row simplex ETF
    (seeded rotation), biases zeroed and frozen, any L up to every Linear layer; ``official`` — the
    official ``fixed_etfs_expt/intermediate_nc_etf_*.py``: weights ETF_d·I_{d×d_in} (the classifier
    ETF_K ⊕ 0, its first K input coordinates), only weights frozen, block 0 (the first Linear layer)
    always trained, so L ≤ depth."""

    enabled: bool = False
    num_fixed: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    epochs: int = 0
    rule: str = "nclens"

    def __post_init__(self) -> None:
        if any(n < 0 for n in self.num_fixed):
            raise ValueError(f"fixed_etf.num_fixed must be >= 0, got {list(self.num_fixed)}")
        _positive("fixed_etf", "epochs", self.epochs, zero_ok=True)
        _choice("fixed_etf", "rule", self.rule, ("nclens", "official"))


@dataclass(frozen=True)
class IntermediateConfig:
    """An intermediate-NC experiment (kinds ``intermediate`` and ``intermediate-fixed-etf``).

    ``seeds``: run the experiment once per seed (``train.seed`` set to each), as resumable sub-runs
    ``seed<s>/``, and aggregate mean ± sd over seeds (``seeds.json``); empty = one run with ``train.seed``.
    """

    name: str = "intermediate"
    seeds: tuple[int, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fixed_etf: FixedETFConfig = field(default_factory=FixedETFConfig)

    def __post_init__(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        if self.fixed_etf.enabled:
            self.check_fixed_etf()

    def check_fixed_etf(self) -> None:
        """The sweep's own checks: an MLP, and no more fixed layers than it has Linear layers."""
        if self.model.arch != "mlp":
            raise ValueError(f"the fixed-ETF sweep needs model.arch='mlp', got {self.model.arch!r}")
        if not self.fixed_etf.num_fixed:
            raise ValueError("fixed_etf.num_fixed must not be empty")
        limit = self.model.depth + 1 if self.fixed_etf.rule == "nclens" else self.model.depth
        if max(self.fixed_etf.num_fixed) > limit:
            what = (f"the MLP's {limit} Linear layers" if self.fixed_etf.rule == "nclens"
                    else f"{limit} (rule 'official' keeps the first of the MLP's {limit + 1} Linear layers trained)")
            raise ValueError(f"fixed_etf.num_fixed {list(self.fixed_etf.num_fixed)} exceeds {what}")
