"""The intermediate-NC experiment's data: embedded (digits, MNIST-1D) or real images from local files.

Real images (``fashion-mnist``, ``mnist``, ``cifar10``) are read by :func:`nclens.data.load_images`
(never downloaded): Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``) by default, any dataset from ``data.root`` (a folder of idx
files, or a torchvision root such as ``<root>/FashionMNIST/raw`` or ``<root>/cifar-10-batches-py``) or
from ``$NCLENS_DATA``. ``fashionmnist`` is the old spelling of ``fashion-mnist``.

Preprocessing follows the official code of Rangamani et al. (``src/DatasetWrapper.py`` of
``mariuslindegaard/Intermediate_Neural_Collapse``, branch ICML2023): pixels/255, normalised with the
dataset's fixed constants (MNIST 0.1307/0.3081, Fashion-MNIST 0.2860/0.3530, CIFAR-10
(125.3, 123.0, 113.9)/255 and (63.0, 62.1, 66.7)/255), *then* zero-padded by ``data.pad`` pixels per side
(the official MNIST-family transform pads 28×28 to 32×32: ``pad: 2``).

Example:
    >>> from nclens.intermediate.config import DataConfig
    >>> b = load_data(DataConfig(name="digits"))
    >>> b.input_shape, b.num_classes, b.x_train.shape[1]
    ((1, 8, 8), 10, 64)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from nclens.intermediate.config import DataConfig

__all__ = ["DataBundle", "load_data", "input_shape", "NORMALISATION", "IMAGE_SHAPES"]

#: Per-channel (mean, std) of the pixels/255 — the constants of the official DatasetWrapper.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": (tuple(v / 255.0 for v in (125.3, 123.0, 113.9)), tuple(v / 255.0 for v in (63.0, 62.1, 66.7))),
}

#: (C, H, W) of one image before padding.
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist1d": (1, 1, 40), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28),
                "cifar10": (3, 32, 32)}


@dataclass(frozen=True)
class DataBundle:
    """Inputs/labels of a train/test split plus the per-sample input shape and K."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    name: str = ""


def canonical_name(name: str) -> str:
    """``fashionmnist`` (the old spelling) → ``fashion-mnist``; other names unchanged."""
    return "fashion-mnist" if name == "fashionmnist" else name


def input_shape(cfg: DataConfig) -> tuple[int, int, int]:
    """(C, H, W) of one input of ``cfg`` after padding (no file is read)."""
    c, h, w = IMAGE_SHAPES[canonical_name(cfg.name)]
    return (c, h + 2 * cfg.pad, w + 2 * cfg.pad) if cfg.pad else (c, h, w)


def _images(name: str, cfg: DataConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Normalised, padded float32 images (N, C, H, W) and labels of the train and test splits."""
    from nclens.data import load_images

    train = load_images(name, "train", root=cfg.root, per_class=cfg.per_class, seed=cfg.split_seed)
    test = load_images(name, "test", root=cfg.root, per_class=cfg.test_per_class, seed=cfg.split_seed)
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in NORMALISATION[name])

    def prepare(images: Tensor) -> Tensor:
        x = (images.to(torch.float32) / 255.0 - mean) / std  # (N, C, H, W) uint8 -> normalised float32
        return F.pad(x, (cfg.pad,) * 4).contiguous() if cfg.pad else x.contiguous()  # zero-pad after normalising

    return prepare(train.images), train.labels, prepare(test.images), test.labels


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the dataset of ``cfg``: embedded (digits, mnist1d) or real images from local files.

    digits are kept flat (N, 64) with ``input_shape=(1, 8, 8)``; mnist1d flat (N, 40) with
    ``input_shape=(1, 1, 40)``; real images as (N, C, H, W) (see the module docstring).
    ``train_subset`` then keeps a stratified, seeded subset of the training split.

    Raises:
        nclens.data.DatasetNotFoundError: real images not found (the message lists where it looked).
    """
    from nclens.data import load_digits, load_mnist1d, stratified_split

    name = canonical_name(cfg.name)
    if name == "digits":
        s = load_digits(test_fraction=cfg.test_fraction, seed=cfg.split_seed)
        x_tr, y_tr, x_te, y_te, shape = s.x_train, s.y_train, s.x_test, s.y_test, (1, 8, 8)
    elif name == "mnist1d":
        s = load_mnist1d(num_samples=cfg.num_samples, seed=cfg.split_seed, train_split=1.0 - cfg.test_fraction)
        x_tr, y_tr, x_te, y_te, shape = s.x_train, s.y_train, s.x_test, s.y_test, (1, 1, s.x_train.shape[1])
    else:
        x_tr, y_tr, x_te, y_te = _images(name, cfg)
        shape = tuple(x_tr.shape[1:])
    if cfg.train_subset is not None and cfg.train_subset < x_tr.shape[0]:
        keep, _ = stratified_split(y_tr.numpy(), 1.0 - cfg.train_subset / x_tr.shape[0], cfg.split_seed)
        keep_t = torch.from_numpy(keep)
        x_tr, y_tr = x_tr[keep_t], y_tr[keep_t]
    k = int(torch.unique(y_tr).numel())
    if int(y_tr.max()) + 1 != k:
        raise ValueError(f"labels must be 0..K-1; got {k} distinct labels with maximum {int(y_tr.max())}")
    return DataBundle(x_tr, y_tr, x_te, y_te, tuple(int(s) for s in shape), k, name)
