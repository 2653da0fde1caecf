"""Controlling neural collapse for OOD detection and transfer (Harun, Gallardo & Kanan, ICML 2025).

The experiment trains four variants of one network and evaluates every layer of interest:

=============  ===============================================  ==================================
variant        training                                           layers evaluated
=============  ===============================================  ==================================
baseline       encoder → linear classifier, CE (label smoothing)   encoder
entropy        + α·KoLeo on the encoder feature                     encoder
projector      encoder → frozen :class:`ETFProjector` → classifier  encoder, projector
both           projector + KoLeo                                    encoder, projector
=============  ===============================================  ==================================

Per (variant, layer, seed) it measures, from frozen features:

* NC1–NC4 — statistics by :func:`nclens.core.measure.measure` on the ID training data; the classifier of a
  layer (for NC2_w, NC3, NC4) is that layer's linear probe, mapped back to raw coordinates;
* OOD detection — scores (:mod:`nclens.ood`: energy by default, MSP, max-logit from the probe's
  logits; Mahalanobis, NCI, NECO from the features) of ID test vs every OOD set; AUROC, AUPR, FPR95
  in the chosen convention; the headline is the mean over OOD sets;
* OOD generalisation — linear-probe accuracy on the transfer task(s): ``transfer_acc_full`` (probe on
  the whole transfer training split) and the headline ``transfer_acc``, which with
  ``transfer.shots_per_class`` is a few-shot probe averaged over ``transfer.draws`` seeded,
  class-balanced draws shared by every model (:func:`few_shot_indices`, :func:`transfer_accuracy`) —
  the full-split probe saturates on easy transfer tasks.

``koleo_weights`` sweeps the KoLeo weight α of the ``entropy`` / ``both`` variants (:func:`jobs`).
Then, across the (variant, α, layer) points, the Pearson correlation of NC1 with detection (AUROC) and
with transfer accuracy. The paper's claim: stronger collapse (lower NC1) ⇒ better detection and worse
transfer, i.e. corr(NC1, AUROC) < 0 and corr(NC1, transfer) > 0.

Protocols: ``digits`` / ``mnist1d`` (embedded; ID = classes 0–4, OOD = classes 5–9 + Gaussian noise
+ transformed ID inputs, transfer = probe on classes 5–9), and ``imagenet100`` (ImageNet-100 from a
local folder, the paper's eight OOD / transfer sets as image folders, torchvision ResNet-18; needs
torchvision and a GPU).

Example:
    >>> from nclens.ood.experiment import OODExperimentConfig, run_experiment, replace_config
    >>> cfg = replace_config(OODExperimentConfig(), ["train.epochs=1", "seeds=[0]", "variants=[baseline]",
    ...                                              "eval.scores=[energy]"])
    >>> result = run_experiment(cfg, out_dir=None, progress=False)
    >>> [(r["variant"], r["layer"]) for r in result.rows]
    [('baseline', 'encoder')]
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from nclens.core.io import (
    atomic_write_text,
    package_versions,
    read_json,
    read_jsonl,
    write_json,
    write_png,
)
from nclens.core.measure import measure
from nclens.core.metrics import compute_metrics, nc4_ncc_mismatch
from nclens.core.probe import Probe
from nclens.nn.heads import ETFProjector
from nclens.nn.regularizers import koleo_loss
from nclens.ood import (
    NECO,
    SCORES,
    LinearProbe,
    Mahalanobis,
    energy_score,
    max_logit_score,
    msp_score,
    nci_score,
    ood_metrics,
)
from nclens.runs.config import build_config, config_as_dict, load_yaml_config, override_config

__all__ = [
    "VARIANTS",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "TransferConfig",
    "OODExperimentConfig",
    "OODData",
    "OODNet",
    "ExperimentResult",
    "load_config",
    "replace_config",
    "config_to_dict",
    "build_data",
    "build_model",
    "train_model",
    "evaluate_model",
    "few_shot_indices",
    "transfer_accuracy",
    "jobs",
    "run_experiment",
    "summarise",
    "correlations",
]

#: variant name → (KoLeo on the encoder, frozen ETF projector).
VARIANTS: dict[str, tuple[bool, bool]] = {
    "baseline": (False, False),
    "entropy": (True, False),
    "projector": (False, True),
    "both": (True, True),
}
_DATASETS = ("digits", "mnist1d", "imagenet100")
_TRANSFORMS = ("hflip", "vflip", "rot90", "rot180", "reverse", "negate")
#: The paper's OOD / transfer datasets for ImageNet-100 (Harun et al. 2025, §5).
PAPER_EXTERNAL_SETS: tuple[str, ...] = (
    "imagenet_r",
    "cifar100",
    "flowers102",
    "ninco",
    "cub200",
    "aircraft",
    "pets",
    "stl10",
)


# ================================================================== configs
@dataclass(frozen=True)
class DataConfig:
    """Which protocol and data.

    Attributes:
        name: ``digits``, ``mnist1d`` (embedded) or ``imagenet100`` (local folders, torchvision).
        id_classes / ood_classes: embedded: ID classes (relabelled 0..K−1) and held-out classes used
            as near-OOD *and* as the transfer task.
        noise: add a Gaussian-noise OOD set (N(0, 1) in the standardised input space).
        transforms: transformed-ID OOD sets: ``hflip``, ``vflip``, ``rot90``, ``rot180`` (8×8 images),
            ``reverse`` (feature order), ``negate``.
        test_fraction, split_seed: embedded train/test split.
        mnist1d_samples: size of the generated MNIST-1D set.
        root: imagenet100: folder with ``train/`` and ``val/`` (ImageFolder layout, 100 classes).
        external: imagenet100: ``{name: {"train": dir, "test": dir}}`` — each set's ``test`` images
            are an OOD set and ``train``→``test`` is a transfer task (the paper uses the same eight).
        image_size, workers: imagenet100 loading.
    """

    name: str = "digits"
    id_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    ood_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    noise: bool = True
    transforms: tuple[str, ...] = ("hflip", "rot90")
    test_fraction: float = 0.25
    split_seed: int = 0
    mnist1d_samples: int = 4000
    root: str | None = None
    external: dict[str, dict[str, str]] = field(default_factory=dict)
    image_size: int = 224
    workers: int = 4

    def __post_init__(self) -> None:
        if self.name not in _DATASETS:
            raise ValueError(f"data.name must be one of {list(_DATASETS)}, got {self.name!r}")
        bad = [t for t in self.transforms if t not in _TRANSFORMS]
        if bad:
            raise ValueError(f"data.transforms {bad} unknown; valid: {list(_TRANSFORMS)}")
        if self.name != "imagenet100":
            if len(self.id_classes) < 2:
                raise ValueError(f"data.id_classes needs at least 2 classes, got {list(self.id_classes)}")
            overlap = set(self.id_classes) & set(self.ood_classes)
            if overlap:
                raise ValueError(f"data.id_classes and data.ood_classes overlap in {sorted(overlap)}")
            if len(self.ood_classes) < 2:
                raise ValueError(f"data.ood_classes needs at least 2 classes (transfer task), got {self.ood_classes}")


@dataclass(frozen=True)
class ModelConfig:
    """Encoder (+ optional projector) + linear classifier.

    Attributes:
        hidden: widths of the MLP encoder's hidden layers (embedded protocols).
        feature_dim: width of the encoder's output feature (the layer the KoLeo term acts on).
        batchnorm: BatchNorm1d after every Linear of the MLP encoder.
        arch: ``mlp`` (embedded) or a torchvision ResNet name (``resnet18``, ``resnet50``) for imagenet100.
        projector_expansion: hidden multiplier of the ETF projector (4 in the paper).
    """

    hidden: tuple[int, ...] = (256, 256)
    feature_dim: int = 128
    batchnorm: bool = True
    arch: str = "mlp"
    projector_expansion: int = 4


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one variant (CE with label smoothing + α·KoLeo where the variant asks)."""

    epochs: int = 60
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    koleo_weight: float = 0.5
    koleo_eps: float = 1e-8
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"train.optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            raise ValueError("train.batch_size must be >= 2 (KoLeo needs a nearest neighbour in the batch)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")
        if self.koleo_weight < 0:
            raise ValueError(f"train.koleo_weight must be >= 0, got {self.koleo_weight!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: scores, convention, probes.

    Attributes:
        scores: OOD scores to compute (:data:`nclens.ood.SCORES`).
        detection_score: the score behind the headline AUROC/FPR95 (energy in the paper's setting).
        positive: ``"id"`` (paper) or ``"ood"`` (pytorch-ood) convention for AUPR / FPR95.
        probe_c, probe_max_iter: the linear probes (scikit-learn LogisticRegression).
        nci_alpha: α of NCI's L1 term.
        batch_size: feature extraction batch size.
    """

    scores: tuple[str, ...] = SCORES
    detection_score: str = "energy"
    positive: str = "id"
    probe_c: float = 1.0
    probe_max_iter: int = 2000
    nci_alpha: float = 0.0
    batch_size: int = 512

    def __post_init__(self) -> None:
        bad = [s for s in self.scores if s not in SCORES]
        if bad:
            raise ValueError(f"eval.scores {bad} unknown; valid: {list(SCORES)}")
        if self.detection_score not in self.scores:
            raise ValueError(f"eval.detection_score {self.detection_score!r} must be one of eval.scores {self.scores}")
        if self.positive not in ("id", "ood"):
            raise ValueError(f"eval.positive must be 'id' or 'ood', got {self.positive!r}")


@dataclass(frozen=True)
class TransferConfig:
    """How transfer (OOD generalisation) is measured: a linear probe on each transfer task.

    A probe trained on the whole transfer training split saturates on easy tasks (≈ 0.96 on digits
    5–9 from every variant), hiding differences in how much of the new classes' structure a feature
    keeps. ``shots_per_class`` switches the headline ``transfer_acc`` to a *few-shot* probe: per
    draw, ``shots_per_class`` labelled samples of every transfer class (a seeded, class-balanced
    draw, :func:`few_shot_indices`) train the probe, the full transfer test split scores it, and the
    accuracy is averaged over ``draws`` draws. The draws depend only on ``seed`` and the draw index,
    so every variant, layer and training seed is probed on the *same* subsets (paired comparison).
    The full-split probe is always reported too, as ``transfer_acc_full``.

    Attributes:
        shots_per_class: labelled samples per transfer class for the few-shot probe; ``None`` = the
            whole transfer training split (then ``transfer_acc`` = ``transfer_acc_full``).
        draws: number of few-shot draws averaged.
        seed: seed of the first draw (draw ``i`` uses ``seed + i``).
    """

    shots_per_class: int | None = None
    draws: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shots_per_class is not None and self.shots_per_class < 1:
            raise ValueError(f"transfer.shots_per_class must be >= 1 or null, got {self.shots_per_class!r}")
        if self.draws < 1:
            raise ValueError(f"transfer.draws must be >= 1, got {self.draws!r}")


@dataclass(frozen=True)
class OODExperimentConfig:
    """The whole experiment: sections + the variants, KoLeo weights and seeds to run.

    ``koleo_weights`` sweeps α: every KoLeo variant (``entropy``, ``both``) is trained once per α
    (``baseline`` and ``projector`` are α = 0); empty = the single ``train.koleo_weight``.
    """

    name: str = "ood_digits"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    variants: tuple[str, ...] = ("baseline", "entropy", "projector", "both")
    koleo_weights: tuple[float, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int | None = 1

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"variants {bad} unknown; valid: {list(VARIANTS)}")
        if any(not a > 0 for a in self.koleo_weights):
            raise ValueError(f"koleo_weights must all be > 0 (α = 0 is the baseline), got {list(self.koleo_weights)}")
        if len(set(self.koleo_weights)) != len(self.koleo_weights):
            raise ValueError(f"koleo_weights has duplicates: {list(self.koleo_weights)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds has duplicates: {list(self.seeds)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null, got {self.threads!r}")
        if not self.variants or not self.seeds:
            raise ValueError("variants and seeds must not be empty")


def config_from_dict(raw: Mapping[str, Any] | None) -> OODExperimentConfig:
    """Build a config from a nested dict (YAML), every key checked and typed (:mod:`nclens.runs.config`)."""
    return build_config(OODExperimentConfig, raw)


def config_to_dict(config: OODExperimentConfig) -> dict[str, Any]:
    """A plain, JSON/YAML-ready dict of the config (tuples as lists)."""
    return config_as_dict(config)


def replace_config(config: OODExperimentConfig, overrides: Iterable[str]) -> OODExperimentConfig:
    """Apply ``key=value`` / ``section.key=value`` overrides (values parsed as YAML)."""
    return override_config(config, overrides)


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> OODExperimentConfig:
    """Read a YAML config, then apply ``overrides``."""
    return load_yaml_config(OODExperimentConfig, path, overrides)


# ===================================================================== data
@dataclass
class OODData:
    """Datasets of one protocol: ID train/test, OOD sets, transfer tasks (train, test)."""

    train: Dataset
    test: Dataset
    ood: dict[str, Dataset]
    transfer: dict[str, tuple[Dataset, Dataset]]
    num_classes: int
    in_dim: int | None = None
    train_eval: Dataset | None = None  # the training images with evaluation transforms (probes, statistics)

    @property
    def train_for_eval(self) -> Dataset:
        """The training set as evaluation sees it (no augmentation)."""
        return self.train_eval if self.train_eval is not None else self.train


def _transform(x: Tensor, name: str, side: int | None) -> Tensor:
    if name in ("hflip", "vflip", "rot90", "rot180"):
        if side is None:
            raise ValueError(f"transform {name!r} needs square images; use 'reverse' or 'negate' for this dataset")
        img = x.reshape(-1, side, side)  # (N, 64) -> (N, 8, 8)
        img = {
            "hflip": lambda t: t.flip(2),
            "vflip": lambda t: t.flip(1),
            "rot90": lambda t: t.rot90(1, dims=(1, 2)),
            "rot180": lambda t: t.rot90(2, dims=(1, 2)),
        }[name](img)
        return img.reshape(x.shape[0], -1)  # (N, 8, 8) -> (N, 64)
    if name == "reverse":
        return x.flip(1)
    return -x  # negate


def _embedded_data(cfg: DataConfig) -> OODData:
    """digits / mnist1d: raw inputs (transformed there), then centred per input and scaled by one global
    RMS, both from the ID training data."""
    from nclens.data import load_digits, load_mnist1d

    if cfg.name == "digits":
        split = load_digits(test_fraction=cfg.test_fraction, seed=cfg.split_seed, standardise=False)
        side: int | None = 8
    else:
        split = load_mnist1d(num_samples=cfg.mnist1d_samples, seed=cfg.split_seed, train_split=1 - cfg.test_fraction)
        side = None
    labels = set(torch.unique(split.y_train).tolist())
    missing = [c for c in (*cfg.id_classes, *cfg.ood_classes) if c not in labels]
    if missing:
        raise ValueError(f"classes {missing} are not in {cfg.name} (labels {sorted(labels)})")
    id_split = split.subset_classes(list(cfg.id_classes))
    far = split.subset_classes(list(cfg.ood_classes))
    # Per-input mean, one global scale: a per-pixel std would blow up transformed inputs (ink moved
    # onto border pixels whose ID variance is ~0) into artificially huge, trivially far OOD inputs.
    mean = id_split.x_train.mean(0)
    scale = (id_split.x_train - mean).square().mean().sqrt().clamp_min(1e-8)

    def norm(x: Tensor) -> Tensor:
        return (x - mean) / scale

    x_test = id_split.x_test
    ood: dict[str, Dataset] = {"classes": TensorDataset(norm(far.x_test), torch.full((len(far.x_test),), -1))}
    if cfg.noise:
        g = torch.Generator().manual_seed(cfg.split_seed + 12345)
        noise = torch.randn(x_test.shape, generator=g)
        ood["noise"] = TensorDataset(noise, torch.full((len(noise),), -1))
    for name in cfg.transforms:
        ood[name] = TensorDataset(norm(_transform(x_test, name, side)), torch.full((len(x_test),), -1))
    return OODData(
        train=TensorDataset(norm(id_split.x_train), id_split.y_train),
        test=TensorDataset(norm(x_test), id_split.y_test),
        ood=ood,
        transfer={
            "classes": (TensorDataset(norm(far.x_train), far.y_train), TensorDataset(norm(far.x_test), far.y_test))
        },
        num_classes=len(cfg.id_classes),
        in_dim=int(id_split.x_train.shape[1]),
    )


def _torchvision():
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(
            "the imagenet100 protocol loads image folders and ResNets with torchvision, which is not "
            "installed: pip install 'nclens[vision]'"
        ) from exc
    return torchvision


def _imagenet100_data(cfg: DataConfig) -> OODData:
    """ImageNet-100 (ImageFolder ``root/train``, ``root/val``) + external image-folder sets."""
    tv = _torchvision()
    from torchvision import transforms as T

    if cfg.root is None:
        raise ValueError("data.root must point to the ImageNet-100 folder (with train/ and val/)")
    root = Path(cfg.root).expanduser()
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(
                f"ImageNet-100 folder {str(root / sub)!r} does not exist (expected root/{sub}/<wnid>/*.JPEG)"
            )
    normalise = T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    size = cfg.image_size
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), normalise])
    eval_tf = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), normalise])
    train = tv.datasets.ImageFolder(str(root / "train"), transform=train_tf)
    test = tv.datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    ood: dict[str, Dataset] = {}
    transfer: dict[str, tuple[Dataset, Dataset]] = {}
    for name, paths in cfg.external.items():
        if not isinstance(paths, Mapping) or "test" not in paths:
            raise ValueError(f"data.external.{name} must be a mapping with 'test' (and 'train' for transfer)")
        for key, p in paths.items():
            if not Path(p).expanduser().is_dir():
                raise FileNotFoundError(f"data.external.{name}.{key} folder {p!r} does not exist (ImageFolder layout)")
        ood[name] = tv.datasets.ImageFolder(str(Path(paths["test"]).expanduser()), transform=eval_tf)
        if "train" in paths:
            transfer[name] = (
                tv.datasets.ImageFolder(str(Path(paths["train"]).expanduser()), transform=eval_tf),
                ood[name],
            )
    if not ood:
        raise ValueError("data.external lists no OOD sets for imagenet100")
    train_eval = tv.datasets.ImageFolder(str(root / "train"), transform=eval_tf)
    return OODData(
        train=train, test=test, ood=ood, transfer=transfer, num_classes=len(train.classes), train_eval=train_eval
    )


def build_data(cfg: DataConfig) -> OODData:
    """The datasets of ``cfg``'s protocol."""
    return _imagenet100_data(cfg) if cfg.name == "imagenet100" else _embedded_data(cfg)


# ==================================================================== model
class OODNet(nn.Module):
    """``encoder → projector (ETFProjector or identity) → classifier``; modules named for probing.

    ``forward`` returns ``(logits, encoder_feature)`` so the training loop can put the KoLeo term
    on the encoder's pooled feature without hooks.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int, projector: bool, expansion: int = 4):
        super().__init__()
        self.encoder = encoder
        self.projector = ETFProjector(feature_dim, expansion) if projector else nn.Identity()
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.has_projector = projector

    @property
    def feature_layers(self) -> list[str]:
        """Layers evaluated: ``encoder`` (+ ``projector``)."""
        return ["encoder", "projector"] if self.has_projector else ["encoder"]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102 - nn.Module API
        feat = self.encoder(x)
        return self.classifier(self.projector(feat)), feat


def _mlp_encoder(in_dim: int, cfg: ModelConfig) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_dim
    for width in (*cfg.hidden, cfg.feature_dim):
        layers.append(nn.Linear(prev, width))
        if cfg.batchnorm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        prev = width
    return nn.Sequential(*layers)


def build_model(cfg: OODExperimentConfig, data: OODData, variant: str, seed: int) -> OODNet:
    """The network of one variant, initialised from ``seed``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {list(VARIANTS)}")
    torch.manual_seed(seed)
    _, projector = VARIANTS[variant]
    if cfg.model.arch == "mlp":
        if data.in_dim is None:
            raise ValueError("model.arch='mlp' needs vector inputs (an embedded protocol)")
        encoder: nn.Module = _mlp_encoder(data.in_dim, cfg.model)
        dim = cfg.model.feature_dim
    else:
        tv = _torchvision()
        if not hasattr(tv.models, cfg.model.arch):
            raise ValueError(f"model.arch {cfg.model.arch!r} is not a torchvision model")
        encoder = getattr(tv.models, cfg.model.arch)(weights=None)
        if not isinstance(getattr(encoder, "fc", None), nn.Linear):
            raise ValueError(f"model.arch {cfg.model.arch!r} has no Linear 'fc' head; use a ResNet (resnet18, ...)")
        dim = encoder.fc.in_features
        encoder.fc = nn.Identity()  # pooled (B, dim) feature
    return OODNet(encoder, dim, data.num_classes, projector, cfg.model.projector_expansion)


# ================================================================= training
def _loader(ds: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, workers: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=workers,
        drop_last=shuffle and len(ds) > batch_size,
    )


def train_model(
    model: OODNet,
    data: OODData,
    cfg: TrainConfig,
    *,
    koleo: bool,
    seed: int,
    workers: int = 0,
    progress: bool = True,
    description: str = "training",
) -> list[dict[str, float]]:
    """Train with CE (label smoothing) + ``koleo_weight``·KoLeo(encoder feature) when ``koleo``.

    SGD (momentum, weight decay) or AdamW with a cosine learning-rate schedule; seeded shuffling.

    Returns:
        Per-epoch ``{"epoch", "loss", "ce", "koleo", "train_acc"}``.
    """
    from nclens.core.measure import progress_bar

    device = torch.device(cfg.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = _loader(data.train, cfg.batch_size, shuffle=True, seed=seed, workers=workers)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * len(loader))
    history: list[dict[str, float]] = []
    model.train()
    with progress_bar(progress, description, cfg.epochs) as advance:
        for epoch in range(cfg.epochs):
            sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, ce, koleo, correct (no syncs)
            n = 0
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits, feat = model(x)
                ce = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                reg = koleo_loss(feat, eps=cfg.koleo_eps) if koleo else torch.zeros((), device=device)
                loss = ce + cfg.koleo_weight * reg if koleo else ce
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                b = y.shape[0]
                correct = (logits.detach().argmax(1) == y).sum()
                sums += torch.stack([loss.detach() * b, ce.detach() * b, reg.detach() * b, correct]).double()
                n += b
            sums = sums.cpu()
            history.append(
                {
                    "epoch": epoch + 1,
                    "loss": float(sums[0] / n),
                    "ce": float(sums[1] / n),
                    "koleo": float(sums[2] / n),
                    "train_acc": float(sums[3] / n),
                }
            )
            advance()
    model.eval()
    return history


# =============================================================== evaluation
@torch.no_grad()
def extract_features(
    model: OODNet, ds: Dataset, layers: Sequence[str], batch_size: int, device: torch.device, workers: int = 0
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Features of ``layers`` (via :class:`~nclens.core.probe.Probe`), the model's logits and the labels."""
    model.eval()
    feats: dict[str, list[Tensor]] = {name: [] for name in layers}
    logits, labels = [], []
    with Probe(model, layers, mode="output") as probe:
        for x, y in _loader(ds, batch_size, workers=workers):
            probe.clear()
            out, _ = model(x.to(device))
            for name in layers:
                feats[name].append(probe.features[name].float().cpu())
            logits.append(out.float().cpu())
            labels.append(torch.as_tensor(y))
    return {k: torch.cat(v) for k, v in feats.items()}, torch.cat(logits), torch.cat(labels)


def few_shot_indices(labels: Tensor, shots_per_class: int, draws: int, seed: int = 0) -> Tensor:
    """Seeded, class-balanced few-shot draws: ``shots_per_class`` indices of every class, per draw.

    Draw ``i`` permutes the samples with ``torch.Generator().manual_seed(seed + i)``, then keeps,
    in permuted order, the first ``shots_per_class`` samples of each class (a stable sort of the
    permuted labels groups each class; a sample's rank inside its group is its position minus the
    group's start). Each draw is thus a uniform random subset of size ``shots_per_class`` of every
    class, independent of the other classes.

    Args:
        labels: (N,) integer labels.
        shots_per_class: samples kept per class (every class must have at least that many).
        draws: number of draws.
        seed: seed of draw 0.

    Returns:
        (draws, K·shots_per_class) int64 indices into ``labels``, each row sorted by class then by
        the draw's random order.

    Example:
        >>> idx = few_shot_indices(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]), 2, draws=3)
        >>> idx.shape, torch.bincount(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])[idx[0]]).tolist()
        (torch.Size([3, 6]), [2, 2, 2])
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(
            f"labels must be a 1-D integer tensor, got dtype {labels.dtype} and shape {tuple(labels.shape)}"
        )
    if not isinstance(shots_per_class, int) or shots_per_class < 1:
        raise ValueError(f"shots_per_class must be a positive integer, got {shots_per_class!r}")
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    if (counts < shots_per_class).any():
        short = {int(c): int(n) for c, n in zip(classes, counts) if n < shots_per_class}
        raise ValueError(f"shots_per_class={shots_per_class} exceeds the samples of classes {short} (class: count)")
    starts = torch.cumsum(counts, 0) - counts  # (K,) first position of each class after the sort
    n = labels.shape[0]
    out = []
    for d in range(draws):  # a handful of draws; the work inside is vectorised
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + d))  # (N,)
        order = torch.sort(labels[perm], stable=True).indices  # (N,) groups classes, keeps perm order
        grouped = perm[order]  # (N,) sample indices, class-sorted
        cls = torch.searchsorted(classes, labels[grouped])  # (N,) class index of each position
        rank = torch.arange(n) - starts[cls]  # (N,) rank inside its class
        out.append(grouped[rank < shots_per_class])
    return torch.stack(out)  # (draws, K·shots)


def transfer_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    shots_per_class: int | None = None,
    draws: int = 1,
    seed: int = 0,
    probe_c: float = 1.0,
    probe_max_iter: int = 1000,
) -> tuple[float, float]:
    """Linear-probe transfer accuracy, full-split or few-shot (mean over draws).

    acc = (1/R) Σ_r mean_{(h, y) ∈ test} [argmax_k probe_r(h)_k = y], probe_r a
    :class:`~nclens.ood.LinearProbe` fitted on draw r of :func:`few_shot_indices` (R = ``draws``), or
    on the whole training split when ``shots_per_class`` is ``None`` (R = 1).

    Returns:
        ``(mean accuracy, std over draws)`` (std 0 for the full split).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 4
        >>> x = torch.randn(200, 8, generator=g) + 3 * torch.eye(4, 8)[y]
        >>> acc, _ = transfer_accuracy(x[:100], y[:100], x[100:], y[100:], shots_per_class=5, draws=3)
        >>> acc > 0.8
        True
    """
    if shots_per_class is None:
        probe = LinearProbe(C=probe_c, max_iter=probe_max_iter).fit(train_features, train_labels)
        return float(probe.score(test_features, test_labels)), 0.0
    idx = few_shot_indices(torch.as_tensor(train_labels), shots_per_class, draws, seed)
    accs = np.array(
        [
            LinearProbe(C=probe_c, max_iter=probe_max_iter)
            .fit(train_features[rows], train_labels[rows])
            .score(test_features, test_labels)
            for rows in idx
        ],
        dtype=np.float64,
    )
    return float(accs.mean()), float(accs.std())


class _FeatureView(nn.Module):
    """Wrap the model so :func:`measure` sees ``forward(x) -> logits`` (its hooks do the rest)."""

    def __init__(self, model: OODNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.model(x)[0]


def _scores(
    name: str,
    feats: Tensor,
    logits: Tensor,
    *,
    stats,
    maha: Mahalanobis | None,
    probe: LinearProbe,
    neco: NECO | None,
    nci_alpha: float,
) -> Tensor:
    if name == "energy":
        return energy_score(logits)
    if name == "msp":
        return msp_score(logits)
    if name == "max_logit":
        return max_logit_score(logits)
    if name == "mahalanobis":
        return maha.score(feats)
    if name == "nci":
        mu_g = stats.sums.sum(0) / stats.total
        return nci_score(feats, probe.weight_, probe.bias_, mu_g, alpha=nci_alpha)
    return neco.score(feats, logits)


def evaluate_model(
    model: OODNet,
    data: OODData,
    cfg: OODExperimentConfig,
    *,
    workers: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate every feature layer of a trained model.

    Returns:
        ``(layer_rows, detection_rows)``: one row per layer (NC metrics, headline detection of
        ``eval.detection_score``, transfer accuracy, probe accuracy), and one row per (layer, score,
        OOD set) with AUROC / AUPR / FPR95.
    """
    ev = cfg.eval
    device = torch.device(cfg.train.device)
    layers = model.feature_layers
    k = data.num_classes
    report = measure(
        _FeatureView(model),
        _loader(data.train_for_eval, ev.batch_size, workers=workers),
        [f"model.{name}" for name in layers],
        mode="output",
        num_classes=k,
        device=device,
        progress=False,
    )
    bs = ev.batch_size
    tr_f, _, tr_y = extract_features(model, data.train_for_eval, layers, bs, device, workers)
    te_f, te_logits, te_y = extract_features(model, data.test, layers, bs, device, workers)
    ood_f = {name: extract_features(model, ds, layers, bs, device, workers)[0] for name, ds in data.ood.items()}
    transfer_f = {
        name: (
            extract_features(model, a, layers, bs, device, workers),
            extract_features(model, b, layers, bs, device, workers),
        )
        for name, (a, b) in data.transfer.items()
    }
    head_acc = float((te_logits.argmax(1) == te_y).double().mean())
    layer_rows: list[dict[str, Any]] = []
    det_rows: list[dict[str, Any]] = []
    for layer in layers:
        stats = report.stats[f"model.{layer}"]
        probe = LinearProbe(C=ev.probe_c, max_iter=ev.probe_max_iter).fit(tr_f[layer], tr_y)
        metrics = compute_metrics(stats, probe.weight_.to(stats.means.device))
        metrics["nc4_ncc_mismatch"] = nc4_ncc_mismatch(
            tr_f[layer].double(), probe.weight_, probe.bias_, stats.means.cpu()
        )
        neco = NECO(n_components=None).fit(tr_f[layer], tr_y) if "neco" in ev.scores else None
        maha = Mahalanobis().fit(stats) if "mahalanobis" in ev.scores else None
        id_logits = probe.logits(te_f[layer])
        per_score: dict[str, dict[str, dict[str, float]]] = {}
        for score in ev.scores:
            kw = dict(stats=stats, maha=maha, probe=probe, neco=neco, nci_alpha=ev.nci_alpha)
            s_id = _scores(score, te_f[layer], id_logits, **kw)
            per_score[score] = {}
            for set_name, f in ood_f.items():
                s_ood = _scores(score, f[layer], probe.logits(f[layer]), **kw)
                m = ood_metrics(s_id, s_ood, positive=ev.positive)
                per_score[score][set_name] = m
                det_rows.append({"layer": layer, "score": score, "ood_set": set_name, **m})
        transfer: dict[str, float] = {}
        transfer_full: dict[str, float] = {}
        transfer_draw_std: dict[str, float] = {}
        tc = cfg.transfer
        for name, ((a_f, _, a_y), (b_f, _, b_y)) in transfer_f.items():
            probe_kw = dict(probe_c=ev.probe_c, probe_max_iter=ev.probe_max_iter)
            transfer_full[name], _ = transfer_accuracy(a_f[layer], a_y, b_f[layer], b_y, **probe_kw)
            if tc.shots_per_class is None:
                transfer[name], transfer_draw_std[name] = transfer_full[name], 0.0
            else:
                transfer[name], transfer_draw_std[name] = transfer_accuracy(
                    a_f[layer],
                    a_y,
                    b_f[layer],
                    b_y,
                    shots_per_class=tc.shots_per_class,
                    draws=tc.draws,
                    seed=tc.seed,
                    **probe_kw,
                )
        headline = per_score[ev.detection_score]
        row: dict[str, Any] = {"layer": layer, "dim": int(tr_f[layer].shape[1])}
        row.update({k2: float(v) for k2, v in metrics.items()})
        row["id_probe_acc"] = probe.score(te_f[layer], te_y)
        row["id_head_acc"] = head_acc
        for key in ("auroc", "aupr", "fpr95"):
            row[key] = float(np.mean([m[key] for m in headline.values()]))
        for set_name, m in headline.items():
            row[f"auroc_{set_name}"] = m["auroc"]
            row[f"fpr95_{set_name}"] = m["fpr95"]
        for score in ev.scores:
            row[f"auroc_mean_{score}"] = float(np.mean([m["auroc"] for m in per_score[score].values()]))
        row["transfer_acc"] = float(np.mean(list(transfer.values()))) if transfer else float("nan")
        row["transfer_acc_full"] = float(np.mean(list(transfer_full.values()))) if transfer else float("nan")
        row["transfer_draw_std"] = float(np.mean(list(transfer_draw_std.values()))) if transfer else float("nan")
        for name in transfer:
            row[f"transfer_acc_{name}"] = transfer[name]
            row[f"transfer_acc_full_{name}"] = transfer_full[name]
        layer_rows.append(row)
    return layer_rows, det_rows


# =============================================================== experiment
@dataclass
class ExperimentResult:
    """Rows of one experiment (every seed, variant, layer) and their summary."""

    rows: list[dict[str, Any]]
    detection: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    correlations: dict[str, Any]
    out_dir: Path | None = None
    transfer: dict[str, Any] | None = None  # the transfer protocol (TransferConfig as a dict)


def summarise(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("nc1", "auroc", "fpr95", "transfer_acc")):
    """Mean and std over seeds per (variant, α, layer), in variant order, then α, then layer order.

    Rows without an ``alpha`` key are grouped under α = ``None``.
    """
    groups: dict[tuple[str, float | None, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r.get("alpha"), r["layer"]), []).append(r)
    order = list(VARIANTS)

    def sort_key(item):
        (variant, alpha, layer), _ = item
        return order.index(variant), -1.0 if alpha is None else alpha, layer != "encoder"

    out = []
    for (variant, alpha, layer), rs in sorted(groups.items(), key=sort_key):
        entry: dict[str, Any] = {"variant": variant, "alpha": alpha, "layer": layer, "seeds": len(rs)}
        for key in keys:
            vals = np.array([r[key] for r in rs if key in r], dtype=np.float64)
            entry[key] = float(vals.mean()) if vals.size else float("nan")
            entry[f"{key}_std"] = float(vals.std()) if vals.size else float("nan")
        out.append(entry)
    return out


def _label(entry: Mapping[str, Any], layer: bool = True) -> str:
    """``variant [α=…] / layer`` (α shown for the KoLeo variants)."""
    alpha = entry.get("alpha")
    text = entry["variant"]
    if alpha is not None and VARIANTS.get(entry["variant"], (False, False))[0]:
        text += f" α={alpha:g}"
    return f"{text} / {entry['layer']}" if layer else text


def correlations(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pearson r (and two-sided p) of NC1 — and of log NC1 — with AUROC, FPR95 and transfer accuracy.

    Expected signs under Harun et al. 2025 (lower NC1 = more collapse ⇒ better detection, worse
    transfer): r(NC1, AUROC) < 0, r(NC1, FPR95) > 0, r(NC1, transfer) > 0 — for the headline
    ``transfer_acc`` (few-shot when configured) and the full-split ``transfer_acc_full``. A key
    absent from the points gives NaN and ``agrees = None``.
    """
    from scipy.stats import pearsonr

    expected = {"auroc": -1, "fpr95": 1, "transfer_acc": 1, "transfer_acc_full": 1}
    nc1 = np.array([p["nc1"] for p in points], dtype=np.float64)
    out: dict[str, Any] = {"n_points": len(points)}
    for key, sign in expected.items():
        y = np.array([p.get(key, np.nan) for p in points], dtype=np.float64)
        ok = np.isfinite(y) & np.isfinite(nc1) & (nc1 > 0)
        if ok.sum() < 3 or np.std(y[ok]) == 0 or np.std(nc1[ok]) == 0:
            out[key] = {
                "r": float("nan"),
                "p": float("nan"),
                "r_log": float("nan"),
                "expected_sign": sign,
                "agrees": None,
            }
            continue
        r, p = pearsonr(nc1[ok], y[ok])
        r_log, p_log = pearsonr(np.log(nc1[ok]), y[ok])
        out[key] = {
            "r": float(r),
            "p": float(p),
            "r_log": float(r_log),
            "p_log": float(p_log),
            "expected_sign": sign,
            "agrees": bool(np.sign(r) == sign),
        }
    return out


def _colours(summary: Sequence[Mapping[str, Any]]) -> dict[tuple[str, float | None], Any]:
    """A colour per (variant, α): one hue per variant, darker for larger α within a KoLeo variant."""
    import matplotlib

    base = {"baseline": "tab:gray", "entropy": "Blues", "projector": "tab:red", "both": "Purples"}
    out: dict[tuple[str, float | None], Any] = {}
    for variant in VARIANTS:
        alphas = sorted({s["alpha"] for s in summary if s["variant"] == variant}, key=lambda a: -1 if a is None else a)
        for i, alpha in enumerate(alphas):
            if base[variant] in ("Blues", "Purples"):
                out[(variant, alpha)] = matplotlib.colormaps[base[variant]](0.45 + 0.5 * (i + 1) / (len(alphas) + 1))
            else:
                out[(variant, alpha)] = base[variant]
    return out


def _figures(out_dir: Path, rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], corr) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = _colours(summary)
    markers = {"encoder": "o", "projector": "s"}
    written = []

    def save(fig, name: str) -> None:
        write_png(fig, out_dir / name)
        written.append(name)

    panels = (
        ("auroc", "OOD detection AUROC (mean over OOD sets)"),
        ("transfer_acc", "transfer accuracy (headline probe)"),
        ("transfer_acc_full", "transfer accuracy (full-split probe)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    for ax, (key, label) in zip(axes, panels):
        for r in rows:
            if key in r:
                colour = colours.get((r["variant"], r.get("alpha")), "k")
                ax.scatter(r["nc1"], r[key], color=colour, marker=markers[r["layer"]], alpha=0.35, s=22)
        for s in summary:
            ax.errorbar(
                s["nc1"],
                s[key],
                xerr=s["nc1_std"],
                yerr=s[f"{key}_std"],
                fmt=markers[s["layer"]],
                color=colours[(s["variant"], s["alpha"])],
                ms=9,
                mec="k",
                capsize=2,
                label=_label(s),
            )
        c = corr.get(key, {})
        ax.set_xscale("log")
        ax.set_xlabel("NC1 = Tr(Σ_W Σ_B⁺)/K  (lower = more collapse)")
        ax.set_ylabel(label)
        ax.set_title(
            f"r(NC1, ·) = {c.get('r', float('nan')):+.2f} (p={c.get('p', float('nan')):.2g}); "
            f"log NC1: {c.get('r_log', float('nan')):+.2f}",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("NC1 vs detection and transfer (small: one seed; large: mean ± std over seeds)")
    save(fig, "nc1_vs_detection_transfer.png")

    keys = ("nc1", "auroc", "fpr95", "transfer_acc", "transfer_acc_full")
    titles = ("NC1 (log)", "AUROC", "FPR95", "transfer acc. (headline)", "transfer acc. (full split)")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.4))
    labels = [_label(s) for s in summary]
    x = np.arange(len(summary))
    for ax, key, title in zip(axes, keys, titles):
        vals = [s[key] for s in summary]
        errs = [s[f"{key}_std"] for s in summary]
        bars = ax.bar(
            x, vals, yerr=errs, color=[colours[(s["variant"], s["alpha"])] for s in summary], edgecolor="k", capsize=2
        )
        for bar, s in zip(bars, summary):
            if s["layer"] == "projector":
                bar.set_hatch("//")
        ax.set_xticks(x, labels, fontsize=7, rotation=40, ha="right")
        ax.set_title(title)
        if key == "nc1":
            ax.set_yscale("log")
        else:
            lo = min(v - e for v, e in zip(vals, errs))
            hi = max(v + e for v, e in zip(vals, errs))
            pad = 0.1 * (hi - lo + 1e-9)
            ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if key != "fpr95" else hi + pad)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("per variant, α and layer (mean ± std over seeds; hatched = projector layer)")
    save(fig, "variants_bars.png")
    return written


def _csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    import pandas as pd

    atomic_write_text(path, pd.DataFrame(list(rows)).to_csv(index=False))


def jobs(cfg: OODExperimentConfig) -> list[tuple[str, float, int]]:
    """Every ``(variant, α, seed)`` to train: KoLeo variants once per α of ``koleo_weights`` (or the
    single ``train.koleo_weight``), the others at α = 0; seeds outermost.

    Example:
        >>> from nclens.ood.experiment import OODExperimentConfig
        >>> jobs(OODExperimentConfig(variants=("baseline", "entropy"), koleo_weights=(0.1, 1.0), seeds=(0,)))
        [('baseline', 0.0, 0), ('entropy', 0.1, 0), ('entropy', 1.0, 0)]
    """
    alphas = cfg.koleo_weights or (cfg.train.koleo_weight,)
    out = []
    for seed in cfg.seeds:
        for variant in cfg.variants:
            for alpha in alphas if VARIANTS[variant][0] else (0.0,):
                out.append((variant, float(alpha), seed))
    return out


def _done_key(variant: str, alpha: float, seed: int) -> str:
    return f"{variant}/{alpha!r}/{seed}"


def run_experiment(
    cfg: OODExperimentConfig,
    out_dir: str | os.PathLike[str] | None,
    *,
    progress: bool = True,
    workers: int | None = None,
) -> ExperimentResult:
    """Run every (variant, seed), evaluate, summarise, correlate; write the run folder.

    The run folder (when ``out_dir`` is given) holds ``config.json`` (resolved config + versions),
    ``runs.jsonl`` (one record per finished (variant, seed): rows, detection rows, training history —
    a rerun with the same folder resumes after the last finished one), ``results.csv`` (every seed,
    variant, layer), ``detection.csv`` (every score and OOD set), ``summary.csv`` / ``summary.json``
    (mean ± std over seeds), ``correlations.json`` and two PNG figures.
    """
    with _thread_limit(cfg.threads):
        return _run_experiment(cfg, out_dir, progress=progress, workers=workers)


@contextlib.contextmanager
def _thread_limit(threads: int | None):
    """Limit torch and BLAS (threadpoolctl) threads for the run, then restore them.

    Small models on a shared CPU run far faster on one thread than on oversubscribed cores.
    """
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


def _run_experiment(
    cfg: OODExperimentConfig,
    out_dir: str | os.PathLike[str] | None,
    *,
    progress: bool,
    workers: int | None,
) -> ExperimentResult:
    data = build_data(cfg.data)
    workers = cfg.data.workers if (workers is None and cfg.data.name == "imagenet100") else (workers or 0)
    folder = Path(out_dir) if out_dir is not None else None
    done: dict[str, dict[str, Any]] = {}
    resolved = config_to_dict(cfg)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        cfg_path = folder / "config.json"
        if cfg_path.exists():
            previous = read_json(cfg_path).get("config")
            if previous != json.loads(json.dumps(resolved)):
                raise ValueError(
                    f"{str(folder)!r} holds a run of a different config; choose another --out to start afresh"
                )
        else:
            write_json(cfg_path, {"config": resolved, "versions": package_versions()})
        done = {_done_key(r["variant"], float(r["alpha"]), r["seed"]): r for r in read_jsonl(folder / "runs.jsonl")}
    todo = jobs(cfg)
    for i, (variant, alpha, seed) in enumerate(todo):
        if _done_key(variant, alpha, seed) in done:
            continue
        koleo, _ = VARIANTS[variant]
        model = build_model(cfg, data, variant, seed)
        start = time.perf_counter()
        name = f"{variant} α={alpha:g}" if koleo else variant
        history = train_model(
            model,
            data,
            dataclasses.replace(cfg.train, koleo_weight=alpha) if koleo else cfg.train,
            koleo=koleo,
            seed=seed,
            workers=workers,
            progress=progress,
            description=f"[{i + 1}/{len(todo)}] {name} seed {seed}",
        )
        layer_rows, det_rows = evaluate_model(model, data, cfg, workers=workers)
        meta = {"variant": variant, "alpha": alpha, "seed": seed}
        record = {
            **meta,
            "rows": [{**meta, **r} for r in layer_rows],
            "detection": [{**meta, **r} for r in det_rows],
            "history": history,
            "seconds": time.perf_counter() - start,
        }
        done[_done_key(variant, alpha, seed)] = record
        if folder is not None:
            from nclens.core.io import append_jsonl

            append_jsonl(folder / "runs.jsonl", [record])
    records = [done[_done_key(v, a, s)] for v, a, s in todo]
    rows = [r for rec in records for r in rec["rows"]]
    detection = [r for rec in records for r in rec["detection"]]
    summary = summarise(
        rows,
        keys=(
            "nc1",
            "nc1_trace",
            "auroc",
            "aupr",
            "fpr95",
            "transfer_acc",
            "transfer_acc_full",
            "transfer_draw_std",
            "id_probe_acc",
            "id_head_acc",
            "effective_rank",
        ),
    )
    corr = {"over_variant_layer_means": correlations(summary), "over_all_points": correlations(rows)}
    result = ExperimentResult(rows, detection, summary, corr, folder, transfer=config_to_dict(cfg)["transfer"])
    if folder is not None:
        _csv(folder / "results.csv", rows)
        _csv(folder / "detection.csv", detection)
        _csv(folder / "summary.csv", summary)
        write_json(folder / "summary.json", {"summary": summary, "correlations": corr, "transfer": result.transfer})
        write_json(folder / "correlations.json", corr)
        _figures(folder, rows, summary, corr["over_variant_layer_means"])
    return result


def format_summary(result: ExperimentResult) -> str:
    """The per-variant, per-α, per-layer table and the correlations as plain text."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="NC control for OOD: mean ± std over seeds")
    for col in ("variant", "layer", "NC1", "AUROC", "FPR95", "transfer", "transfer (full)", "ID acc"):
        table.add_column(col, justify="left" if col in ("variant", "layer") else "right")
    for s in result.summary:
        table.add_row(
            _label(s, layer=False),
            s["layer"],
            f"{s['nc1']:.3g} ± {s['nc1_std']:.2g}",
            f"{s['auroc']:.3f} ± {s['auroc_std']:.3f}",
            f"{s['fpr95']:.3f} ± {s['fpr95_std']:.3f}",
            f"{s['transfer_acc']:.3f} ± {s['transfer_acc_std']:.3f}",
            f"{s['transfer_acc_full']:.3f} ± {s['transfer_acc_full_std']:.3f}",
            f"{s['id_head_acc']:.3f}",
        )
    console = Console(width=160, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    lines = [capture.get().rstrip()]
    tc = result.transfer or {}
    if tc.get("shots_per_class") is not None:
        lines.append(
            f"transfer = {tc['shots_per_class']}-shot linear probe, mean over {tc['draws']} draws "
            f"(seed {tc['seed']}); transfer (full) = probe on the whole transfer training split"
        )
    for scope, corr in result.correlations.items():
        parts = []
        for key in ("auroc", "fpr95", "transfer_acc", "transfer_acc_full"):
            c = corr[key]
            verdict = "n/a" if c["agrees"] is None else ("agrees" if c["agrees"] else "DISAGREES")
            parts.append(f"r(NC1,{key})={c['r']:+.2f} p={c['p']:.2g} [log NC1 {c['r_log']:+.2f}] ({verdict})")
        lines.append(f"{scope} (n={corr['n_points']}): " + "; ".join(parts))
    return "\n".join(lines)
