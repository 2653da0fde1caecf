"""Multi-label data of the experiments: Li et al.'s ML-MNIST composition on real images, and the embedded digits.

**The ML-MNIST recipe** (Li, Li, Wang & Qu, ICML 2024; official code ``Exp_MNIST.ipynb`` of
github.com/Heimine/NC_MLab, functions ``pad_image``, ``random_shift``, ``create_m1_samples``,
``create_m2_samples``), applied here to any 28×28 single-label image set (Fashion-MNIST, MNIST):

* pixels are divided by the split's maximum (``data / torch.max(data)``);
* an image is padded by P = 28 pixels on two sides — ``left=True`` pads left and top (the image ends up
  in the bottom-right quadrant of a 56×56 canvas), ``left=False`` right and bottom (top-left) — and then
  rolled (``torch.roll``, with wrap-around) down and right by independent uniform shifts in [0, P/4);
* a singleton of tag c is one image of class c placed with ``left=True`` (always bottom-right);
* a pair {i, j} (i < j) is one image of class i and one of class j, the first placed with ``left`` drawn
  at random (probability ½), the second on the other side, combined by the pixelwise maximum;
* the images of one label set are distinct (a random permutation of the class, cut to the set's
  count), drawn independently for every set (an image may appear in several sets);
* targets: singletons 1, pairs 0.5/0.5 in the paper's files — here multi-hot 0/1 rows, the 0.5/0.5
  convention being the loss ``pal_normalized`` (CE against Y/|Y|, what ``nn.CrossEntropyLoss`` computes
  on the paper's rows); ``pal`` is the 0/1 pick-all-label loss;
* the paper's counts: 3,100 per singleton and 200 per pair for training (40,000), 800 / 50 for testing
  (10,250), training composites from the train split and test composites from the test split.

The paper draws with NumPy's global RNG; here every draw comes from one seeded ``torch.Generator``
(the same composites for the same seed). ``pool`` > 1 average-pools the finished 56×56 canvas (CPU
scaling; the paper has ``pool`` = 1).

Example:
    >>> import torch
    >>> images = torch.zeros(4, 1, 28, 28); images[:, :, 10:18, 10:18] = 1.0
    >>> x, y = compose_li(images, torch.tensor([0, 1, 0, 1]), 2, (2, 1), seed=0)
    >>> tuple(x.shape), y.tolist()
    ((5, 1, 56, 56), [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    >>> bool(x[:2, :, :28, :28].sum() == 0)   # a singleton sits in the bottom-right quadrant (before wrap)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nclens.data.multilabel import MultiLabelSplit, label_sets, load_multilabel_digits

__all__ = ["place_and_roll", "compose_li", "load_ml_images", "load_data", "IMAGE_DATASETS"]

#: experiment dataset name -> nclens.data.load_images name
IMAGE_DATASETS = {"ml-fashion-mnist": "fashion-mnist", "ml-mnist": "mnist"}


def place_and_roll(images: Tensor, left: Tensor, shifts: Tensor) -> Tensor:
    """``pad_then_shift`` of the official notebook for a batch: pad by the image size, then roll.

    Args:
        images: (n, C, h, w) float images.
        left: (n,) bool — True pads left and top (image in the bottom-right quadrant), False right and bottom.
        shifts: (n, 2) int (down, right) roll of each canvas (wrapping around).

    Returns:
        (n, C, 2h, 2w) canvases.
    """
    n, c, h, w = images.shape
    canvas = images.new_zeros(n, c, 2 * h, 2 * w)
    br, tl = left.nonzero().flatten(), (~left).nonzero().flatten()
    canvas[br, :, h:, w:] = images[br]
    canvas[tl, :, :h, :w] = images[tl]
    rows = (torch.arange(2 * h)[None, :] - shifts[:, :1]) % (2 * h)  # (n, 2h): rolled[r] = canvas[r − down]
    cols = (torch.arange(2 * w)[None, :] - shifts[:, 1:]) % (2 * w)  # (n, 2w)
    idx = torch.arange(n)[:, None, None, None]
    ch = torch.arange(c)[None, :, None, None]
    return canvas[idx, ch, rows[:, None, :, None], cols[:, None, None, :]]


def compose_li(images: Tensor, labels: Tensor, num_tags: int, per_set: Sequence[int], *,
               seed: int = 0) -> tuple[Tensor, Tensor]:
    """Compose singletons and pairs as Li et al. compose ML-MNIST (module docstring).

    Args:
        images: (n, C, h, w) or (n, h, w) source images (float, already scaled).
        labels: (n,) class ids 0..K−1 (the tags).
        num_tags: K.
        per_set: (samples per singleton[, samples per pair]).
        seed: seed of every draw (images, sides, shifts).

    Returns:
        x (N, C, 2h, 2w) float32 and y (N, K) float32 multi-hot, grouped by label set (singletons by tag,
        then pairs in lexicographic order).

    Raises:
        ValueError: more than two multiplicities, or a tag with fewer source images than a set needs.
    """
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise ValueError(f"images must be (n, C, H, W) or (n, H, W), got shape {tuple(images.shape)}")
    labels = torch.as_tensor(labels).long()
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    counts = tuple(int(c) for c in per_set)
    if len(counts) > 2:
        raise ValueError(f"the ML-MNIST recipe composes singletons and pairs only, got multiplicities up to "
                         f"{len(counts)}")
    present = torch.bincount(labels, minlength=num_tags)[:num_tags]
    need = max(counts)
    short = (present < need).nonzero().flatten().tolist()
    if short:
        raise ValueError(f"tags {short} have fewer than {need} source images (a label set's images are distinct); "
                         f"lower data.per_set or raise data.source_per_class")
    gen = torch.Generator().manual_seed(int(seed))
    images = images.to(torch.float32)
    _, _, h, w = images.shape
    max_shift = h // 4  # np.random.randint(pad_size / 4) with pad_size = h
    pools = [(labels == t).nonzero().flatten() for t in range(num_tags)]

    def draw(tag: int, n: int) -> Tensor:
        pool = pools[tag]
        return pool[torch.randperm(pool.numel(), generator=gen)[:n]]

    def shifts(n: int) -> Tensor:
        return torch.randint(0, max_shift, (n, 2), generator=gen) if max_shift > 0 else torch.zeros(n, 2).long()

    members, reps = label_sets(num_tags, counts)  # (S, K), (S,) singletons then pairs, lexicographic
    xs, ys = [], []
    for row, n in zip(members.tolist(), reps.tolist()):
        tags = [t for t, v in enumerate(row) if v]
        if len(tags) == 1:
            idx = draw(tags[0], n)
            xs.append(place_and_roll(images[idx], torch.ones(n, dtype=torch.bool), shifts(n)))
        else:
            first, second = draw(tags[0], n), draw(tags[1], n)
            first_left = torch.rand(n, generator=gen) < 0.5
            a = place_and_roll(images[first], first_left, shifts(n))
            b = place_and_roll(images[second], ~first_left, shifts(n))
            xs.append(torch.maximum(a, b))
        ys.append(torch.tensor(row, dtype=torch.float32).expand(n, -1))
    return torch.cat(xs), torch.cat(ys)


def load_ml_images(
    dataset: str,
    per_set: Sequence[int] = (3100, 200),
    test_per_set: Sequence[int] = (800, 50),
    *,
    classes: Sequence[int] = (),
    pool: int = 1,
    source_per_class: int = 0,
    root: str | None = None,
    seed: int = 0,
) -> MultiLabelSplit:
    """ML-Fashion-MNIST / ML-MNIST: Li et al.'s composition of the real train and test splits.

    The source images come from :func:`nclens.data.load_images` (local files, never downloaded); the
    paper's counts are the defaults (40,000 training and 10,250 test composites).

    Args:
        dataset: ``ml-fashion-mnist`` or ``ml-mnist``.
        per_set, test_per_set: (per singleton, per pair) of the training / test composites.
        classes: source classes used as tags (renumbered 0..K−1 in this order; default all 10).
        pool: average-pool the 56×56 canvas by this factor (1 = the paper).
        source_per_class: compose from a seeded class-balanced subset of this many images per class
            (0 = every image of the split).
        root: where the dataset files are (default: ``$NCLENS_DATA``, then the Debian location).
        seed: seed of the subsets and of the composition (train and test use different streams).

    Raises:
        DatasetNotFoundError: the files are not on this machine (the message says how to get them).
    """
    from nclens.data import load_images

    if dataset not in IMAGE_DATASETS:
        raise ValueError(f"dataset must be one of {list(IMAGE_DATASETS)}, got {dataset!r}")
    tags = list(classes) if classes else list(range(10))
    out = []
    for split, counts, offset in (("train", per_set, 0), ("test", test_per_set, 1_000_003)):
        data = load_images(IMAGE_DATASETS[dataset], split, root=root, per_class=source_per_class or None,
                           seed=seed + offset)
        pixels = data.images.to(torch.float32)
        pixels = pixels / pixels.max()  # the notebook's data / torch.max(data)
        lookup = torch.full((int(data.labels.max()) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(tags)] = torch.arange(len(tags))
        y = lookup[data.labels]
        keep = y >= 0
        x, yy = compose_li(pixels[keep], y[keep], len(tags), counts, seed=seed + offset)
        if pool > 1:
            x = F.avg_pool2d(x, pool)
        out += [x.contiguous(), yy]
    return MultiLabelSplit(*out)


def load_data(cfg, seed: int) -> MultiLabelSplit:  # noqa: ANN001 - MLDataConfig
    """The split of an experiment's ``data`` section for one seed."""
    if cfg.dataset == "multilabel-digits":
        return load_multilabel_digits(cfg.per_set, cfg.test_per_set, classes=cfg.classes or None,
                                      max_shift=cfg.max_shift, test_fraction=cfg.test_fraction, seed=seed)
    return load_ml_images(cfg.dataset, cfg.per_set, cfg.test_per_set, classes=cfg.classes, pool=cfg.pool,
                          source_per_class=cfg.source_per_class, root=cfg.root, seed=seed)
