"""Typed, frozen config of the OOD-control experiment: ``data``, ``model``, ``optim``, ``train``, ``eval``,
``transfer``, and the variants × KoLeo weights × seeds to run.

Every range is checked here, so a bad value is refused before a run folder is created (issue 21).

Example:
    >>> from nclens.runs.config import override_config
    >>> cfg = override_config(OODConfig(), ["train.epochs=3", "seeds=[0]", "eval.probe=adamw"])
    >>> cfg.train.epochs, cfg.seeds, cfg.eval.probe, cfg.optim.name
    (3, (0,), 'adamw', 'sgd')
    >>> override_config(OODConfig(), ["train.koleo_weight=-1"])
    Traceback (most recent call last):
    ...
    ValueError: train.koleo_weight must be >= 0, got -1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nclens.runs.config import check_choice, check_positive
from nclens.train.optim import OptimConfig

__all__ = [
    "VARIANTS",
    "DATASETS",
    "TRANSFORMS",
    "SCORES",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "AdamWProbeConfig",
    "EvalConfig",
    "TransferConfig",
    "OODConfig",
    "OptimConfig",
]

#: variant name → (KoLeo on the encoder feature, frozen ETF projector)
VARIANTS: dict[str, tuple[bool, bool]] = {
    "baseline": (False, False),
    "entropy": (True, False),
    "projector": (False, True),
    "both": (True, True),
    "frozen": (False, False),  # no training: every layer of a feature file as it is (data.name=features)
}
DATASETS = ("digits", "mnist1d", "fashion-mnist", "features")
TRANSFORMS = ("hflip", "vflip", "rot90", "rot180", "reverse", "negate")
#: OOD scores (:mod:`nclens.ood.scores`), default first
SCORES = ("energy", "msp", "max_logit", "mahalanobis", "nci", "neco")


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")


def _distinct(key: str, values: tuple) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{key} has duplicates: {list(values)}")


@dataclass(frozen=True)
class DataConfig:
    """The protocol (:mod:`nclens.ood.protocols`).

    Attributes:
        name: ``digits`` | ``mnist1d`` (embedded) | ``fashion-mnist`` (real images from local files) |
            ``features`` (a feature file of ``nclens extract``, e.g. EfficientNet-Lite on Fashion-MNIST).
        id_classes / ood_classes: ID classes (relabelled 0..K−1) and held-out classes (near OOD and the
            transfer task).
        noise: add a Gaussian-noise OOD set; transforms: transformed ID test inputs as OOD sets.
        test_fraction, split_seed, mnist1d_samples: the embedded split / the seed of every draw.
        per_class / test_per_class: fashion-mnist images per class drawn (seeded, class-balanced) from the
            training / test split (``null`` = all); also used for the held-out classes.
        far, far_per_class: fashion-mnist: add MNIST-5k digits as a far OOD set (``far_per_class`` of the
            500 per class; ``null`` = all 5,000).
        root: folder holding the idx files (default: ``NCLENS_DATA`` or the Debian dataset location).
        features: ``features``: the ``.safetensors`` file of the ID / held-out classes (split per class by
            ``test_fraction``, seeded); ``layer``: its layer the trained heads read (the
            ``frozen`` variant evaluates every layer of the file as it is); ``far_features``: a file of far-OOD inputs
            (e.g. MNIST-5k through the same network).
    """

    name: str = "digits"
    id_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    ood_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    noise: bool = True
    transforms: tuple[str, ...] = ("hflip", "rot90")
    test_fraction: float = 0.25
    split_seed: int = 0
    mnist1d_samples: int = 4000
    per_class: int | None = None
    test_per_class: int | None = None
    far: bool = True
    far_per_class: int | None = None
    root: str | None = None
    features: str | None = None
    far_features: str | None = None
    layer: str = "pool"

    def __post_init__(self) -> None:
        check_choice("data.name", self.name, DATASETS)
        if self.name == "features":
            if not self.features:
                raise ValueError("data.name='features' reads a feature file: set data.features=<path.safetensors>")
            if self.transforms:
                raise ValueError(f"data.transforms {list(self.transforms)}: feature files take no input transforms; "
                                 "set data.transforms=[]")
        bad = [t for t in self.transforms if t not in TRANSFORMS]
        if bad:
            raise ValueError(f"data.transforms {bad} unknown; valid: {list(TRANSFORMS)}")
        if self.name == "mnist1d" and set(self.transforms) - {"reverse", "negate"}:
            raise ValueError(f"data.transforms {list(self.transforms)}: mnist1d sequences take only reverse, negate")
        _distinct("data.transforms", self.transforms)
        if len(self.id_classes) < 2:
            raise ValueError(f"data.id_classes needs at least 2 classes, got {list(self.id_classes)}")
        if len(self.ood_classes) < 2:
            raise ValueError(
                f"data.ood_classes needs at least 2 classes (the transfer task), got {list(self.ood_classes)}")
        _distinct("data.id_classes", self.id_classes)
        _distinct("data.ood_classes", self.ood_classes)
        overlap = set(self.id_classes) & set(self.ood_classes)
        if overlap:
            raise ValueError(f"data.id_classes and data.ood_classes overlap in {sorted(overlap)}")
        if any(c < 0 or c > 9 for c in (*self.id_classes, *self.ood_classes)):
            raise ValueError(f"data classes must lie in 0..9, got {list(self.id_classes)} / {list(self.ood_classes)}")
        _finite("data.test_fraction", self.test_fraction)
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must lie in (0, 1), got {self.test_fraction}")
        check_positive("data.mnist1d_samples", self.mnist1d_samples)
        for key in ("per_class", "test_per_class", "far_per_class"):
            if getattr(self, key) is not None:
                check_positive(f"data.{key}", getattr(self, key))
        if self.far_per_class is not None and self.far_per_class > 500:
            raise ValueError(
                f"data.far_per_class must be <= 500 (MNIST-5k has 500 per class), got {self.far_per_class}")


@dataclass(frozen=True)
class ModelConfig:
    """Encoder (+ optional projector) + linear classifier (:mod:`nclens.ood.networks`).

    Attributes:
        arch: ``mlp`` (vector inputs: ``hidden`` widths, then ``feature_dim``) or ``cnn`` (images: conv
            stages of ``channels``, then a global average pool).
        batchnorm: BatchNorm after every Linear / conv.
        projector_expansion: hidden multiplier of the ETF projector (4 in the paper).
    """

    arch: str = "mlp"
    hidden: tuple[int, ...] = (256, 256)
    feature_dim: int = 128
    channels: tuple[int, ...] = (16, 32, 64)
    batchnorm: bool = True
    projector_expansion: int = 4

    def __post_init__(self) -> None:
        check_choice("model.arch", self.arch, ("mlp", "cnn"))
        for key in ("hidden", "channels"):
            if any(w < 1 for w in getattr(self, key)):
                raise ValueError(f"model.{key} widths must be >= 1, got {list(getattr(self, key))}")
        if self.arch == "cnn" and not self.channels:
            raise ValueError("model.channels must not be empty for model.arch='cnn'")
        if self.feature_dim < 2:
            raise ValueError(f"model.feature_dim must be >= 2 (the ETF projector needs c >= 2), got {self.feature_dim}")
        if self.arch == "cnn" and self.channels[-1] < 2:
            raise ValueError(f"model.channels[-1] must be >= 2 (the pooled feature), got {self.channels[-1]}")
        check_positive("model.projector_expansion", self.projector_expansion)


@dataclass(frozen=True)
class TrainConfig:
    """Training of one variant: CE (label smoothing) + α·KoLeo(encoder feature) for the KoLeo variants.

    ``koleo_weight`` is α when ``koleo_weights`` (the sweep) is empty.
    """

    epochs: int = 60
    batch_size: int = 64
    label_smoothing: float = 0.1
    koleo_weight: float = 0.5
    koleo_eps: float = 1e-8
    device: str = "cpu"
    checkpoint_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        check_positive("train.epochs", self.epochs)
        check_positive("train.checkpoint_every", self.checkpoint_every)
        if self.batch_size < 2:
            raise ValueError(f"train.batch_size must be >= 2 (KoLeo needs a nearest neighbour in the batch), "
                             f"got {self.batch_size}")
        for key in ("label_smoothing", "koleo_weight", "koleo_eps"):
            _finite(f"train.{key}", getattr(self, key))
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")
        if self.koleo_weight < 0:
            raise ValueError(f"train.koleo_weight must be >= 0, got {self.koleo_weight!r}")
        if self.koleo_eps < 0:
            raise ValueError(f"train.koleo_eps must be >= 0, got {self.koleo_eps!r}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")


@dataclass(frozen=True)
class AdamWProbeConfig:
    """The paper's probe (:class:`~nclens.ood.probes.AdamWProbe`): official lr 1e-3, 30 epochs, batch 256,
    weight decay 0, label smoothing 0.1 (``nc_eval/nc_eval_resnet_nc.sh``)."""

    lr: float = 1e-3
    epochs: int = 30
    batch_size: int = 256
    weight_decay: float = 0.0
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        for key in ("lr", "weight_decay", "label_smoothing"):
            _finite(f"eval.adamw.{key}", getattr(self, key))
        if self.lr <= 0:
            raise ValueError(f"eval.adamw.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"eval.adamw.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"eval.adamw.label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")
        check_positive("eval.adamw.epochs", self.epochs)
        check_positive("eval.adamw.batch_size", self.batch_size)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of every layer: probe, scores, convention.

    Attributes:
        scores: OOD scores to compute; detection_score: the headline one (energy in the paper).
        positive: ``"id"`` (paper, OpenOOD) or ``"ood"`` (pytorch-ood) convention of AUPR / FPR95.
        probe: the layer's classifier for NC3/NC4 and the logit scores, and the transfer probe:
            ``adamw`` (the paper protocol's probe) or ``logistic`` (scikit-learn, standardised features).
        probe_c, probe_max_iter: the logistic probe; adamw: the AdamW probe.
        nci_alpha: α of NCI's L1 term; batch_size: feature-extraction batch size.
        per_layer: evaluate every encoder block / conv stage (conv maps pooled to 2×2, as the official
            hooks) and the projector's hidden layer too, so that NC and OOD performance can be
            correlated across the layers of each network (the paper's Fig. 1).
    """

    scores: tuple[str, ...] = SCORES
    detection_score: str = "energy"
    positive: str = "id"
    probe: str = "logistic"
    probe_c: float = 1.0
    probe_max_iter: int = 2000
    adamw: AdamWProbeConfig = field(default_factory=AdamWProbeConfig)
    nci_alpha: float = 0.0
    batch_size: int = 512
    per_layer: bool = False

    def __post_init__(self) -> None:
        bad = [s for s in self.scores if s not in SCORES]
        if bad:
            raise ValueError(f"eval.scores {bad} unknown; valid: {list(SCORES)}")
        if not self.scores:
            raise ValueError("eval.scores must not be empty")
        if self.detection_score not in self.scores:
            raise ValueError(
                f"eval.detection_score {self.detection_score!r} must be one of eval.scores {list(self.scores)}")
        check_choice("eval.positive", self.positive, ("id", "ood"))
        check_choice("eval.probe", self.probe, ("logistic", "adamw"))
        _finite("eval.probe_c", self.probe_c)
        if self.probe_c <= 0:
            raise ValueError(f"eval.probe_c must be > 0, got {self.probe_c!r}")
        check_positive("eval.probe_max_iter", self.probe_max_iter)
        _finite("eval.nci_alpha", self.nci_alpha)
        if self.nci_alpha < 0:
            raise ValueError(f"eval.nci_alpha must be >= 0, got {self.nci_alpha!r}")
        check_positive("eval.batch_size", self.batch_size)


