"""Multi-label statistics: label sets as classes of their own, encoded as int64 bitmask codes.

A multi-hot row y ∈ {0,1}^K (K ≤ 62 tags) is encoded as the integer code(y) = Σ_k y_k 2^k, so every
label set S ⊆ {0..K−1} is one integer and ``ClassStats(num_classes=None)`` keeps the sets in its
sorted, growing label index. Because the index is *sorted by code*, it is the same however the
data are batched, sharded or merged (label sets are classes of their own). The singleton
{k} has code 2^k, so singletons appear in tag order.

:class:`MultiLabelStats` keeps two streaming statistics of one layer:

* ``sets``: per-label-set counts, means and the within-*set* scatter (all samples);
* ``singles``: per-tag statistics of the single-label samples only (their own pooled scatter),
  which the singleton metrics (nc1, nc2, nc3 of Li et al. 2024) need.

Both merge exactly across batches, shards, checkpoints and processes (``merge``, ``state_dict``,
``all_reduce``), like :class:`~nclens.core.stats.ClassStats`.

Example:
    >>> import torch
    >>> from nclens.core.multilabel import encode_label_sets, decode_label_sets
    >>> y = torch.tensor([[1, 0, 0], [0, 1, 1]])
    >>> encode_label_sets(y).tolist()
    [1, 6]
    >>> decode_label_sets(torch.tensor([1, 6]), 3).tolist()
    [[1, 0, 0], [0, 1, 1]]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from nclens.core.stats import DEFAULT_MAX_SCATTER_BYTES, ClassStats, validate_features

__all__ = [
    "MAX_TAGS",
    "validate_multi_hot",
    "encode_label_sets",
    "decode_label_sets",
    "set_multiplicity",
    "MultiLabelStats",
]

#: Largest number of tags K whose label sets fit in a non-negative int64 bitmask with room to spare.
MAX_TAGS = 62


def validate_multi_hot(targets: Any, shape: tuple[int, ...] | None = None, *, allow_empty: bool = False,
                       name: str = "targets") -> Tensor:
    """Check that ``targets`` is an N×K array of 0/1 values (optionally of a given shape); return a tensor.

    Raises:
        TypeError: not a tensor/array, or complex.
        ValueError: wrong shape, a value other than 0 or 1, or (unless ``allow_empty``) an empty label set.
    """
    if not isinstance(targets, Tensor):
        try:
            targets = torch.as_tensor(targets)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise TypeError(f"{name} must be a tensor or array, got {type(targets).__name__}") from exc
    if targets.is_complex():
        raise TypeError(f"{name} must be real 0/1 values, got dtype {targets.dtype}")
    if targets.ndim != 2:
        raise ValueError(f"{name} must be 2-D multi-hot (N×K), got shape {tuple(targets.shape)}")
    if shape is not None and tuple(targets.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(targets.shape)}, expected {tuple(shape)} (same as logits)")
    if targets.dtype != torch.bool:
        bad = (targets != 0) & (targets != 1)
        if bool(bad.any()):
            vals = torch.unique(targets[bad])[:5].tolist()
            raise ValueError(f"{name} must be multi-hot 0/1, got values such as {vals}")
    if not allow_empty and targets.numel():
        empty = (targets != 0).sum(dim=1) == 0
        if bool(empty.any()):
            rows = empty.nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"{name} has {int(empty.sum())} empty label set(s) (rows {rows}): every sample needs at least "
                f"one positive label"
            )
    return targets


def _check_tags(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"the number of tags K must be a positive integer, got {k!r}")
    if k > MAX_TAGS:
        raise ValueError(
            f"label sets are encoded as int64 bitmasks, which supports at most K={MAX_TAGS} tags; got K={k}. "
            f"For more tags, map the label sets to integer ids yourself and use ClassStats(num_classes=None)"
        )
    return k


def encode_label_sets(labels: Any, *, allow_empty: bool = False) -> Tensor:
    """Encode multi-hot rows (N×K, 0/1) as int64 codes Σ_k y_k 2^k (N,).

    Args:
        labels: (N, K) 0/1 label sets, K ≤ 62.
        allow_empty: accept rows with no positive label (code 0).

    Raises:
        ValueError: K > 62, a value other than 0/1, or an empty label set (unless allowed).
    """
    y = validate_multi_hot(labels, allow_empty=allow_empty, name="labels")
    _check_tags(int(y.shape[1]))
    bits = torch.ones(y.shape[1], dtype=torch.long, device=y.device) << torch.arange(
        y.shape[1], dtype=torch.long, device=y.device
    )  # (K,) 2^k
    return ((y != 0).long() * bits).sum(dim=1)


def decode_label_sets(codes: Tensor, num_tags: int) -> Tensor:
    """Inverse of :func:`encode_label_sets`: int64 codes (S,) → multi-hot int64 rows (S, K)."""
    _check_tags(num_tags)
    codes = torch.as_tensor(codes, dtype=torch.long)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= (1 << num_tags)):
        raise ValueError(f"label-set codes must lie in [0, 2^{num_tags}), got [{int(codes.min())}, {int(codes.max())}]")
    shifts = torch.arange(num_tags, dtype=torch.long, device=codes.device)
    return (codes[:, None] >> shifts[None, :]) & 1  # (S, K)


def set_multiplicity(codes: Tensor, num_tags: int) -> Tensor:
    """|S| for each label-set code (S,)."""
    return decode_label_sets(codes, num_tags).sum(dim=1)


class MultiLabelStats:
    """Streaming statistics of multi-label features: per label set and per single-label tag.

    Args:
        num_tags: K, the number of labels (tags), K ≤ 62.
        dim: feature dimension D (inferred from the first batch when ``None``).
        scatter: ``"full"`` (all metrics) or ``"trace"`` (no nc1 / nc1_sets).
        device: where the statistics live (default: the first batch's device).
        max_scatter_bytes: see :class:`~nclens.core.stats.ClassStats`.

    Attributes:
        sets: ``ClassStats(num_classes=None)`` over label-set codes (sorted by code).
        singles: ``ClassStats(num_classes=K)`` over the single-label samples, row k = tag k.
    """

    def __init__(
        self,
        num_tags: int,
        dim: int | None = None,
        *,
        scatter: str = "full",
        device: torch.device | str | None = None,
        max_scatter_bytes: int = DEFAULT_MAX_SCATTER_BYTES,
    ) -> None:
        self.num_tags = _check_tags(num_tags)
        kw = dict(scatter=scatter, device=device, max_scatter_bytes=max_scatter_bytes)
        self.sets = ClassStats(num_classes=None, dim=dim, **kw)
        self.singles = ClassStats(num_classes=self.num_tags, dim=dim, **kw)

    @property
    def initialized(self) -> bool:
        return self.sets.initialized

    @torch.no_grad()
    def update(self, features: Tensor, labels: Any, mask: Tensor | None = None) -> MultiLabelStats:
        """Add a batch: features (B, D) and multi-hot labels (B, K) with non-empty rows.

        Returns ``self``.
        """
        features = validate_features(features)
        labels = torch.as_tensor(labels)
        if labels.ndim != 2 or labels.shape[1] != self.num_tags:
            raise ValueError(f"labels must be multi-hot of shape (N, {self.num_tags}), got {tuple(labels.shape)}; "
                             f"expected K={self.num_tags} tags")
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels have {labels.shape[0]} rows but features have {features.shape[0]}")
        y = validate_multi_hot(labels, name="labels")
        codes = encode_label_sets(y).to(features.device)
        if mask is not None:
            mask = torch.as_tensor(mask, device=features.device)
            if mask.shape != codes.shape or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a boolean tensor of shape {tuple(codes.shape)}")
            features, codes = features[mask], codes[mask]
        self.sets.update(features, codes)
        single = (codes & (codes - 1)) == 0  # exactly one bit set (codes are > 0)
        tags = torch.log2(codes[single].double()).round().long()  # (B1,) tag index of singletons
        self.singles.update(features[single], tags)
        return self

    def merge(self, other: MultiLabelStats) -> MultiLabelStats:
        """Merge another MultiLabelStats (same K) into this one; equals one pass over both."""
        if not isinstance(other, MultiLabelStats):
            raise TypeError(f"can only merge MultiLabelStats, got {type(other).__name__}")
        if other.num_tags != self.num_tags:
            raise ValueError(f"cannot merge K={other.num_tags} tags into K={self.num_tags}")
        self.sets.merge(other.sets)
        self.singles.merge(other.singles)
        return self

    def clone(self) -> MultiLabelStats:
        out = MultiLabelStats.__new__(MultiLabelStats)
        out.num_tags, out.sets, out.singles = self.num_tags, self.sets.clone(), self.singles.clone()
        return out

    def all_reduce(self, group: Any = None) -> MultiLabelStats:
        """Synchronise across torch.distributed ranks (see :meth:`ClassStats.all_reduce`)."""
        self.sets.all_reduce(group)
        self.singles.all_reduce(group)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Nested state, loadable with ``torch.load(weights_only=True)``."""
        return {"num_tags": self.num_tags, "sets": self.sets.state_dict(), "singles": self.singles.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> MultiLabelStats:
        self.num_tags = _check_tags(int(state["num_tags"]))
        self.sets.load_state_dict(state["sets"])
        self.singles.load_state_dict(state["singles"])
        return self

    @property
    def set_codes(self) -> Tensor:
        """(S,) label-set codes in ascending order (the rows of ``sets``)."""
        self.sets._require()
        return self.sets.label_values

    @property
    def set_labels(self) -> Tensor:
        """(S, K) multi-hot rows of the label sets (the rows of ``sets``)."""
        return decode_label_sets(self.set_codes, self.num_tags)

    @property
    def multiplicities(self) -> Tensor:
        """(S,) |S| of each label set."""
        return self.set_labels.sum(dim=1)

    def __repr__(self) -> str:
        if not self.initialized:
            return f"MultiLabelStats(K={self.num_tags}, empty)"
        return (f"MultiLabelStats(K={self.num_tags}, sets={self.sets.n_classes}, D={self.sets.dim}, "
                f"N={int(self.sets.total)}, singletons={int(self.singles.total)})")
