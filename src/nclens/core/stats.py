"""Streaming, one-pass, mergeable per-class statistics: the engine every NC metric is computed from.

For features h_i ∈ R^D with labels y_i, :class:`ClassStats` gives, per class c, the count n_c, the
sum of the features (hence the mean μ_c), the within-class sum of squared deviations
Σ_{i∈c} ‖h_i − μ_c‖², and one pooled within-class scatter matrix
S_W = Σ_c Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ (D×D), all held in float64 whatever the input dtype.

Numerics (ARCHITECTURE.md, "The engine's numerics"). Every class c carries a fixed *shift* s_c, its first
batch's mean, and the state accumulates moments of the shifted features x − s_c::

    t_c = Σ_{i∈c} (h_i − s_c),   q_c = Σ_{i∈c} ‖h_i − s_c‖²,   S = Σ_i (h_i − s_{y_i})(h_i − s_{y_i})ᵀ

so that a batch costs one gather-subtract and *one* GEMM of the class-centred batch in its native
dtype (float32 for float32/bf16/fp16 input; the shift is rounded to float32, so the subtraction is
exact by Sterbenz' lemma when collapse is strong), with the products added into float64. The
canonical moments follow exactly (Chan, Golub & LeVeque 1979; the "shifted data" algorithm)::

    μ_c = s_c + t_c/n_c,   Σ_{i∈c}‖h_i − μ_c‖² = q_c − ‖t_c‖²/n_c,   S_W = S − Σ_c t_c t_cᵀ / n_c

Because s_c lies within a few within-class standard deviations of μ_c, t_c is small and the
subtraction loses nothing; the naive E[hhᵀ] − μμᵀ (shift 0), which cancels catastrophically exactly
when collapse is strong, is never formed.

One merge rule serves batches, shards, checkpoints and processes: re-express one state on the other's
shifts (Chan's correction, d = s′ − s: t′ = t − n d, q′ = q − 2 d·t + n‖d‖²,
S′ = S − Tᵀ D − Dᵀ T + Dᵀ diag(n) D) and add. :meth:`ClassStats.all_reduce` all-reduces sums only:
counts and sums first (global means), then every rank re-expresses its moments on the shared shifts
(the rounded global means) and the moments are summed in a second all_reduce.

Labels are either a fixed range ``0..K−1`` (``num_classes=K``) or arbitrary integers, collected in
a growing, sorted label index (``num_classes=None``); multi-label code encodes label *sets* as
integers and reuses the same index. ``mask`` selects samples (graph node masks).

Example:
    >>> import torch
    >>> from nclens.core.stats import ClassStats
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(100, 5, generator=g), torch.arange(100) % 3
    >>> a = ClassStats(num_classes=3).update(x[:60], y[:60])
    >>> s = a.merge(ClassStats(num_classes=3).update(x[60:], y[60:]))
    >>> torch.allclose(s.means, torch.stack([x[y == c].double().mean(0) for c in range(3)]))
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClassStats", "validate_features", "validate_labels", "DEFAULT_MAX_SCATTER_BYTES"]

#: Refuse to allocate a D×D float64 scatter larger than this unless told to (8 GiB).
DEFAULT_MAX_SCATTER_BYTES = 8 * 2**30

#: State the memory up front (a ResourceWarning) when one ClassStats allocates more than this (1 GiB).
NOTE_BYTES = 2**30

_STATE_VERSION = 2


def validate_features(features: Any, name: str = "features", *, check_finite: bool = True) -> Tensor:
    """Check that ``features`` is a finite 2-D floating tensor (N×D); return it as a tensor.

    ``check_finite=False`` skips the NaN/Inf scan (a full pass over the data) for callers that detect
    non-finite values more cheaply themselves (:meth:`ClassStats.update` checks its per-class sums).

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
    if check_finite and features.numel() and not bool(torch.isfinite(features).all()):
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