@dataclass(frozen=True)
class TransferConfig:
    """Transfer accuracy: a probe (``eval.probe``) on each transfer task, full split and few-shot.

    ``shots_per_class`` switches the headline ``transfer_acc`` to a few-shot probe averaged over
    ``draws`` seeded, class-balanced draws shared by every model (draw i uses ``seed + i``); the
    full-split probe is always reported too (``transfer_acc_full``). ``null`` = full split only.
    """

    shots_per_class: int | None = None
    draws: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shots_per_class is not None:
            check_positive("transfer.shots_per_class", self.shots_per_class)
        check_positive("transfer.draws", self.draws)


@dataclass(frozen=True)
class OODConfig:
    """The whole experiment: the sections, and the variants × KoLeo weights × seeds to run.

    ``koleo_weights`` sweeps α: every KoLeo variant (``entropy``, ``both``) is trained once per α
    (``baseline`` and ``projector`` at α = 0); empty = the single ``train.koleo_weight``. Variant ``frozen``
    (``data.name=features`` only) trains nothing: every layer of the feature file is evaluated as it is.
    """

    name: str = "ood-digits"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.05, momentum=0.9, weight_decay=5e-4))
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    variants: tuple[str, ...] = ("baseline", "entropy", "projector", "both")
    koleo_weights: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"variants {bad} unknown; valid: {list(VARIANTS)}")
        if not self.variants:
            raise ValueError("variants must not be empty")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        _distinct("variants", self.variants)
        _distinct("seeds", self.seeds)
        _distinct("koleo_weights", self.koleo_weights)
        for a in self.koleo_weights:
            _finite("koleo_weights", a)
        if any(not a > 0 for a in self.koleo_weights):
            raise ValueError(f"koleo_weights must all be > 0 (α = 0 is the baseline), got {list(self.koleo_weights)}")
        if "frozen" in self.variants and self.data.name != "features":
            raise ValueError("variant 'frozen' evaluates the layers of a feature file: set data.name=features")
        if self.data.name == "fashion-mnist" and self.model.arch != "cnn":
            raise ValueError("data.name='fashion-mnist' trains a CNN: set model.arch=cnn")
        if self.data.name != "fashion-mnist" and self.model.arch != "mlp":
            raise ValueError(f"data.name={self.data.name!r} holds vectors: set model.arch=mlp")

    def jobs(self) -> list[tuple[str, float, int]]:
        """Every ``(variant, α, seed)`` to train, seeds outermost (KoLeo variants once per α).

        Example:
            >>> OODConfig(variants=("baseline", "entropy"), koleo_weights=(0.1, 1.0), seeds=(0,)).jobs()
            [('baseline', 0.0, 0), ('entropy', 0.1, 0), ('entropy', 1.0, 0)]
        """
        alphas = self.koleo_weights or (self.train.koleo_weight,)
        return [(variant, float(alpha), seed) for seed in self.seeds for variant in self.variants
                for alpha in (alphas if VARIANTS[variant][0] else (0.0,))]
