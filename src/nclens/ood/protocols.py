"""The data protocols of the OOD experiment: ID training/test data, OOD sets and transfer tasks, as tensors.

=============  ==========================================  ==============================================
protocol       ID data                                      OOD sets / transfer task
=============  ==========================================  ==============================================
digits         scikit-learn digits (8×8), ``id_classes``      held-out digit classes (``classes``), Gaussian
mnist1d        MNIST-1D (40-d), ``id_classes``                noise, transformed ID test inputs; transfer =
                                                            a probe on the held-out classes
fashion-mnist  Fashion-MNIST (28×28 real images, local       held-out Fashion-MNIST classes (``classes``,
               idx files), ``id_classes``, ``per_class``      near OOD), MNIST-5k digits (``mnist``, far,
               training images per class                    real), Gaussian noise, flipped/rotated ID test
                                                            images; transfer = probe on the held-out classes
features       a feature file of ``nclens extract`` (e.g.         held-out classes' rows (``classes``), a far
               EfficientNet-Lite0 on Fashion-MNIST), split      file (``far``, e.g. MNIST-5k through the same
               per class by ``test_fraction``                   network), noise; transfer on held-out classes
=============  ==========================================  ==============================================

Embedded inputs are centred per input and scaled by one global RMS, both from the ID training data
(a per-pixel std would blow transformed inputs up into trivially far OOD inputs). Images are scaled to
[0, 1] and standardised with the ID training pixels' mean and std (one channel), as the official code
normalises with channel statistics; nothing is downloaded (``nclens.data.load_images`` reads local files).

Example:
    >>> from nclens.ood.config import DataConfig
    >>> d = load_protocol(DataConfig(name="digits"))
    >>> d.num_classes, sorted(d.ood), tuple(d.x_train.shape[1:])
    (5, ['classes', 'hflip', 'noise', 'rot90'], (64,))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from nclens.ood.config import DataConfig

__all__ = ["OODData", "load_protocol", "feature_protocol", "transform_inputs"]


@dataclass
class OODData:
    """One protocol's tensors: ID train/test, OOD sets (inputs only), transfer tasks (train, test)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    ood: dict[str, Tensor]
    transfer: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """K (ID labels are 0..K−1)."""
        return int(self.y_train.max()) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape."""
        return tuple(self.x_train.shape[1:])


def transform_inputs(x: Tensor, name: str, side: int | None) -> Tensor:
    """A transformed copy of inputs x (N, D) or (N, 1, H, W): hflip, vflip, rot90, rot180 (images), reverse, negate."""
    if name in ("hflip", "vflip", "rot90", "rot180"):
        if x.ndim == 4:
            img = x
        elif side is not None:
            img = x.reshape(-1, 1, side, side)  # (N, side²) -> (N, 1, side, side)
        else:
            raise ValueError(f"transform {name!r} needs square images; use 'reverse' or 'negate' for this dataset")
        img = {"hflip": lambda t: t.flip(3), "vflip": lambda t: t.flip(2), "rot90": lambda t: t.rot90(1, dims=(2, 3)),
               "rot180": lambda t: t.rot90(2, dims=(2, 3))}[name](img)
        return img.reshape(x.shape)
    if name == "reverse":
        return x.flip(-1)
    if name == "negate":
        return -x
    raise ValueError(f"unknown transform {name!r}")


def _relabel(y: Tensor, classes: tuple[int, ...]) -> Tensor:
    lut = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    return lut[y]


def _noise(like: Tensor, seed: int) -> Tensor:
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(seed + 12345))


def _embedded(cfg: DataConfig) -> OODData:
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
        raise ValueError(
            f"data.id_classes/ood_classes {missing} are not classes of {cfg.name} (labels {sorted(labels)})")
    ids, far = split.subset_classes(list(cfg.id_classes)), split.subset_classes(list(cfg.ood_classes))
    mean = ids.x_train.mean(0)
    scale = (ids.x_train - mean).square().mean().sqrt().clamp_min(1e-8)

    def norm(x: Tensor) -> Tensor:
        return ((x - mean) / scale).float()

    ood = {"classes": norm(far.x_test)}
    if cfg.noise:
        ood["noise"] = _noise(ids.x_test, cfg.split_seed).float()
    for name in cfg.transforms:
        ood[name] = norm(transform_inputs(ids.x_test, name, side))
    return OODData(norm(ids.x_train), ids.y_train.long(), norm(ids.x_test), ids.y_test.long(), ood,
                   {"classes": (norm(far.x_train), far.y_train.long(), norm(far.x_test), far.y_test.long())})


def _images(cfg: DataConfig) -> OODData:
    from nclens.data import load_images

    train = load_images("fashion-mnist", "train", root=cfg.root)
    test = load_images("fashion-mnist", "test", root=cfg.root)

    def pick(data, classes: tuple[int, ...], per_class: int | None, seed: int) -> tuple[Tensor, Tensor]:
        keep = torch.isin(data.labels, torch.tensor(classes))
        sub_labels = data.labels[keep]
        images = data.images[keep]
        if per_class is not None:
            from nclens.data import class_balanced_indices

            rows = torch.as_tensor(class_balanced_indices(sub_labels.numpy(), per_class, seed))
            images, sub_labels = images[rows], sub_labels[rows]
        return images.float() / 255.0, _relabel(sub_labels, classes)

    x_tr, y_tr = pick(train, cfg.id_classes, cfg.per_class, cfg.split_seed)
    x_te, y_te = pick(test, cfg.id_classes, cfg.test_per_class, cfg.split_seed)
    t_tr, ty_tr = pick(train, cfg.ood_classes, cfg.per_class, cfg.split_seed + 1)
    t_te, ty_te = pick(test, cfg.ood_classes, cfg.test_per_class, cfg.split_seed + 1)
    mean, std = x_tr.mean(), x_tr.std().clamp_min(1e-8)

    def norm(x: Tensor) -> Tensor:
        return ((x - mean) / std).float()

    ood = {"classes": norm(t_te)}
    if cfg.far:
        far = load_images("mnist-5k", "all", root=cfg.root, per_class=cfg.far_per_class, seed=cfg.split_seed)
        ood["mnist"] = norm(far.images.float() / 255.0)
    if cfg.noise:
        ood["noise"] = _noise(x_te, cfg.split_seed).float()
    for name in cfg.transforms:
        ood[name] = norm(transform_inputs(x_te, name, None))
    return OODData(norm(x_tr), y_tr, norm(x_te), y_te, ood, {"classes": (norm(t_tr), ty_tr, norm(t_te), ty_te)})


def _split_rows(labels: Tensor, classes: tuple[int, ...], test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded per-class split of the rows of ``classes`` into (train rows, test rows), each sorted."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in classes:
        rows = torch.nonzero(labels == c).flatten()
        if rows.numel() < 2:
            raise ValueError(f"class {c} has {rows.numel()} rows in the feature file; it needs at least 2")
        rows = rows[torch.randperm(rows.numel(), generator=gen)]
        n_test = min(max(1, round(test_fraction * rows.numel())), rows.numel() - 1)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def feature_protocol(cfg: DataConfig, layers: list[str] | None = None, seed: int = 0) -> dict[str, OODData]:
    """``data.name='features'``: one :class:`OODData` per layer of the feature file, all on the same rows.

    The ID classes' and held-out classes' rows are split per class by ``test_fraction`` (seeded by
    ``split_seed + seed``); OOD sets: the held-out classes' test rows (``classes``), the far file
    (``far``, every row) and Gaussian noise with ``noise``; inputs centred per dimension and scaled by
    one global RMS from the ID training rows (as the embedded protocols).
    """
    from nclens.data import read_extracted

    for key, path in (("data.features", cfg.features), ("data.far_features", cfg.far_features)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{key} {path!r} does not exist (write it with nclens extract)")
    main = read_extracted(cfg.features)
    far = read_extracted(cfg.far_features) if cfg.far_features else None
    import json

    order = json.loads(main["metadata"].get("layers", "[]")) or list(main["layers"])
    names = [n for n in order if n in main["layers"]] if layers is None else list(layers)
    missing = [n for n in names if n not in main["layers"] or (far is not None and n not in far["layers"])]
    if missing:
        raise ValueError(f"data.layer {missing} is not a layer of the feature file(s); layers: {list(main['layers'])}")
    labels = main["labels"].long()
    present = set(torch.unique(labels).tolist())
    absent = [c for c in (*cfg.id_classes, *cfg.ood_classes) if c not in present]
    if absent:
        raise ValueError(f"data.id_classes/ood_classes {absent} are not labels of {cfg.features!r}")
    id_tr, id_te = _split_rows(labels, cfg.id_classes, cfg.test_fraction, cfg.split_seed + seed)
    ho_tr, ho_te = _split_rows(labels, cfg.ood_classes, cfg.test_fraction, cfg.split_seed + seed)
    out = {}
    for name in names:
        x = main["layers"][name].float()
        mean = x[id_tr].mean(0)
        scale = (x[id_tr] - mean).square().mean().sqrt().clamp_min(1e-8)

        def norm(v: Tensor, mean: Tensor = mean, scale: Tensor = scale) -> Tensor:
            return ((v - mean) / scale).float()

        ood = {"classes": norm(x[ho_te])}
        if far is not None:
            ood["far"] = norm(far["layers"][name].float())
        if cfg.noise:
            ood["noise"] = _noise(x[id_te], cfg.split_seed + seed).float()
        out[name] = OODData(norm(x[id_tr]), _relabel(labels[id_tr], cfg.id_classes), norm(x[id_te]),
                            _relabel(labels[id_te], cfg.id_classes), ood,
                            {"classes": (norm(x[ho_tr]), _relabel(labels[ho_tr], cfg.ood_classes), norm(x[ho_te]),
                                         _relabel(labels[ho_te], cfg.ood_classes))})
    return out


def load_protocol(cfg: DataConfig, seed: int = 0) -> OODData:
    """The tensors of ``cfg``'s protocol (see the module docstring; ``seed`` only moves the feature-file split)."""
    if cfg.name == "features":
        return feature_protocol(cfg, [cfg.layer], seed)[cfg.layer]
    return _images(cfg) if cfg.name == "fashion-mnist" else _embedded(cfg)
