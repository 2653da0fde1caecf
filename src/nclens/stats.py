"""Streaming, one-pass, mergeable per-class statistics: the engine every NC metric is computed from.

For features h_i ∈ R^D with labels y_i, :class:`ClassStats` keeps, per class c, the count n_c and
the sum of the features (hence the mean μ_c), the within-class sum of squared deviations
Σ_{i∈c} ‖h_i − μ_c‖², and one pooled within-class scatter matrix
S_W = Σ_c Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ (D×D), all in float64 whatever the input dtype.

Numerics (DESIGN.md, "Statistics engine"): a batch is centred on its own class means, its scatter is
one GEMM of the class-centred batch, and it is merged into the running state with Chan, Golub &
LeVeque's parallel correction (1979)::

    S_W ← S_W + S_batch + Σ_c (n_c n_{c,b} / (n_c + n_{c,b})) (μ_c − μ_{c,b})(μ_c − μ_{c,b})ᵀ

The correction rows √w_c (μ_c − μ_{c,b}) are appended to the centred batch so that the batch scatter
and its correction are *one* GEMM. The naive E[hhᵀ] − μμᵀ is never formed: it cancels
catastrophically exactly when collapse is strong.

The same merge rule serves batches (:meth:`ClassStats.update`), shards and checkpoints
(:meth:`ClassStats.merge`) and processes (:meth:`ClassStats.all_reduce`, which all-reduces sums
only: counts and sums first, then every rank's scatter re-centred on the global means).

Labels are either a fixed range ``0..K−1`` (``num_classes=K``) or arbitrary integers, collected in
a growing, sorted label index (``num_classes=None``); multi-label code encodes label *sets* as
integers and reuses the same index. ``mask`` selects samples (graph node masks).

Example:
    >>> import torch
    >>> from nclens.stats import ClassStats
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(100, 5, generator=g), torch.arange(100) % 3
    >>> s = ClassStats(num_classes=3).update(x[:60], y[:60]).merge(ClassStats(num_classes=3).update(x[60:], y[60:]))
    >>> torch.allclose(s.means, torch.stack([x[y == c].double().mean(0) for c in range(3)]))
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClassStats", "validate_features", "validate_labels", "DEFAULT_MAX_SCATTER_BYTES"]

#: Refuse to allocate a D×D float64 scatter larger than this unless told to (8 GiB).
DEFAULT_MAX_SCATTER_BYTES = 8 * 2**30

_STATE_VERSION = 1


def validate_features(features: Any, name: str = "features") -> Tensor:
    """Check that ``features`` is a finite 2-D floating tensor (N×D); return it as a tensor.

    Raises:
        TypeError: not a tensor / array of floating type.
        ValueError: wrong number of dimensions, NaN or Inf values.
    """
    if not isinstance(features, Tensor):
        try:
            features = torch.as_tensor(features)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise TypeError(f"{name} must be a tensor or array, got {type(features).__name__}") from exc
    if features.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N×D), got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {features.dtype}")
    if features.numel() and not bool(torch.isfinite(features).all()):
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise ValueError(f"{name} contain NaN or Inf values (in {bad} of {features.shape[0]} rows)")
    return features


def validate_labels(labels: Any, n: int, name: str = "labels") -> Tensor:
    """Check that ``labels`` is a 1-D integer tensor of length ``n``; return it as int64.

    Float arrays holding whole numbers are accepted (e.g. labels saved as float by another tool);
    fractional values are an error.
    """
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but features have {n} rows")
    if labels.dtype == torch.bool:
        raise TypeError(f"{name} must be integers, got dtype {labels.dtype}")
    if labels.is_floating_point():
        if not bool(torch.isfinite(labels).all()) or not bool((labels == labels.round()).all()):
            bad = labels[~torch.isfinite(labels) | (labels != labels.round())][:5].tolist()
            raise ValueError(f"{name} must be integers, got non-integer values such as {bad}")
        labels = labels.long()
    elif labels.is_complex():
        raise TypeError(f"{name} must be integers, got dtype {labels.dtype}")
    return labels.long()


class ClassStats:
    """Per-class first and second moments of features, accumulated in one pass and mergeable.

    Args:
        num_classes: K for labels in ``0..K−1``; ``None`` for arbitrary integer labels, collected
            in a growing sorted index (``label_values``).
        dim: feature dimension D; inferred from the first batch when ``None``.
        scatter: ``"full"`` keeps the D×D pooled within-class scatter (all metrics);
            ``"trace"`` keeps only per-class sums of squared deviations (O(K·D) memory: nc1_trace,
            within_share, cdnv, nc2, nc3 — but not nc1).
        device: where the statistics live; by default the device of the first batch.
        max_scatter_bytes: refuse a D×D scatter larger than this with an error that says what to do
            instead (pool the layer, or ``scatter="trace"``).

    Attributes (float64, on ``device``):
        counts: (K,) n_c.
        sums: (K, D) Σ_{i∈c} h_i.
        class_sq: (K,) Σ_{i∈c} ‖h_i − μ_c‖².
        scatter_w: (D, D) S_W = Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ, or ``None`` in trace mode.
        label_values: (K,) int64, the label of each row (ascending).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        dim: int | None = None,
        *,
        scatter: str = "full",
        device: torch.device | str | None = None,
        max_scatter_bytes: int = DEFAULT_MAX_SCATTER_BYTES,
    ) -> None:
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive integer or None, got {dim!r}")
        if scatter not in ("full", "trace"):
            raise ValueError(f"scatter must be 'full' or 'trace', got {scatter!r}")
        self.num_classes = num_classes
        self.dim = dim
        self.scatter = scatter
        self.device = torch.device(device) if device is not None else None
        self.max_scatter_bytes = int(max_scatter_bytes)
        self.counts: Tensor | None = None
        self.sums: Tensor | None = None
        self.class_sq: Tensor | None = None
        self.scatter_w: Tensor | None = None
        self.label_values: Tensor | None = None
        if num_classes is not None and dim is not None:
            self._allocate(dim, self.device or torch.device("cpu"))

    # ------------------------------------------------------------------ state
    def _allocate(self, dim: int, device: torch.device) -> None:
        if self.scatter == "full":
            need = dim * dim * 8
            if need > self.max_scatter_bytes:
                raise MemoryError(
                    f"a {dim}×{dim} float64 within-class scatter needs {need / 2**30:.1f} GiB, over the "
                    f"limit of {self.max_scatter_bytes / 2**30:.1f} GiB. Pool the layer (pool='avg'), "
                    f"use scatter='trace' (every metric but nc1), or raise max_scatter_bytes."
                )
        k = self.num_classes or 0
        self.dim = dim
        self.device = device
        f64 = dict(dtype=torch.float64, device=device)
        self.counts = torch.zeros(k, **f64)
        self.sums = torch.zeros(k, dim, **f64)
        self.class_sq = torch.zeros(k, **f64)
        self.scatter_w = torch.zeros(dim, dim, **f64) if self.scatter == "full" else None
        self.label_values = torch.arange(k, dtype=torch.long, device=device)

    @property
    def initialized(self) -> bool:
        """Whether storage exists (after the first batch, or when K and D were given)."""
        return self.counts is not None

    def _require(self) -> None:
        if not self.initialized:
            raise RuntimeError("ClassStats is empty: call update() with at least one batch first")

    @property
    def n_classes(self) -> int:
        """Number of class rows K (including classes not seen yet when ``num_classes`` is fixed)."""
        self._require()
        return int(self.counts.shape[0])

    @property
    def total(self) -> float:
        """N, the number of samples seen."""
        self._require()
        return float(self.counts.sum())

    @property
    def means(self) -> Tensor:
        """(K, D) class means μ_c (rows of unseen classes are 0)."""
        self._require()
        return self.sums / self.counts.clamp_min(1.0)[:, None]

    # ----------------------------------------------------------------- update
    def _index_labels(self, labels: Tensor) -> Tensor:
        """Map labels to row indices; grow the label index when ``num_classes`` is None."""
        if self.num_classes is not None:
            if labels.numel():
                lo, hi = int(labels.min()), int(labels.max())
                if lo < 0 or hi >= self.num_classes:
                    raise ValueError(
                        f"labels must lie in [0, {self.num_classes - 1}] (num_classes={self.num_classes}), "
                        f"got values in [{lo}, {hi}]"
                    )
            return labels
        present = torch.unique(labels)
        known = self.label_values
        if known.numel():
            pos = torch.searchsorted(known, present).clamp_max(known.numel() - 1)
            new = present[known[pos] != present]
        else:
            new = present
        if new.numel():
            self._grow(new)
        return torch.searchsorted(self.label_values, labels)

    def _grow(self, new_labels: Tensor) -> None:
        """Insert rows for ``new_labels`` keeping ``label_values`` sorted ascending."""
        merged = torch.cat([self.label_values, new_labels.to(self.label_values.device)])
        values, order = torch.sort(merged)
        k_old = self.label_values.numel()
        k_new = values.numel()

        def expand(t: Tensor) -> Tensor:
            out = torch.zeros((k_new, *t.shape[1:]), dtype=t.dtype, device=t.device)
            out[:k_old] = t
            return out[order]

        self.counts = expand(self.counts)
        self.sums = expand(self.sums)
        self.class_sq = expand(self.class_sq)
        self.label_values = values

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, mask: Tensor | None = None) -> ClassStats:
        """Add a batch of features (B×D, any float dtype) with integer labels (B,).

        Args:
            features: (B, D) features of one layer.
            labels: (B,) integer labels.
            mask: optional (B,) boolean mask; only selected samples are added (e.g. graph nodes).

        Returns:
            ``self``, so calls chain.
        """
        features = validate_features(features)
        labels = validate_labels(labels, features.shape[0])
        if mask is not None:
            mask = torch.as_tensor(mask, device=features.device)
            if mask.shape != labels.shape or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a boolean tensor of shape {tuple(labels.shape)}")
            features, labels = features[mask], labels[mask.to(labels.device)]
        if not self.initialized:
            self._allocate(features.shape[1], self.device or features.device)
        if features.shape[1] != self.dim:
            raise ValueError(f"features have dimension {features.shape[1]}, expected D={self.dim}")
        if features.shape[0] == 0:
            return self
        features = features.to(self.device)
        rows = self._index_labels(labels.to(self.device))
        self._add_batch(features, rows)
        return self

    def _add_batch(self, x: Tensor, rows: Tensor) -> None:
        k, d = self.counts.shape[0], self.dim
        x64 = x.to(torch.float64)
        # Batch class counts and sums via index_add_ (no B×K one-hot).
        n_b = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(
            0, rows, torch.ones_like(rows, dtype=torch.float64)
        )
        s_b = torch.zeros(k, d, dtype=torch.float64, device=x.device).index_add_(0, rows, x64)
        present = n_b > 0
        mu_b = s_b / n_b.clamp_min(1.0)[:, None]  # (K, D) batch class means
        centred64 = x64 - mu_b[rows]  # (B, D) centred on the batch's own class means
        sq_b = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(
            0, rows, centred64.square().sum(dim=1)
        )
        # Chan's correction for classes already seen: w_c (μ_c − μ_{c,b})(…)ᵀ, w_c = n_c n_cb/(n_c+n_cb).
        n_old = self.counts
        both = present & (n_old > 0)
        w = torch.where(both, n_old * n_b / (n_old + n_b).clamp_min(1.0), torch.zeros_like(n_b))
        delta = self.means - mu_b  # (K, D)
        self.class_sq += sq_b + w * delta.square().sum(dim=1)
        if self.scatter_w is not None:
            # One GEMM: [centred batch; √w·δ rows] in the compute dtype (float32 unless input is f64).
            compute = torch.float64 if x.dtype == torch.float64 else torch.float32
            corr = (w[both].sqrt()[:, None] * delta[both]).to(compute)  # (K_b, D)
            stacked = torch.cat([centred64.to(compute), corr], dim=0)  # (B + K_b, D)
            self.scatter_w += (stacked.T @ stacked).to(torch.float64)
        self.counts += n_b
        self.sums += s_b

    # ------------------------------------------------------------------ merge
    def _check_compatible(self, other: ClassStats) -> None:
        if not isinstance(other, ClassStats):
            raise TypeError(f"can only merge ClassStats, got {type(other).__name__}")
        if other.scatter != self.scatter:
            raise ValueError(f"cannot merge scatter={other.scatter!r} into scatter={self.scatter!r}")
        if (self.num_classes is None) != (other.num_classes is None) or (
            self.num_classes is not None and self.num_classes != other.num_classes
        ):
            raise ValueError(
                f"cannot merge num_classes={other.num_classes} into num_classes={self.num_classes}"
            )
        if self.initialized and other.initialized and other.dim != self.dim:
            raise ValueError(f"cannot merge dimension {other.dim} into dimension {self.dim}")

    @torch.no_grad()
    def merge(self, other: ClassStats) -> ClassStats:
        """Merge another ClassStats into this one (in place); equals one pass over both.

        Per class c with counts n_a, n_b and means μ_a, μ_b (Chan et al. 1979)::

            S ← S_a + S_b + Σ_c (n_a n_b/(n_a+n_b)) (μ_a − μ_b)(μ_a − μ_b)ᵀ
        """
        self._check_compatible(other)
        if not other.initialized:
            return self
        if not self.initialized:
            self._allocate(other.dim, self.device or other.device)
        o_counts = other.counts.to(self.device)
        o_sums = other.sums.to(self.device)
        o_sq = other.class_sq.to(self.device)
        if self.num_classes is None:
            o_labels = other.label_values.to(self.device)
            rows = self._index_labels(o_labels) if o_labels.numel() else o_labels
        else:
            rows = torch.arange(self.n_classes, device=self.device)
        k = self.n_classes
        n_b = torch.zeros(k, dtype=torch.float64, device=self.device).index_add_(0, rows, o_counts)
        s_b = torch.zeros(k, self.dim, dtype=torch.float64, device=self.device).index_add_(0, rows, o_sums)
        sq_b = torch.zeros(k, dtype=torch.float64, device=self.device).index_add_(0, rows, o_sq)
        mu_b = s_b / n_b.clamp_min(1.0)[:, None]
        both = (n_b > 0) & (self.counts > 0)
        w = torch.where(both, self.counts * n_b / (self.counts + n_b).clamp_min(1.0), torch.zeros_like(n_b))
        delta = self.means - mu_b
        self.class_sq += sq_b + w * delta.square().sum(dim=1)
        if self.scatter_w is not None:
            corr = w[both].sqrt()[:, None] * delta[both]
            self.scatter_w += other.scatter_w.to(self.device) + corr.T @ corr
        self.counts += n_b
        self.sums += s_b
        return self

    def __add__(self, other: ClassStats) -> ClassStats:
        return self.clone().merge(other)

    def clone(self) -> ClassStats:
        """A deep copy."""
        out = ClassStats.__new__(ClassStats)
        out.__dict__.update({k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()})
        return out

    # -------------------------------------------------------------- serialise
    def state_dict(self) -> dict[str, Any]:
        """Tensors and settings, loadable with ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "num_classes": -1 if self.num_classes is None else self.num_classes,
            "dim": -1 if self.dim is None else self.dim,
            "scatter": self.scatter,
        }
        if self.initialized:
            state.update(
                counts=self.counts.cpu(),
                sums=self.sums.cpu(),
                class_sq=self.class_sq.cpu(),
                label_values=self.label_values.cpu(),
            )
            if self.scatter_w is not None:
                state["scatter_w"] = self.scatter_w.cpu()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> ClassStats:
        """Restore from :meth:`state_dict` (onto ``self.device`` if set, else CPU)."""
        if int(state.get("version", -1)) != _STATE_VERSION:
            raise ValueError(f"unsupported ClassStats state version {state.get('version')!r}")
        k = int(state["num_classes"])
        d = int(state["dim"])
        self.num_classes = None if k < 0 else k
        self.scatter = str(state["scatter"])
        self.dim = None if d < 0 else d
        if "counts" not in state:
            self.counts = self.sums = self.class_sq = self.scatter_w = self.label_values = None
            return self
        device = self.device or torch.device("cpu")
        self.device = device
        self.counts = state["counts"].to(device, torch.float64)
        self.sums = state["sums"].to(device, torch.float64)
        self.class_sq = state["class_sq"].to(device, torch.float64)
        self.label_values = state["label_values"].to(device, torch.long)
        self.scatter_w = state["scatter_w"].to(device, torch.float64) if "scatter_w" in state else None
        if self.scatter == "full" and self.scatter_w is None:
            raise ValueError("state has scatter='full' but no 'scatter_w'")
        shapes = (self.sums.shape, self.class_sq.shape, self.label_values.shape)
        if shapes != ((self.counts.shape[0], d), self.counts.shape, self.counts.shape):
            raise ValueError(f"inconsistent ClassStats state shapes: counts {tuple(self.counts.shape)}, "
                             f"sums {tuple(self.sums.shape)}, dim {d}")
        return self

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: torch.device | str | None = None) -> ClassStats:
        """Build a ClassStats from :meth:`state_dict`."""
        return cls(device=device).load_state_dict(state)

    # ------------------------------------------------------------ distributed
    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> ClassStats:
        """Synchronise across torch.distributed ranks with all_reduce of sums (not all_gather of states).

        Step 1: counts, sums and label indices (unions gathered first when labels are arbitrary).
        Step 2: every rank re-centres its scatter and squared deviations on the *global* means
        (its Chan correction n_c,r (μ_c,r − μ_c)(μ_c,r − μ_c)ᵀ, exact because Σ_r n_c,r(μ_c,r − μ_c) = 0)
        and the results are summed in a second all_reduce. After the call every rank holds the
        statistics of the union of all ranks' data.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        self._require()
        if self.num_classes is None:
            # Union of label values across ranks (small: K integers per rank).
            world = dist.get_world_size(group)
            sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(world)]
            dist.all_gather(sizes, torch.tensor([self.label_values.numel()], device=self.device), group=group)
            width = int(max(int(s) for s in sizes))
            padded = torch.full((width,), torch.iinfo(torch.long).max, dtype=torch.long, device=self.device)
            padded[: self.label_values.numel()] = self.label_values
            gathered = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(gathered, padded, group=group)
            union = torch.unique(torch.cat(gathered))
            union = union[union != torch.iinfo(torch.long).max]
            self._index_labels(union)
        local_counts, local_means = self.counts.clone(), self.means
        first = torch.cat([self.counts[:, None], self.sums], dim=1)
        dist.all_reduce(first, group=group)
        self.counts, self.sums = first[:, 0].contiguous(), first[:, 1:].contiguous()
        delta = local_means - self.means  # (K, D) this rank's means vs the global ones
        w = torch.where(local_counts > 0, local_counts, torch.zeros_like(local_counts))
        sq = self.class_sq + w * delta.square().sum(dim=1)
        parts = [sq]
        if self.scatter_w is not None:
            corr = w.sqrt()[:, None] * delta
            parts.append((self.scatter_w + corr.T @ corr).reshape(-1))
        second = torch.cat(parts)
        dist.all_reduce(second, group=group)
        k = self.n_classes
        self.class_sq = second[:k].contiguous()
        if self.scatter_w is not None:
            self.scatter_w = second[k:].reshape(self.dim, self.dim).contiguous()
        return self

    # ------------------------------------------------------------- summaries
    def present(self) -> ClassStats:
        """A view restricted to classes with at least one sample (for fixed-K stats with gaps)."""
        self._require()
        keep = self.counts > 0
        if bool(keep.all()):
            return self
        out = self.clone()
        out.counts, out.sums = self.counts[keep], self.sums[keep]
        out.class_sq, out.label_values = self.class_sq[keep], self.label_values[keep]
        out.num_classes = None
        return out

    def memory_bytes(self) -> int:
        """Bytes held by the statistics."""
        if not self.initialized:
            return 0
        tensors = [self.counts, self.sums, self.class_sq, self.label_values, self.scatter_w]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def __repr__(self) -> str:
        if not self.initialized:
            return f"ClassStats(num_classes={self.num_classes}, empty)"
        return (
            f"ClassStats(K={self.n_classes}, D={self.dim}, N={int(self.total)}, scatter={self.scatter!r}, "
            f"device={self.device}, {self.memory_bytes() / 2**20:.1f} MiB)"
        )

