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

DATASETS = ("digits", "mnist1d", "mnist", "fashionmnist", "cifar10")
ARCHS = ("mlp", "cnn", "resnet18", "resnet34")
CLASSIFICATION_LOSSES = ("ce", "mse", "mse_sum", "mse_half")


def _choice(section: str, name: str, value: Any, allowed: Iterable[Any]) -> None:
    check_choice(f"{section}.{name}", value, allowed)


def _positive(section: str, name: str, value: float, *, zero_ok: bool = False) -> None:
    check_positive(f"{section}.{name}", value, zero_ok=zero_ok)


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is split and batched.

    ``name``: digits | mnist1d (embedded) | mnist | fashionmnist | cifar10 (torchvision, from
    ``root``, never downloaded). ``train_subset``: keep this many training samples (stratified,
    seeded by ``split_seed``). ``augment``: random crop (padding 4) + horizontal flip for images.
    """

    name: str = "digits"
    root: str | None = None
    num_samples: int = 4000
    test_fraction: float = 0.25
    split_seed: int = 0
    train_subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 1024
    augment: bool = False

    def __post_init__(self) -> None:
        _choice("data", "name", self.name, DATASETS)
        if self.name in ("mnist", "fashionmnist", "cifar10") and not self.root:
            raise ValueError(f"data.name={self.name!r} is read from a local torchvision root: set data.root")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must lie in (0, 1), got {self.test_fraction}")
        _positive("data", "batch_size", self.batch_size)
        _positive("data", "eval_batch_size", self.eval_batch_size)
        _positive("data", "num_samples", self.num_samples)
        if self.train_subset is not None:
            _positive("data", "train_subset", self.train_subset)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: ``mlp`` (depth hidden layers of ``width``), ``cnn`` (depth convs of ``width``
    channels) or ``resnet18``/``resnet34`` (first-stage ``width``; ``impl`` own | torchvision)."""

    arch: str = "mlp"
    depth: int = 6
    width: int = 128
    batchnorm: bool = True
    bias: bool = True
    activation: str = "relu"
    impl: str = "own"

    def __post_init__(self) -> None:
        from nclens.models.mlp import ACTIVATIONS

        _choice("model", "arch", self.arch, ARCHS)
        _choice("model", "activation", self.activation, sorted(ACTIVATIONS))
        _choice("model", "impl", self.impl, ("own", "torchvision"))
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
    ``layers`` (empty: every Linear/Conv layer) in ``mode`` input | output with ``pool`` avg | flatten.
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
    checkpoint_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        _choice("train", "loss", self.loss, CLASSIFICATION_LOSSES)
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
    sweep after the main run of kind ``intermediate``; kind ``intermediate-fixed-etf`` runs only the sweep."""

    enabled: bool = False
    num_fixed: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    epochs: int = 0

    def __post_init__(self) -> None:
        if any(n < 0 for n in self.num_fixed):
            raise ValueError(f"fixed_etf.num_fixed must be >= 0, got {list(self.num_fixed)}")
        _positive("fixed_etf", "epochs", self.epochs, zero_ok=True)


@dataclass(frozen=True)
class IntermediateConfig:
    """An intermediate-NC experiment (kinds ``intermediate`` and ``intermediate-fixed-etf``)."""

    name: str = "intermediate"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fixed_etf: FixedETFConfig = field(default_factory=FixedETFConfig)

    def __post_init__(self) -> None:
        if self.fixed_etf.enabled:
            self.check_fixed_etf()

    def check_fixed_etf(self) -> None:
        """The sweep's own checks: an MLP, and no more fixed layers than it has Linear layers."""
        if self.model.arch != "mlp":
            raise ValueError(f"the fixed-ETF sweep needs model.arch='mlp', got {self.model.arch!r}")
        if not self.fixed_etf.num_fixed:
            raise ValueError("fixed_etf.num_fixed must not be empty")
        if max(self.fixed_etf.num_fixed) > self.model.depth + 1:
            raise ValueError(
                f"fixed_etf.num_fixed {list(self.fixed_etf.num_fixed)} exceeds the MLP's "
                f"{self.model.depth + 1} Linear layers"
            )
