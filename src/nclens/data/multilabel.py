"""Multi-label data: composite-image datasets (multilabel-digits, ML-MNIST, ML-CIFAR10) and a
Gaussian feature generator with a planted tag-wise scale c_m.

**Composite images** (Li, Li, Wang & Qu, ICML 2024, §5: ML-MNIST / ML-CIFAR10). A sample with label
set S, |S| = m, is a canvas twice the source image's height and width holding one source image of
each tag in S, each in its own quadrant (pixelwise max where they meet), with a random shift of up to
``max_shift`` pixels. For m ≤ 2 the quadrants are top-left and bottom-right (as Li et al. compose ML-MNIST: one digit
top-left, one bottom-right); a singleton sits in one of these two corners at random; triples and
quadruples also use the other two quadrants. The counts per label set are configurable per
multiplicity, e.g. ``per_set=(100, 20)`` = 100 samples of every singleton and 20 of every pair.
Train and test composites are drawn from disjoint pools of source images.

* :func:`load_multilabel_digits`: scikit-learn's bundled 8×8 digits on a 16×16 canvas (no network).
* :func:`load_ml_mnist`, :func:`load_ml_cifar10`: this quadrant recipe at the paper's sizes (3,100 per
  singleton and 200 per pair for training = 40,000; 800 / 50 for testing = 10,250) from a *local*
  torchvision root (``download=False``; torchvision is imported lazily and is optional). The
  placement is nclens's (random corner for a singleton, ±``max_shift``), not the official notebook's;
  Li et al.'s exact ML-MNIST composition is :func:`nclens.multilabel.data.load_ml_images`.

**Gaussian features** (:func:`multilabel_gaussian`): singleton means μ_k = μ_G + simplex ETF of radius
r, set means μ_S = μ_G + c_m (1/m) Σ_{k∈S} (μ_k − μ_G) — exact MLab NC geometry with a planted c_m —
plus isotropic noise σ. With σ = 0 every MLab NC metric is 0 and ``tagwise_scale_m{m}`` = c_m.

Example:
    >>> from nclens.data.multilabel import load_multilabel_digits
    >>> split = load_multilabel_digits(per_set=(10, 2), test_per_set=(3, 1), seed=0)
    >>> tuple(split.x_train.shape), tuple(split.y_train.shape)
    ((190, 1, 16, 16), (190, 10))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from nclens.core.geometry import random_orthonormal, simplex_etf

__all__ = [
    "MultiLabelSplit",
    "MultiLabelFeatures",
    "label_sets",
    "compose_multilabel",
    "load_multilabel_digits",
    "load_ml_mnist",
    "load_ml_cifar10",
    "multilabel_gaussian",
]


@dataclass(frozen=True)
class MultiLabelSplit:
    """Inputs (N, C, H, W) and multi-hot float32 labels (N, K) of a train/test split."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def num_tags(self) -> int:
        """K, the number of tags."""
        return int(self.y_train.shape[1])

    def dataset(self, train: bool = True) -> TensorDataset:
        """One side as a ``TensorDataset`` of (input, multi-hot label)."""
        return TensorDataset(self.x_train, self.y_train) if train else TensorDataset(self.x_test, self.y_test)


@dataclass(frozen=True)
class MultiLabelFeatures:
    """Generated multi-label features (N, D), labels (N, K) 0/1, true singleton means (K, D) and set means."""

    features: Tensor
    labels: Tensor
    singleton_means: Tensor
    set_labels: Tensor
    set_means: Tensor


def _check_per_set(per_set: Sequence[int], num_tags: int, name: str = "per_set") -> tuple[int, ...]:
    counts = tuple(int(c) for c in per_set)
    if not counts or any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"{name} must list non-negative counts per multiplicity (m = 1, 2, ...), got {per_set!r}")
    if len(counts) > num_tags:
        raise ValueError(f"{name} has {len(counts)} multiplicities but there are only K={num_tags} tags")
    return counts