def _round32(values: Tensor) -> Tensor:
    """float64 values rounded to the nearest float32 (kept as float64): exact float32 shifts."""
    return values.to(torch.float32).to(torch.float64)


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
        exact_sums: form h − s_y in float64, so class sums, means and squared deviations are exact
            sums of the input values (default). ``False`` forms and sums them in float32 within each
            batch for float32/bf16/fp16 input (means then accurate to float32 precision *relative to
            the within-class spread*; the scatter's precision is that of the float32 GEMM either way)
            and saves a pass over a float64 copy of the batch.

    Canonical views (float64, on ``device``; derived from the shifted moments, cached):
        counts: (K,) n_c.
        sums: (K, D) Σ_{i∈c} h_i.
        means: (K, D) μ_c (rows of unseen classes are 0).
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
        exact_sums: bool = True,
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
        self.exact_sums = bool(exact_sums)
        self.counts: Tensor | None = None
        self.label_values: Tensor | None = None
        self._shift: Tensor | None = None  # (K, D) s_c
        self._tsum: Tensor | None = None  # (K, D) Σ (h − s_c)
        self._tsq: Tensor | None = None  # (K,) Σ ‖h − s_c‖²
        self._tscatter: Tensor | None = None  # (D, D) Σ (h − s_y)(h − s_y)ᵀ
        self._exact64 = False  # shifts may be any float64 (float64 input seen): compute in float64
        self._cache: dict[str, Tensor] = {}
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
        need_total = (dim * dim if self.scatter == "full" else 0) * 8 + 3 * k * dim * 8
        if need_total > NOTE_BYTES:
            warnings.warn(
                f"ClassStats: allocating {need_total / 2**30:.2f} GiB of float64 statistics on {device} "
                f"(D={dim}, K={k or 'growing'}, scatter={self.scatter!r}); pool the layer or use "
                f"scatter='trace' for less",
                ResourceWarning,
                stacklevel=4,
            )
        self.dim = dim
        self.device = device
        f64 = dict(dtype=torch.float64, device=device)
        self.counts = torch.zeros(k, **f64)
        self.label_values = torch.arange(k, dtype=torch.long, device=device)
        self._shift = torch.zeros(k, dim, **f64)
        self._tsum = torch.zeros(k, dim, **f64)
        self._tsq = torch.zeros(k, **f64)
        self._tscatter = torch.zeros(dim, dim, **f64) if self.scatter == "full" else None
        self._cache = {}

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

    def _cached(self, key: str, make) -> Tensor:
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = make()
        return value

    @property
    def means(self) -> Tensor:
        """(K, D) class means μ_c = s_c + t_c/n_c (rows of unseen classes are 0)."""
        self._require()
        return self._cached(
            "means",
            lambda: torch.where(
                self.counts[:, None] > 0, self._shift + self._tsum / self.counts.clamp_min(1.0)[:, None], 0.0
            ),
        )

    @property
    def sums(self) -> Tensor:
        """(K, D) Σ_{i∈c} h_i."""
        return self.means * self.counts[:, None]

    @property
    def class_sq(self) -> Tensor:
        """(K,) Σ_{i∈c} ‖h_i − μ_c‖² = q_c − ‖t_c‖²/n_c."""
        self._require()
        return self._cached(
            "class_sq",
            lambda: (self._tsq - self._tsum.square().sum(1) / self.counts.clamp_min(1.0)).clamp_min(0.0),
        )

    @property
    def scatter_w(self) -> Tensor | None:
        """(D, D) pooled within-class scatter S_W = S − Σ_c t_c t_cᵀ/n_c (``None`` in trace mode)."""
        self._require()
        if self._tscatter is None:
            return None

        def make() -> Tensor:
            scaled = self._tsum / self.counts.clamp_min(1.0).sqrt()[:, None]  # (K, D) t_c/√n_c
            return self._tscatter - scaled.T @ scaled

        return self._cached("scatter_w", make)

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
        self._shift = expand(self._shift)
        self._tsum = expand(self._tsum)
        self._tsq = expand(self._tsq)
        self.label_values = values
        self._cache = {}

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, mask: Tensor | None = None) -> ClassStats:
        """Add a batch of features (B×D, any float dtype) with integer labels (B,).

        Args:
            features: (B, D) features of one layer.
            labels: (B,) integer labels.
            mask: optional (B,) boolean mask; only selected samples are added (e.g. graph nodes).

        Returns:
            ``self``, so calls chain.

        Raises:
            ValueError: NaN/Inf features (nothing is added), bad shapes or labels.
        """
        features = validate_features(features, check_finite=False)
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
        labels = labels.to(self.device)
        if self.num_classes is not None:
            self._index_labels(labels)  # range check before anything changes
            self._add_batch(features, labels)
        else:
            # validate finiteness before the label index grows, so a bad batch leaves no trace
            if not bool(torch.isfinite(features.sum(dim=0)).all()):
                validate_features(features)
            self._add_batch(features, self._index_labels(labels))
        return self

    def _batch_moments(
        self, x: Tensor, inverse: Tensor, shift: Tensor, compute: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(t_b (K_b, D), q_b (K_b,), S_b (D, D) or None) of one batch around ``shift`` in ``compute`` dtype.

        ``exact_sums``: h − s_y is formed in float64, so t_b and q_b (hence the means) are exact sums of
        the input values. Otherwise, for float32 compute, h − s_y is formed and summed in float32 within
        the batch (then accumulated in float64): one pass fewer over a float64 copy of the batch.
        """
        kb = shift.shape[0]
        wide_dtype = torch.float64 if (self.exact_sums or compute == torch.float64) else compute
        centred = self._workspace(f"centred_{wide_dtype}", x.shape, wide_dtype, x.device)
        torch.index_select(shift.to(wide_dtype), 0, inverse, out=centred)  # (B, D) s_y
        torch.sub(x, centred, out=centred)  # h − s_y in one pass, in a reused buffer
        t_b = torch.zeros(kb, self.dim, dtype=wide_dtype, device=x.device).index_add_(0, inverse, centred)
        q_b = torch.zeros(kb, dtype=wide_dtype, device=x.device).index_add_(
            0, inverse, torch.linalg.vector_norm(centred, dim=1).square()
        )
        t_b, q_b = t_b.to(torch.float64), q_b.to(torch.float64)
        s_b = None
        if self._tscatter is not None:  # the one GEMM, on the class-centred batch in the compute dtype
            narrow = centred if centred.dtype == compute else self._workspace(
                f"centred_{compute}", x.shape, compute, x.device
            ).copy_(centred)
            s_b = narrow.T @ narrow
        return t_b, q_b, s_b

    def _add_batch(self, x: Tensor, rows: Tensor) -> None:
        if x.dtype == torch.float64 and not self._exact64:
            self._exact64 = True  # float32-rounded shifts stay valid; new ones keep full precision
        compute = torch.float64 if self._exact64 else torch.float32
        present, inverse = self._present_rows(rows)
        n_b = torch.bincount(inverse, minlength=present.numel()).to(torch.float64)
        shift = self._shift.index_select(0, present)  # (K_b, D)
        fresh = self.counts.index_select(0, present) == 0
        any_fresh = bool(fresh.any())
        if any_fresh:  # first sight of a class: its shift is this batch's class mean
            first = torch.zeros_like(shift).index_add_(0, inverse, x.to(torch.float64)) / n_b[:, None]
            shift = torch.where(fresh[:, None], first if self._exact64 else _round32(first), shift)
        t_b, q_b, s_b = self._batch_moments(x, inverse, shift, compute)
        # NaN/Inf in x reach t_b and q_b; a finite Σ‖h − s‖² bounds every entry of S_b (Cauchy–Schwarz)
        if not bool(torch.isfinite(t_b.sum() + q_b.sum())):
            validate_features(x)  # raises with the number of bad rows if x holds NaN/Inf
            # finite input that overflowed in the compute dtype: redo this batch in float64
            t_b, q_b, s_b = self._batch_moments(x, inverse, shift, torch.float64)
        if any_fresh:
            self._shift.index_copy_(0, present, shift)
        self.counts.index_add_(0, present, n_b)
        self._tsum.index_add_(0, present, t_b)
        self._tsq.index_add_(0, present, q_b)
        if s_b is not None:
            self._tscatter.add_(s_b)  # float32 products accumulated in float64
        self._cache = {}

    def _workspace(self, name: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A reusable scratch buffer (avoids a fresh allocation and its page faults on every batch)."""
        key = f"_ws_{name}"
        buf = self.__dict__.get(key)
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < shape.numel():
            buf = torch.empty(shape.numel(), dtype=dtype, device=device)
            self.__dict__[key] = buf
        return buf[: shape.numel()].view(shape)

    def _present_rows(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(rows present in the batch (K_b,), each sample's index into them (B,)) without sorting samples."""
        per_row = torch.bincount(rows, minlength=self.n_classes)  # (K,)
        seen = per_row > 0
        present = seen.nonzero().flatten()
        position = torch.cumsum(seen, 0) - 1  # (K,) row -> index among the present rows
        return present, position.index_select(0, rows)

    # ------------------------------------------------------------------ merge
    def _rebase(self, new_shift: Tensor) -> None:
        """Re-express the moments on new shifts s′ (Chan's correction; exact algebra).

        With d = s′ − s: t′ = t − n d, q′ = q − 2 d·t + n‖d‖², S′ = S − Tᵀ D − Dᵀ T + Dᵀ diag(n) D.
        """
        d = new_shift - self._shift  # (K, D)
        n = self.counts
        if self._tscatter is not None:
            cross = self._tsum.T @ d  # (D, D) Tᵀ D
            self._tscatter += (n.sqrt()[:, None] * d).T @ (n.sqrt()[:, None] * d) - cross - cross.T
        self._tsq += n * d.square().sum(1) - 2.0 * (d * self._tsum).sum(1)
        self._tsum -= n[:, None] * d
        self._shift = new_shift.clone()
        self._cache = {}

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

        ``other`` is re-expressed on this state's shifts (classes new to this state adopt ``other``'s
        shifts), then the shifted moments add. Per class this is Chan et al.'s (1979) update
        S = S_a + S_b + (n_a n_b/(n_a+n_b)) (μ_a − μ_b)(μ_a − μ_b)ᵀ.
        """
        self._check_compatible(other)
        if not other.initialized:
            return self
        if not self.initialized:
            self._allocate(other.dim, self.device or other.device)
        theirs = other.clone()
        theirs._to(self.device)
        if self.num_classes is None and theirs.label_values.numel():
            rows = self._index_labels(theirs.label_values)
        else:
            rows = torch.arange(self.n_classes, device=self.device)
        self._exact64 = self._exact64 or theirs._exact64
        mine = self.counts.index_select(0, rows) > 0
        target = torch.where(mine[:, None], self._shift.index_select(0, rows), theirs._shift)
        theirs._rebase(target)
        self._shift[rows] = target
        self.counts[rows] += theirs.counts
        self._tsum[rows] += theirs._tsum
        self._tsq[rows] += theirs._tsq
        if self._tscatter is not None:
            self._tscatter += theirs._tscatter
        self._cache = {}
        return self

    def __add__(self, other: ClassStats) -> ClassStats:
        return self.clone().merge(other)

    def clone(self) -> ClassStats:
        """A deep copy."""
        out = ClassStats.__new__(ClassStats)
        kept = {k: v for k, v in self.__dict__.items() if not k.startswith("_ws_")}  # no scratch buffers
        out.__dict__.update({k: (v.clone() if isinstance(v, Tensor) else v) for k, v in kept.items()})
        out._cache = {}
        return out

    def _to(self, device: torch.device) -> None:
        for name in ("counts", "label_values", "_shift", "_tsum", "_tsq", "_tscatter"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        self.device = device
        self._cache = {}

    @classmethod
    def from_moments(
        cls,
        counts: Tensor,
        sums: Tensor,
        class_sq: Tensor,
        scatter_w: Tensor | None = None,
        label_values: Tensor | None = None,
    ) -> ClassStats:
        """Build statistics from canonical moments (n_c, Σh, Σ‖h − μ_c‖², S_W), e.g. computed elsewhere.

        The shifts are the means, so the shifted moments are t = 0, q = class_sq, S = S_W.
        """
        counts = torch.as_tensor(counts, dtype=torch.float64)
        sums = torch.as_tensor(sums, dtype=torch.float64, device=counts.device)
        k, d = sums.shape
        out = cls(None if label_values is not None else k, scatter="full" if scatter_w is not None else "trace")
        out._allocate(d, counts.device)
        if label_values is not None:
            out.label_values = torch.as_tensor(label_values, dtype=torch.long, device=counts.device)
        out.counts = counts.clone()
        out._shift = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], 0.0)
        out._tsq = torch.as_tensor(class_sq, dtype=torch.float64, device=counts.device).clone()
        if scatter_w is not None:
            out._tscatter = torch.as_tensor(scatter_w, dtype=torch.float64, device=counts.device).clone()
        out._exact64 = True
        return out

    # -------------------------------------------------------------- serialise
    def state_dict(self) -> dict[str, Any]:
        """Tensors and settings, loadable with ``torch.load(weights_only=True)``; resuming is exact."""
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "num_classes": -1 if self.num_classes is None else self.num_classes,
            "dim": -1 if self.dim is None else self.dim,
            "scatter": self.scatter,
            "exact64": self._exact64,
            "exact_sums": self.exact_sums,
        }
        if self.initialized:
            state.update(
                counts=self.counts.cpu(),
                label_values=self.label_values.cpu(),
                shift=self._shift.cpu(),
                shifted_sum=self._tsum.cpu(),
                shifted_sq=self._tsq.cpu(),
            )
            if self._tscatter is not None:
                state["shifted_scatter"] = self._tscatter.cpu()
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
        self._exact64 = bool(state.get("exact64", False))
        self.exact_sums = bool(state.get("exact_sums", True))
        self._cache = {}
        if "counts" not in state:
            self.counts = self.label_values = self._shift = self._tsum = self._tsq = self._tscatter = None
            return self
        device = self.device or torch.device("cpu")
        self.device = device
        self.counts = state["counts"].to(device, torch.float64)
        self.label_values = state["label_values"].to(device, torch.long)
        self._shift = state["shift"].to(device, torch.float64)
        self._tsum = state["shifted_sum"].to(device, torch.float64)
        self._tsq = state["shifted_sq"].to(device, torch.float64)
        self._tscatter = state["shifted_scatter"].to(device, torch.float64) if "shifted_scatter" in state else None
        if self.scatter == "full" and self._tscatter is None:
            raise ValueError("state has scatter='full' but no 'shifted_scatter'")
        kk = self.counts.shape[0]
        if (self._shift.shape, self._tsum.shape, self._tsq.shape, self.label_values.shape) != (
            (kk, d), (kk, d), (kk,), (kk,)
        ):
            raise ValueError(f"inconsistent ClassStats state shapes for K={kk}, D={d}")
        return self

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: torch.device | str | None = None) -> ClassStats:
        """Build a ClassStats from :meth:`state_dict`."""
        return cls(device=device).load_state_dict(state)

    # ------------------------------------------------------------ distributed
    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> ClassStats:
        """Synchronise across torch.distributed ranks with all_reduce of sums (not all_gather of states).

        Step 1: label indices (the union, gathered when labels are arbitrary), then counts and sums:
        the global means. Step 2: every rank re-expresses its shifted moments on the shared shifts (the
        global means, rounded to float32 unless float64 features were seen anywhere) — its Chan
        correction — and the moments are summed in a second all_reduce. Afterwards every rank holds
        the statistics of the union of all ranks' data.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        self._require()
        if self.num_classes is None:
            world = dist.get_world_size(group)
            sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(world)]
            dist.all_gather(sizes, torch.tensor([self.label_values.numel()], device=self.device), group=group)
            width = int(max(int(s) for s in sizes))
            sentinel = torch.iinfo(torch.long).max
            padded = torch.full((width,), sentinel, dtype=torch.long, device=self.device)
            padded[: self.label_values.numel()] = self.label_values
            gathered = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(gathered, padded, group=group)
            union = torch.unique(torch.cat(gathered))
            self._index_labels(union[union != sentinel])
        flag = torch.tensor([1.0 if self._exact64 else 0.0], dtype=torch.float64, device=self.device)
        first = torch.cat([flag, self.counts, self.sums.reshape(-1)])
        dist.all_reduce(first, group=group)
        exact64 = bool(first[0] > 0)
        k = self.n_classes
        counts, sums = first[1 : k + 1], first[k + 1 :].reshape(k, self.dim)
        means = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1.0)[:, None], 0.0)
        self._rebase(means if exact64 else _round32(means))
        parts = [self._tsum.reshape(-1), self._tsq]
        if self._tscatter is not None:
            parts.append(self._tscatter.reshape(-1))
        second = torch.cat(parts)
        dist.all_reduce(second, group=group)
        kd = k * self.dim
        self.counts = counts.contiguous()
        self._tsum = second[:kd].reshape(k, self.dim).contiguous()
        self._tsq = second[kd : kd + k].contiguous()
        if self._tscatter is not None:
            self._tscatter = second[kd + k :].reshape(self.dim, self.dim).contiguous()
        self._exact64 = exact64
        self._cache = {}
        return self

    # ------------------------------------------------------------- summaries
    def present(self) -> ClassStats:
        """Statistics restricted to classes with at least one sample (for fixed-K stats with gaps)."""
        self._require()
        keep = self.counts > 0
        if bool(keep.all()):
            return self
        out = self.clone()
        out.counts, out.label_values = self.counts[keep], self.label_values[keep]
        out._shift, out._tsum, out._tsq = self._shift[keep], self._tsum[keep], self._tsq[keep]
        out.num_classes = None
        return out

    def memory_bytes(self) -> int:
        """Bytes held by the statistics."""
        if not self.initialized:
            return 0
        tensors = [self.counts, self.label_values, self._shift, self._tsum, self._tsq, self._tscatter]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def __repr__(self) -> str:
        if not self.initialized:
            return f"ClassStats(num_classes={self.num_classes}, empty)"
        return (
            f"ClassStats(K={self.n_classes}, D={self.dim}, N={int(self.total)}, scatter={self.scatter!r}, "
            f"device={self.device}, {self.memory_bytes() / 2**20:.1f} MiB)"
        )