def label_sets(num_tags: int, per_set: Sequence[int]) -> tuple[Tensor, Tensor]:
    """All label sets with a positive count: (S, K) int64 membership rows and (S,) counts.

    ``per_set[m−1]`` is the number of samples of every label set of size m (all C(K, m) of them).
    """
    if num_tags < 2:
        raise ValueError(f"multi-label data need at least 2 tags, got K={num_tags}")
    counts = _check_per_set(per_set, num_tags)
    rows, reps = [], []
    for m, n in enumerate(counts, start=1):
        if n == 0:
            continue
        combos = torch.combinations(torch.arange(num_tags), r=m)  # (C(K,m), m)
        member = torch.zeros(combos.shape[0], num_tags, dtype=torch.long)
        member.scatter_(1, combos, 1)
        rows.append(member)
        reps.append(torch.full((combos.shape[0],), n, dtype=torch.long))
    return torch.cat(rows), torch.cat(reps)


# -------------------------------------------------------------- composites
_QUADRANTS = ((0, 0), (1, 1), (0, 1), (1, 0))  # (row, col) blocks: TL, BR, TR, BL


def compose_multilabel(
    images: Tensor,
    labels: Tensor,
    num_tags: int,
    per_set: Sequence[int],
    *,
    max_shift: int = 1,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Compose multi-label images from single-label ones (Li et al. 2024 recipe, see module doc).

    Args:
        images: (n, C, H, W) or (n, H, W) source images (any dtype; uint8 stays uint8).
        labels: (n,) integer tags in 0..K−1; every tag used by ``per_set`` needs at least one image.
        num_tags: K.
        per_set: samples per label set for multiplicities m = 1, 2, ... (m ≤ 4).
        max_shift: random shift in [−s, s] pixels per axis (s < H/2).
        seed: seed of the draw (which images, quadrants and shifts).

    Returns:
        x (N, C, 2H, 2W) in the images' dtype and y (N, K) float32 multi-hot, samples grouped by set.
    """
    if images.ndim == 3:
        images = images[:, None]  # (n, 1, H, W)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, C, H, W) or (n, H, W), got shape {tuple(images.shape)}")
    labels = torch.as_tensor(labels).long()
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    counts = _check_per_set(per_set, num_tags)
    if len(counts) > 4:
        raise ValueError(f"composites hold at most 4 images (one per quadrant), got multiplicities up to {len(counts)}")
    n_img, c, h, w = images.shape
    s = int(max_shift)
    if s < 0 or 2 * s >= min(h, w):
        raise ValueError(f"max_shift must lie in [0, {min(h, w) // 2 - 1}] for {h}×{w} images, got {max_shift}")
    present = torch.bincount(labels, minlength=num_tags)
    if labels.numel() and int(labels.max()) >= num_tags:
        raise ValueError(f"labels must lie in [0, {num_tags - 1}], got max {int(labels.max())}")
    if bool((present[:num_tags] == 0).any()):
        raise ValueError(f"tags {(present[:num_tags] == 0).nonzero().flatten().tolist()} have no source images")
    gen = torch.Generator().manual_seed(int(seed))
    members, reps = label_sets(num_tags, counts)
    y = members.repeat_interleave(reps, dim=0)  # (N, K)
    n = y.shape[0]
    mult = y.sum(1)
    # Source-image pools per tag: sorted index, offsets by tag.
    order = torch.argsort(labels, stable=True)
    start = torch.cumsum(present, 0) - present
    canvas = torch.zeros(n, 2 * h + 2 * s, 2 * w + 2 * s, c, dtype=images.dtype)  # (N, Hp, Wp, C)
    src = images.permute(0, 2, 3, 1)  # (n, H, W, C)
    # Random rank of each tag within the sample: the j-th tag of S (ascending) goes to slot perm[j].
    slots = min(4, num_tags)
    tag_lists = torch.sort(y * torch.arange(1, num_tags + 1), dim=1, descending=True).values[:, :slots] - 1  # (N, ≤4)
    quad_pool = torch.where(mult[:, None] <= 2, torch.tensor([2]), torch.tensor([4]))  # quadrants allowed
    keys = torch.rand(n, 4, generator=gen)
    keys = torch.where(torch.arange(4)[None, :] < quad_pool, keys, torch.full_like(keys, 2.0))
    quad_of_slot = torch.argsort(keys, dim=1)  # (N, 4) a random permutation of the allowed quadrants
    quads = torch.tensor(_QUADRANTS)
    rows_idx = torch.arange(n)
    for j in range(slots):  # at most 4 slots per composite
        active = tag_lists[:, j] >= 0
        if not bool(active.any()):
            continue
        idx = rows_idx[active]
        tag = tag_lists[active, j]
        pick = start[tag] + (torch.rand(idx.numel(), generator=gen) * present[tag]).long().clamp_max(present[tag] - 1)
        img = src[order[pick]]  # (n_j, H, W, C)
        q = quads[quad_of_slot[active, j]]  # (n_j, 2)
        shift = torch.randint(-s, s + 1, (idx.numel(), 2), generator=gen) if s else torch.zeros(idx.numel(), 2).long()
        oy = s + q[:, 0] * h + shift[:, 0]
        ox = s + q[:, 1] * w + shift[:, 1]
        r = oy[:, None] + torch.arange(h)  # (n_j, H)
        cc = ox[:, None] + torch.arange(w)  # (n_j, W)
        ii = idx[:, None, None]
        cur = canvas[ii, r[:, :, None], cc[:, None, :]]  # (n_j, H, W, C)
        canvas[ii, r[:, :, None], cc[:, None, :]] = torch.maximum(cur, img)
    x = canvas[:, s : s + 2 * h, s : s + 2 * w].permute(0, 3, 1, 2).contiguous()  # (N, C, 2H, 2W)
    return x, y.to(torch.float32)


def load_multilabel_digits(
    per_set: Sequence[int] = (100, 20),
    test_per_set: Sequence[int] = (30, 6),
    *,
    classes: Sequence[int] | None = None,
    max_shift: int = 1,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> MultiLabelSplit:
    """``multilabel-digits``: composites of scikit-learn's bundled 8×8 digits on a 16×16 canvas.

    Args:
        per_set: training samples per label set, by multiplicity (singletons, pairs, triples, ...).
        test_per_set: test samples per label set, by multiplicity.
        classes: digits used as tags (default 0..9), renumbered 0..K−1 in the given order.
        max_shift: random shift (pixels) of each digit in its quadrant.
        test_fraction: share of the source digits reserved for test composites (stratified).
        seed: seed of the source split and of the composition.

    Returns:
        a :class:`MultiLabelSplit` with float32 pixels in [0, 1] of shape (N, 1, 16, 16).
    """
    from sklearn.datasets import load_digits as _sk_digits

    from nclens.data.embedded import stratified_split

    bunch = _sk_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)  # (1797, 8, 8)
    digits = torch.from_numpy(bunch.target.astype(np.int64))
    tags = list(range(10)) if classes is None else [int(c) for c in classes]
    if len(set(tags)) != len(tags) or any(t < 0 or t > 9 for t in tags) or len(tags) < 2:
        raise ValueError(f"classes must be at least 2 distinct digits in 0..9, got {classes!r}")
    lookup = torch.full((10,), -1, dtype=torch.long)
    lookup[torch.tensor(tags)] = torch.arange(len(tags))
    keep = lookup[digits] >= 0
    images, y = images[keep], lookup[digits[keep]]
    tr, te = stratified_split(y.numpy(), test_fraction, seed)
    tr_t, te_t = torch.from_numpy(tr), torch.from_numpy(te)
    x_train, y_train = compose_multilabel(images[tr_t], y[tr_t], len(tags), per_set, max_shift=max_shift, seed=seed)
    x_test, y_test = compose_multilabel(
        images[te_t], y[te_t], len(tags), test_per_set, max_shift=max_shift, seed=seed + 1_000_003
    )
    return MultiLabelSplit(x_train, y_train, x_test, y_test)


def _torchvision_datasets():  # noqa: ANN202 - module object
    try:
        from torchvision import datasets
    except (ImportError, RuntimeError) as exc:  # absent, or built for another torch
        raise ImportError(
            "ML-MNIST / ML-CIFAR10 need a torchvision built for the installed torch to read the local dataset "
            f"files: pip install 'nclens[vision]' (nothing is downloaded; point root= at an existing copy); "
            f"loading it failed: {exc}"
        ) from exc
    return datasets


def _load_local(name: str, root: str | Path, train: bool) -> tuple[Tensor, Tensor]:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist (nclens never downloads datasets)")
    datasets = _torchvision_datasets()
    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}[name]
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError as exc:
        raise FileNotFoundError(f"{name} not found under {str(root)!r} (download=False): {exc}") from exc
    data = torch.as_tensor(np.asarray(ds.data))
    if data.ndim == 4:  # CIFAR: (n, H, W, C) uint8
        data = data.permute(0, 3, 1, 2)
    return data.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)


def _paper_builder(name: str, root: str | Path, per_set: Sequence[int], test_per_set: Sequence[int],
                   max_shift: int, seed: int) -> MultiLabelSplit:
    x_tr, y_tr = _load_local(name, root, True)
    x_te, y_te = _load_local(name, root, False)
    a, b = compose_multilabel(x_tr, y_tr, 10, per_set, max_shift=max_shift, seed=seed)
    c, d = compose_multilabel(x_te, y_te, 10, test_per_set, max_shift=max_shift, seed=seed + 1_000_003)
    return MultiLabelSplit(a, b, c, d)


def load_ml_mnist(root: str | Path, per_set: Sequence[int] = (3100, 200), test_per_set: Sequence[int] = (800, 50),
                  *, max_shift: int = 0, seed: int = 0) -> MultiLabelSplit:
    """ML-MNIST (Li et al. 2024): 56×56 uint8 composites of MNIST digits from a local torchvision root.

    Defaults give 10·3,100 + 45·200 = 40,000 training and 10·800 + 45·50 = 10,250 test samples.
    """
    return _paper_builder("mnist", root, per_set, test_per_set, max_shift, seed)


def load_ml_cifar10(root: str | Path, per_set: Sequence[int] = (3100, 200),
                    test_per_set: Sequence[int] = (800, 50), *, max_shift: int = 0, seed: int = 0) -> MultiLabelSplit:
    """ML-CIFAR10 (Li et al. 2024): 3×64×64 uint8 composites of CIFAR-10 images from a local root."""
    return _paper_builder("cifar10", root, per_set, test_per_set, max_shift, seed)


# ---------------------------------------------------------------- Gaussian
def multilabel_gaussian(
    num_tags: int = 4,
    dim: int = 8,
    per_set: Sequence[int] = (20, 10),
    *,
    scales: Sequence[float] | None = None,
    radius: float = 1.0,
    sigma: float = 0.1,
    offset: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> MultiLabelFeatures:
    """Features with exact MLab NC geometry and a planted tag-wise scale, plus Gaussian noise.

    μ_k = μ_G + r·(simplex ETF vertex k) in a random subspace; μ_S = μ_G + c_m (1/m) Σ_{k∈S} (μ_k − μ_G);
    h_i = μ_{S_i} + σ ε_i. ``scales[m−2]`` = c_m for m = 2, 3, ... (default c_m = 1); ``offset``
    sets ‖μ_G‖ (a random direction) so that metrics must centre correctly.

    Args:
        num_tags: K ≥ 2.
        dim: D ≥ K − 1.
        per_set: samples per label set by multiplicity (see :func:`label_sets`).
        scales: planted c_m for m ≥ 2.
        radius: ‖μ_k − μ_G‖.
        sigma: noise standard deviation per coordinate.
        offset: ‖μ_G‖.
        seed: seed of the subspace, offset and noise.
        dtype: dtype of the features (use float64 for exact-geometry tests).
    """
    counts = _check_per_set(per_set, num_tags)
    n_mult = len(counts)
    planted = [1.0] * (n_mult - 1) if scales is None else [float(c) for c in scales]
    if len(planted) < n_mult - 1:
        raise ValueError(f"scales must give c_m for m = 2..{n_mult} ({n_mult - 1} values), got {scales!r}")
    if sigma < 0 or radius <= 0:
        raise ValueError(f"need sigma >= 0 and radius > 0, got sigma={sigma}, radius={radius}")
    gen = torch.Generator().manual_seed(int(seed))
    centred = simplex_etf(num_tags, dim, radius=radius, seed=seed)  # (K, D)
    mu_g = offset * random_orthonormal(dim, 1, seed=seed + 7)[:, 0]  # (D,)
    members, reps = label_sets(num_tags, counts)  # (S, K), (S,)
    mult = members.sum(1)
    c = torch.tensor([1.0, *planted], dtype=torch.float64)[mult - 1]  # (S,) c_1 = 1
    set_means = mu_g + c[:, None] * (members.double() @ centred) / mult[:, None]  # (S, D)
    y = members.repeat_interleave(reps, dim=0)  # (N, K)
    x = set_means.repeat_interleave(reps, dim=0)
    x = x + sigma * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return MultiLabelFeatures(
        features=x.to(dtype),
        labels=y.to(torch.float32),
        singleton_means=(mu_g + centred).to(dtype),
        set_labels=members,
        set_means=set_means.to(dtype),
    )
