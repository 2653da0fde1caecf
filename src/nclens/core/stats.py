"""Streaming, one-pass, mergeable per-class statistics: the engine every NC metric is computed from.

For features h_i ∈ R^D with labels y_i, :class:`ClassStats` gives, per class c, the count n_c, the
sum of the features (hence the mean μ_c), the within-class sum of squared deviations
Σ_{i∈c} ‖h_i − μ_c‖², and one pooled within-class scatter matrix
S_W = Σ_c Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ (D×D), all held in float64 whatever the input dtype.

Numerics (ARCHITECTURE.md, "The engine's numerics"). Every class c carries a fixed *shift* s_c, its first
batch's mean (rounded to float32 for float32/bf16/fp16 input), and the state accumulates moments of
the shifted features h − s_c::

    t_c = Σ_{i∈c} (h_i − s_c),   q_c = Σ_{i∈c} ‖h_i − s_c‖²,   S = Σ_i (h_i − s_{y_i})(h_i − s_{y_i})ᵀ

from which the canonical moments follow exactly (Chan, Golub & LeVeque 1979, the "shifted data"
algorithm)::

    μ_c = s_c + t_c/n_c,   Σ_{i∈c}‖h_i − μ_c‖² = q_c − ‖t_c‖²/n_c,   S_W = S − Σ_c t_c t_cᵀ / n_c

Because s_c lies within a few within-class standard deviations of μ_c, t_c is small and the
subtraction loses nothing; the naive E[hhᵀ] − μμᵀ (shift 0), which cancels catastrophically exactly
when collapse is strong, is never formed.

A batch costs one gather-subtract h − s_y, per-class sums through ``index_add_`` (no one-hot) and one
symmetric rank-k update of the class-centred batch (BLAS ``ssyrk`` through SciPy on CPU, on the
batch's own memory; ``cᵀc`` elsewhere), added into the float64 accumulator; only its lower triangle
is written per batch and the upper one is filled once, when the scatter is read. Two modes:

* default (``exact_sums=False``): h − s_y is formed in float32 on the float32 shift (exact by
  Sterbenz' lemma when collapse is strong), and the batch's class sums t_b, q_b are float32 sums,
  accumulated across batches in float64. Means, class variances and S_W are then exact to float32
  precision *relative to the within-class spread* (the float32 products of the scatter have that
  precision in either mode);
* fully exact (``exact_sums=True``): h − s_y is formed and summed in float64, so class sums and means
  are exact sums of the input values; the scatter still uses the float32 rank-k update.

Float64 input switches both to float64 throughout. A batch whose float32 products could overflow or
underflow (Σ‖h − s‖² outside [2⁻¹⁰⁰, 2¹²⁰]: e.g. features near 1e19) is redone in float64, so a
finite input never yields an infinite scatter.

One merge rule serves batches, shards, checkpoints and processes: re-express one state on the other's
shifts (Chan's correction, d = s′ − s: t′ = t − n d, q′ = q − 2 d·t + n‖d‖²,
S′ = S − Tᵀ D − Dᵀ T + Dᵀ diag(n) D) and add. :meth:`ClassStats.all_reduce` all-reduces sums only:
counts and sums first (global means), then every rank re-expresses its moments on the shared shifts
(the rounded global means) and the moments are summed in a second all_reduce.

Scatter modes: ``"full"`` (the D×D S_W), ``"trace"`` (only per-class q: every metric but nc1) and
``"projected"``: exact NC1 for any D without a D×D matrix, in two passes over the data — pass 1 the
trace statistics, :meth:`ClassStats.begin_projection` fixes an orthonormal basis V (D×r, r ≤ K−1) of
span(μ_c − μ_G), pass 2 accumulates P = Vᵀ S_W V (r×r, float64), :meth:`ClassStats.end_projection`
checks that pass 2 saw the same samples. nc1 = Σ_j v_jᵀ Σ_W v_j / s_j² needs Σ_W only on that span.

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

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ClassStats",
    "MemoryEstimate",
    "estimate_memory",
    "choose_scatter",
    "gram",
    "validate_features",
    "validate_labels",
    "DEFAULT_MAX_SCATTER_BYTES",
    "SCATTER_MODES",
    "PROJECTION_PHASES",
]

#: Refuse statistics whose peak memory (state + the largest update/metric temporaries) is larger (8 GiB).
DEFAULT_MAX_SCATTER_BYTES = 8 * 2**30

#: State the memory up front (a ResourceWarning) when one ClassStats may take more than this at peak (1 GiB).
NOTE_BYTES = 2**30

SCATTER_MODES = ("full", "trace", "projected")
PROJECTION_PHASES = ("means", "projected", "done")

_STATE_VERSION = 3
_READABLE_VERSIONS = (2, 3)

#: Float32 rank-k updates are used only when a batch's Σ‖h − s‖² lies in [_F32_SAFE_MIN, _F32_SAFE_MAX]:
#: every partial sum of the scatter is bounded by that total (Cauchy–Schwarz), so nothing overflows
#: float32 (max 2¹²⁸), and subnormal products (< 2⁻¹²⁶, absolute error ≤ 2⁻¹⁴⁹ each) stay far below
#: float32 precision of the total. Outside, the batch is computed in float64.
_F32_SAFE_MAX = 2.0**120
_F32_SAFE_MIN = 2.0**-100
#: Batches with fewer rows than this go straight into the float64 accumulator with a float64 rank-k
#: update (cheaper than a float32 update plus the D×D add, and no D×D float32 workspace).
_DIRECT64_ROWS = 32
#: Elements of the float64 row buffer through which a float32 rank-k result is added (4 MiB).
_ADD_BLOCK_ELEMENTS = 2**19
#: Smallest column block of the multi-threaded block-triangular Gram (below 4 of them: one full GEMM).
_TRIL_MIN_BLOCK = 64


def validate_features(features: Any, name: str = "features", *, check_finite: bool = True) -> Tensor:
    """Check that ``features`` is a finite 2-D floating tensor (N×D, D ≥ 1); return it as a tensor.

    ``check_finite=False`` skips the NaN/Inf scan (a full pass over the data) for callers that detect
    non-finite values more cheaply themselves (:meth:`ClassStats.update` checks its per-class sums).

    Raises:
        TypeError: not a tensor / array of floating type.
        ValueError: wrong number of dimensions, D = 0 columns, NaN or Inf values.
    """
    if not isinstance(features, Tensor):
        try:
            features = torch.as_tensor(features)
        except Exception as exc:  # noqa: BLE001 - re-raised with context
            raise TypeError(f"{name} must be a tensor or array, got {type(features).__name__}") from exc
    if features.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N×D), got shape {tuple(features.shape)}")
    if features.shape[1] == 0:
        raise ValueError(f"{name} have D=0 columns (shape {tuple(features.shape)}): there is nothing to measure")
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


# ----------------------------------------------------------------------------- memory estimate
class MemoryEstimate(NamedTuple):
    """Bytes one :class:`ClassStats` holds and needs at peak (see :func:`estimate_memory`)."""

    state: int  #: the statistics themselves
    update: int  #: temporaries of one ``update`` (a batch of ``batch_size`` rows)
    metrics: int  #: temporaries of the metrics (the largest one, e.g. effective_rank's D×D covariance)
    peak: int  #: state + max(update, metrics)

    def describe(self) -> str:
        gib = 2.0**30
        which = "update" if self.update >= self.metrics else "metric"
        return (f"{self.peak / gib:.2f} GiB at peak (statistics {self.state / gib:.2f} GiB + "
                f"{max(self.update, self.metrics) / gib:.2f} GiB of {which} temporaries)")


def estimate_memory(
    dim: int,
    num_classes: int | None = None,
    scatter: str = "full",
    *,
    batch_size: int = 1024,
    exact_sums: bool = False,
    device: torch.device | str = "cpu",
) -> MemoryEstimate:
    """The memory of one layer's statistics: the state and the true peak of an update / metrics call.

    Counted (float64 = 8 bytes, float32 = 4; K = ``num_classes``, 0 when unknown; B = ``batch_size``):

    * state: K×D shifts and shifted sums (2·8KD), plus for ``"full"`` the D×D scatter (8D²) and the
      float32 D×D workspace of the rank-k update, kept between batches (4D², for B ≥ 32 rows), for
      ``"projected"`` the basis (12·D·r, r = min(K−1, D)), the float32 pass-2 shifts (4KD) and the
      r×r scatter;
    * update: the centred batch (4BD, plus 8BD in the exact mode), the batch's class sums
      (12·min(K, B)·D) and a 4 MiB float64 row buffer;
    * metrics: the K×D means and centred means (16KD), for ``"full"`` one D×D float64 matrix at a
      time (Σ_W, the total covariance of effective_rank, the D×D Gram of the means for K > 4096;
      8D², twice on devices whose eigen-solver copies its input, i.e. not CPU), for ``"projected"``
      the SVD of the K×D means (≈ 16KD + 8K²).

    Example:
        >>> e = estimate_memory(20_000, 10, "full")
        >>> round(e.state / 2**30, 1), round(e.peak / 2**30, 1)
        (4.5, 7.5)
    """
    k = int(num_classes or 0)
    d, b = int(dim), int(batch_size)
    kb = min(max(k, 1), b)
    r = max(min(k - 1, d), 0)
    state = 24 * k + 16 * k * d
    update = 4 * b * d + (8 * b * d if exact_sums else 0) + 12 * kb * d + 8 * b + 8 * _ADD_BLOCK_ELEMENTS
    metrics = 16 * k * d
    if scatter == "full":
        state += 8 * d * d + (4 * d * d if b >= _DIRECT64_ROWS else 0)  # + the float32 rank-k workspace, kept
        update += 8 * b * d if b < _DIRECT64_ROWS else 0  # small batches: a float64 copy instead
        metrics += 8 * d * d * (1 if torch.device(device).type == "cpu" else 2)
    elif scatter == "projected":
        state += 12 * d * r + 4 * k * d + 16 * k * r + 8 * r * r
        update += 8 * b * r * 2
        metrics += 8 * k * k + 8 * k * d
    return MemoryEstimate(state, update, metrics, state + max(update, metrics))


def choose_scatter(dim: int, num_classes: int | None, max_scatter_bytes: int = DEFAULT_MAX_SCATTER_BYTES) -> str:
    """``"full"`` when the full-scatter statistics fit ``max_scatter_bytes`` at peak, else ``"projected"``.

    The projected mode gives the same nc1 exactly (two passes over the data) in O(K·D + K²) memory;
    only effective_rank and Σ_W itself need the full D×D scatter.

    Example:
        >>> choose_scatter(512, 10), choose_scatter(100_000, 10)
        ('full', 'projected')
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if estimate_memory(dim, num_classes, "full").peak <= max_scatter_bytes:
        return "full"
    return "projected"


# --------------------------------------------------------------------------- the rank-k update
_BLAS: dict[str, Any] | None = None


def _scipy_blas() -> dict[str, Any]:
    """SciPy's ?syrk and threadpoolctl controllers of the BLAS libraries it may use ({} without SciPy)."""
    global _BLAS
    if _BLAS is None:
        try:
            from scipy.linalg import blas

            found: dict[str, Any] = {torch.float32: blas.ssyrk, torch.float64: blas.dsyrk}
        except ImportError:  # pragma: no cover - SciPy is a dependency
            found = {}
        libs: list[Any] = []
        if found:
            try:
                from threadpoolctl import ThreadpoolController

                libs = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
            except Exception:  # noqa: BLE001 - no thread control: SciPy's BLAS keeps its own setting
                libs = []
        found["libs"] = libs
        _BLAS = found
    return _BLAS


@contextmanager
def _blas_threads(libs: list[Any]) -> Iterator[None]:
    """Run SciPy's BLAS with torch's intra-op thread count (restored afterwards)."""
    want = torch.get_num_threads()
    changed = []
    for lib in libs:
        have = lib.num_threads
        if have != want:
            lib.set_num_threads(want)
            changed.append((lib, have))
    try:
        yield
    finally:
        for lib, have in changed:
            lib.set_num_threads(have)


def _syrk_(acc: Tensor, x: Tensor, alpha: float = 1.0, beta: float = 1.0) -> bool:
    """acc ← β·acc + α·xᵀx on acc's lower triangle, in place (SciPy ``?syrk``, torch's thread count).

    ``acc`` (n×n) and ``x`` (m×n) are C-contiguous CPU tensors of one dtype (float32/float64); a
    C-contiguous m×n array is a Fortran n×m one and acc's Fortran upper triangle is its C lower one, so
    nothing is copied. Returns False (nothing done) where SciPy's BLAS is not available for them.
    """
    if torch.get_num_threads() > 1:
        # SciPy's OpenBLAS and torch's OpenMP pool are two thread pools that spin-wait after each call: with
        # more than one thread each, interleaving them makes a batch 2-3x slower than torch's own GEMM
        # (measured: syrk on 2 BLAS threads + torch ops 10.9 ms vs x.T @ x on 2 threads + the same ops 3.7 ms
        # for B=1024, D=512). Half the flops only pay on one thread, where there is no second pool to wake.
        return False
    blas = _scipy_blas() if acc.device.type == "cpu" else {}
    if x.dtype not in blas or acc.dtype != x.dtype or not (x.is_contiguous() and acc.is_contiguous()):
        return False
    if x.requires_grad or acc.requires_grad:
        return False
    target = acc.numpy().T  # (n, n) Fortran view
    with _blas_threads(blas["libs"]):
        out = blas[x.dtype](alpha, x.numpy().T, beta=beta, c=target, trans=0, lower=0, overwrite_c=1)
    if not np.shares_memory(out, target):  # pragma: no cover - f2py copied: write back
        acc.copy_(torch.from_numpy(np.ascontiguousarray(out.T)))
    return True


def gram(x: Tensor) -> Tensor:
    """xᵀx (n×n, float64) of an m×n matrix: BLAS ``dsyrk`` on CPU (half a GEMM's flops, exactly
    symmetric), ``x.T @ x`` elsewhere.

    Example:
        >>> x = torch.randn(50, 4, dtype=torch.float64)
        >>> torch.allclose(gram(x), x.T @ x)
        True
    """
    x = x.to(torch.float64).contiguous()
    out = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    if _syrk_(out, x, beta=0.0):
        return _mirror_lower_(out)
    return x.T @ x


def _mirror_lower_(s: Tensor, block: int = 256) -> Tensor:
    """Copy the strict lower triangle of a square matrix onto its upper one, in place, block by block."""
    d = s.shape[0]
    for i0 in range(0, d, block):
        i1 = min(d, i0 + block)
        diag = s[i0:i1, i0:i1]
        diag.copy_(diag.tril() + diag.tril(-1).T)  # (b, b) temporary only
        if i1 < d:
            s[i0:i1, i1:].copy_(s[i1:, i0:i1].T)
    return s


# ------------------------------------------------------------------------------- ClassStats
class ClassStats:
    """Per-class first and second moments of features, accumulated in one pass and mergeable.

    Args:
        num_classes: K for labels in ``0..K−1``; ``None`` for arbitrary integer labels, collected
            in a growing sorted index (``label_values``).
        dim: feature dimension D; inferred from the first batch when ``None``.
        scatter: ``"full"`` keeps the D×D pooled within-class scatter (all metrics); ``"trace"``
            keeps only per-class sums of squared deviations (O(K·D) memory: nc1_trace, within_share,
            cdnv, nc2, nc3 — not nc1); ``"projected"``: exact nc1 without a D×D matrix, in two passes
            (see below); :func:`choose_scatter` picks ``"full"`` or ``"projected"`` from a memory limit.
        device: where the statistics live; by default the device of the first batch.
        max_scatter_bytes: refuse statistics whose peak memory (:func:`estimate_memory`: the state
            plus the largest update or metric temporaries) exceeds this, with an error naming what to
            do instead (``pool="avg"``, ``scatter="projected"``, ``scatter="trace"``, a larger limit).
            More than 1 GiB at peak is stated up front with a ResourceWarning.
        exact_sums: the *fully exact* mode: form h − s_y in float64, so class sums, means and squared
            deviations are exact sums of the input values. The default (``False``) forms and sums
            them in float32 within each batch for float32/bf16/fp16 input, accumulated across batches
            in float64: means, class variances and S_W are exact to float32 precision relative to the
            within-class spread (the scatter's float32 products have that precision in both modes),
            and the batch is never copied to float64. Float64 input is computed in float64 either way.

    Two-pass projected mode (``scatter="projected"``)::

        stats = ClassStats(K, scatter="projected")
        for x, y in loader: stats.update(x, y)   # phase "means": counts, means, class_sq (as "trace")
        stats.all_reduce()                       # optional, under torch.distributed
        stats.begin_projection()                 # fixes V (D×r): orthonormal basis of span(μ_c − μ_G)
        for x, y in loader: stats.update(x, y)   # phase "projected": P = Σ_i (Vᵀ(h_i − μ_{y_i}))(…)ᵀ
        stats.all_reduce()                       # sums P
        stats.end_projection()                   # pass-2 counts must equal pass-1 counts

    ``projection_phase`` is ``"means" | "projected" | "done"``; ``projection_basis`` (D×r) and
    ``projected_scatter`` (r×r) = Vᵀ S_W V. Memory O(K·D + K²), never D×D. Pass 2 accumulates
    shifted moments around the pass-1 means (float32 projection of the float32-centred batch, or
    float64 in the exact mode / for float64 input), so P is the within-class scatter of the
    pass-2 samples about their own class means, projected on V.

    Canonical views (float64, on ``device``; derived from the shifted moments):
        counts: (K,) n_c.
        sums: (K, D) Σ_{i∈c} h_i.
        means: (K, D) μ_c (rows of unseen classes are 0).
        class_sq: (K,) Σ_{i∈c} ‖h_i − μ_c‖².
        scatter_w: (D, D) S_W = Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ (a new matrix on every access),
            or ``None`` without the full scatter.
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
        exact_sums: bool = False,
    ) -> None:
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes!r}")
        if dim is not None and (not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive integer or None, got {dim!r}")
        if scatter not in SCATTER_MODES:
            raise ValueError(f"scatter must be one of {SCATTER_MODES}, got {scatter!r}")
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
        self._lower_only = False  # _tscatter's upper triangle is stale (filled when read)
        self._exact64 = False  # shifts may be any float64 (float64 input seen): compute in float64
        self._all_seen = False  # every row has a sample (no first-sight shifts to set)
        self._noted = False  # the ResourceWarning was issued
        # projected mode, pass 2
        self._phase = "means"
        self._basis: Tensor | None = None  # (D, r) V
        self._pcounts: Tensor | None = None  # (K,) pass-2 counts
        self._psum: Tensor | None = None  # (K, r) Σ Vᵀ(h − μ_c)
        self._pscatter: Tensor | None = None  # (r, r) Σ Vᵀ(h − μ_y)(h − μ_y)ᵀV
        self._synced_group: Any = None  # all_reduce'd in phase "means" (the basis is broadcast)
        self._cache: dict[str, Tensor] = {}
        if num_classes is not None and dim is not None:
            self._allocate(dim, self.device or torch.device("cpu"))

    # ------------------------------------------------------------------ state
    def memory_estimate(
        self, batch_size: int = 1024, dim: int | None = None, num_classes: int | None = None
    ) -> MemoryEstimate:
        """:func:`estimate_memory` for these settings (D and K as allocated unless given)."""
        d = dim if dim is not None else self.dim
        if d is None:
            raise RuntimeError("the dimension is not known yet: pass dim or update() first")
        k = num_classes if num_classes is not None else (self.n_classes if self.initialized else self.num_classes)
        device = self.device or torch.device("cpu")
        return estimate_memory(d, k, self.scatter, batch_size=batch_size, exact_sums=self.exact_sums, device=device)

    def _check_memory(self, dim: int, k: int | None, device: torch.device, stacklevel: int = 4) -> None:
        est = estimate_memory(dim, k, self.scatter, exact_sums=self.exact_sums, device=device)
        if est.peak > self.max_scatter_bytes:
            alternatives = {
                "full": "pool the layer (pool='avg'), use scatter='projected' (exact nc1 in two passes, no D×D), "
                "scatter='trace' (every metric but nc1), or raise max_scatter_bytes",
                "projected": "pool the layer (pool='avg'), use scatter='trace', or raise max_scatter_bytes",
                "trace": "pool the layer (pool='avg') or raise max_scatter_bytes",
            }[self.scatter]
            raise MemoryError(
                f"ClassStats(scatter={self.scatter!r}) at D={dim}, K={k or 'growing'} needs {est.describe()}, over "
                f"the limit max_scatter_bytes={self.max_scatter_bytes / 2**30:.2f} GiB. Instead: {alternatives}."
            )
        if est.peak > NOTE_BYTES and not self._noted:
            self._noted = True
            warnings.warn(
                f"ClassStats: allocating {est.state / 2**30:.2f} GiB of float64 statistics on {device} (D={dim}, "
                f"K={k or 'growing'}, scatter={self.scatter!r}), {est.describe()}; pool the layer or use "
                f"scatter='projected'/'trace' for less",
                ResourceWarning,
                stacklevel=stacklevel,
            )

    def _allocate(self, dim: int, device: torch.device) -> None:
        k = self.num_classes or 0
        self._check_memory(dim, self.num_classes, device, stacklevel=5)
        self.dim = dim
        self.device = device
        f64 = dict(dtype=torch.float64, device=device)
        self.counts = torch.zeros(k, **f64)
        self.label_values = torch.arange(k, dtype=torch.long, device=device)
        self._shift = torch.zeros(k, dim, **f64)
        self._tsum = torch.zeros(k, dim, **f64)
        self._tsq = torch.zeros(k, **f64)
        self._tscatter = torch.zeros(dim, dim, **f64) if self.scatter == "full" else None
        self._lower_only = False
        self._all_seen = False
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

    def _full_scatter(self) -> Tensor | None:
        """The shifted D×D scatter S with both triangles valid (the lazy fill happens here, in place)."""
        if self._tscatter is not None and self._lower_only:
            _mirror_lower_(self._tscatter)
            self._lower_only = False
        return self._tscatter

    def _scaled_tsum(self) -> Tensor:
        """(K, D) t_c/√n_c: S_W = S − T̃ᵀT̃."""
        return self._tsum / self.counts.clamp_min(1.0).sqrt()[:, None]

    @property
    def scatter_w(self) -> Tensor | None:
        """(D, D) pooled within-class scatter S_W = S − Σ_c t_c t_cᵀ/n_c (``None`` without the full scatter).

        A new D×D matrix on every access (nothing D×D is cached): keep the result when it is reused.
        """
        self._require()
        s = self._full_scatter()
        if s is None:
            return None
        scaled = self._scaled_tsum()
        out = s.clone()
        if _syrk_(out, scaled, alpha=-1.0):  # exactly symmetric, no second D×D
            return _mirror_lower_(out)
        return out.addmm_(scaled.T, scaled, alpha=-1.0)

    def within_quadratic(self, directions: Tensor) -> Tensor:
        """(m,) v_jᵀ S_W v_j for the columns of ``directions`` (D×m), without forming S_W.

        Full scatter: (S v)·v − ‖T̃ v‖² with T̃ = [t_c/√n_c]; projected: the columns must lie in
        span(V) and c_jᵀ P c_j with c = Vᵀv is returned (an error names the largest component
        outside the span).
        """
        self._require()
        v = directions.to(self.device, torch.float64)
        if self.scatter == "full":
            s = self._full_scatter()
            tv = self._scaled_tsum() @ v  # (K, m)
            return ((s @ v) * v).sum(0) - tv.square().sum(0)
        if self.scatter == "projected" and self._phase == "done":
            coords = self._basis.T @ v  # (r, m)
            outside = (v.square().sum(0) - coords.square().sum(0)).clamp_min(0).sqrt()
            if outside.numel() and float(outside.max()) > 1e-6 * max(float(v.norm(dim=0).max()), 1e-300):
                raise ValueError(
                    f"directions leave the projection basis span(μ_c − μ_G) (component {float(outside.max()):.2e} "
                    f"outside it); the projected scatter only knows S_W on that span"
                )
            return ((self.projected_scatter @ coords) * coords).sum(0)
        raise ValueError(
            f"S_W is not available with scatter={self.scatter!r}"
            + (f" in projection phase {self._phase!r} (finish the second pass)" if self.scatter == "projected" else "")
        )

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
            if self.scatter == "projected" and self._phase != "means":
                raise ValueError(
                    f"labels {new[:10].tolist()} were not seen in pass 1; the second pass of scatter='projected' "
                    f"must see the same samples as the first"
                )
            self._grow(new)
        return torch.searchsorted(self.label_values, labels.contiguous())

    def _grow(self, new_labels: Tensor) -> None:
        """Insert rows for ``new_labels`` keeping ``label_values`` sorted ascending."""
        k_new = self.label_values.numel() + new_labels.numel()
        self._check_memory(self.dim, k_new, self.device, stacklevel=6)  # before anything changes
        merged = torch.cat([self.label_values, new_labels.to(self.label_values.device)])
        values, order = torch.sort(merged)
        k_old = self.label_values.numel()

        def expand(t: Tensor) -> Tensor:
            out = torch.zeros((k_new, *t.shape[1:]), dtype=t.dtype, device=t.device)
            out[:k_old] = t
            return out[order]

        self.counts = expand(self.counts)
        self._shift = expand(self._shift)
        self._tsum = expand(self._tsum)
        self._tsq = expand(self._tsq)
        self.label_values = values
        self._all_seen = False
        self._cache = {}

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, mask: Tensor | None = None) -> ClassStats:
        """Add a batch of features (B×D, any float dtype) with integer labels (B,).

        With ``scatter="projected"`` the batch goes to the current phase: pass 1 (``"means"``) or
        pass 2 (``"projected"``, after :meth:`begin_projection`).

        Args:
            features: (B, D) features of one layer.
            labels: (B,) integer labels.
            mask: optional (B,) boolean mask; only selected samples are added (e.g. graph nodes).

        Returns:
            ``self``, so calls chain.

        Raises:
            ValueError: NaN/Inf features (nothing is added), D = 0, bad shapes or labels, a batch
                after :meth:`end_projection`, pass-2 labels that pass 1 did not see.
        """
        features = validate_features(features, check_finite=False)
        labels = validate_labels(labels, features.shape[0])
        if mask is not None:
            mask = torch.as_tensor(mask, device=features.device)
            if mask.shape != labels.shape or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a boolean tensor of shape {tuple(labels.shape)}")
            features, labels = features[mask], labels[mask.to(labels.device)]
        if self._phase == "done":
            raise ValueError("the projection is finished (end_projection() was called): no more updates")
        if not self.initialized:
            self._allocate(features.shape[1], self.device or features.device)
        if features.shape[1] != self.dim:
            raise ValueError(f"features have dimension {features.shape[1]}, expected D={self.dim}")
        if features.shape[0] == 0:
            return self
        features = features.to(self.device)
        labels = labels.to(self.device)
        if self._phase == "projected":
            self._add_projected(features, self._index_labels(labels))
        elif self.num_classes is not None:
            self._index_labels(labels)  # range check before anything changes
            self._add_batch(features, labels)
        else:
            # validate finiteness before the label index grows, so a bad batch leaves no trace
            if not bool(torch.isfinite(features.sum(dim=0)).all()):
                validate_features(features)
            self._add_batch(features, self._index_labels(labels))
        return self

    def _workspace(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """A reusable scratch buffer (avoids a fresh allocation and its page faults on every batch)."""
        key = f"_ws_{name}"
        numel = math.prod(shape)
        buf = self.__dict__.get(key)
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < numel:
            self.__dict__.pop(key, None)
            buf = torch.empty(numel, dtype=dtype, device=device)
            self.__dict__[key] = buf
        return buf[:numel].view(shape)

    def _batch_rows(self, rows: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """(present rows (K_b,) or None for all K, each sample's index into them (B,), n_b (K_b,) float64).

        O(B) work beyond a K-long bincount: with K ≤ B every row is kept (their sums cost O(K·D) ≤
        O(B·D)); otherwise only the rows present in the batch.
        """
        k, b = self.n_classes, rows.shape[0]
        if k <= b:
            return None, rows, torch.bincount(rows, minlength=k).to(torch.float64)
        if k <= 64 * b:
            per_row = torch.bincount(rows, minlength=k)  # (K,)
            seen = per_row > 0
            present = seen.nonzero().flatten()
            position = torch.cumsum(seen, 0) - 1  # (K,) row -> index among the present rows
            return present, position.index_select(0, rows), per_row.index_select(0, present).to(torch.float64)
        present, inverse, n_b = torch.unique(rows, sorted=True, return_inverse=True, return_counts=True)
        return present, inverse, n_b.to(torch.float64)

    def _batch_moments(
        self, x: Tensor, inverse: Tensor, shift: Tensor, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(t_b (K_b, D), q_b (K_b,), centred batch h − s_y (B, D)) formed and summed in ``dtype``."""
        kb = shift.shape[0]
        centred = self._workspace(f"centred_{dtype}", tuple(x.shape), dtype, x.device)
        torch.index_select(shift.to(dtype), 0, inverse, out=centred)  # (B, D) s_y
        torch.sub(x, centred, out=centred)  # h − s_y in one pass, in a reused buffer
        t_b = torch.zeros(kb, self.dim, dtype=dtype, device=x.device).index_add_(0, inverse, centred)
        q_b = torch.zeros(kb, dtype=dtype, device=x.device).index_add_(
            0, inverse, torch.linalg.vector_norm(centred, dim=1).square()
        )
        return t_b.to(torch.float64), q_b.to(torch.float64), centred

    def _add_batch(self, x: Tensor, rows: Tensor) -> None:
        if x.dtype == torch.float64 and not self._exact64:
            self._exact64 = True  # float32-rounded shifts stay valid; new ones keep full precision
        wide = self._exact64 or self.exact_sums
        dtype = torch.float64 if wide else torch.float32  # of the centring and the batch's class sums
        present, inverse, n_b = self._batch_rows(rows)
        shift = self._shift if present is None else self._shift.index_select(0, present)  # (K_b, D)
        fresh = None
        if not self._all_seen:
            counts_b = self.counts if present is None else self.counts.index_select(0, present)
            fresh = (counts_b == 0) & (n_b > 0)
            if bool(fresh.any()):  # first sight of a class: its shift is this batch's class mean
                shift = torch.where(fresh[:, None], self._first_means(x, inverse, n_b, dtype), shift)
            else:
                fresh = None
        t_b, q_b, centred = self._batch_moments(x, inverse, shift, dtype)
        q_total = float(q_b.sum())
        if not math.isfinite(q_total):
            validate_features(x)  # raises with the number of bad rows if x holds NaN/Inf
        if dtype == torch.float32 and (
            not math.isfinite(q_total)  # finite input whose float32 sums overflowed
            or 0.0 < q_total < _F32_SAFE_MIN  # or whose float32 squares are subnormal
            or (q_total == 0.0 and bool(centred.abs().max() > 0))  # ... or underflowed to 0
        ):
            t_b, q_b, centred = self._batch_moments(x, inverse, shift, torch.float64)  # redo in float64
            q_total = float(q_b.sum())
        if not math.isfinite(q_total):
            raise ValueError(
                f"features too large for float64 second moments: Σ‖h − s‖² of this batch overflows "
                f"(max |h| = {float(x.abs().max()):.3g}); rescale the features"
            )
        if self._tscatter is not None and q_total > 0.0:
            # float32 products only where they can neither overflow nor underflow (see _F32_SAFE_MAX)
            self._gram_add(centred, float64=self._exact64 or not (_F32_SAFE_MIN <= q_total <= _F32_SAFE_MAX))
        if fresh is not None:
            if present is None:
                self._shift = shift.contiguous()
            else:
                self._shift.index_copy_(0, present, shift)
        if present is None:
            self.counts.add_(n_b)
            self._tsum.add_(t_b)
            self._tsq.add_(q_b)
        else:
            self.counts.index_add_(0, present, n_b)
            self._tsum.index_add_(0, present, t_b)
            self._tsq.index_add_(0, present, q_b)
        if fresh is not None and bool((self.counts > 0).all()):
            self._all_seen = True
        self._cache = {}

    def _first_means(self, x: Tensor, inverse: Tensor, n_b: Tensor, dtype: torch.dtype) -> Tensor:
        """(K_b, D) float64 per-class means of this batch (float32-rounded unless float64 was seen)."""
        kb = n_b.shape[0]
        first = torch.zeros(kb, self.dim, dtype=dtype, device=x.device).index_add_(0, inverse, x.to(dtype))
        first = first.div_(n_b.clamp_min(1.0).to(dtype)[:, None])
        if dtype != torch.float64 and not bool(torch.isfinite(first).all()):  # float32 sums overflowed
            return self._first_means(x, inverse, n_b, torch.float64)
        first = first.to(torch.float64)
        return first if self._exact64 else _round32(first)

    def _gram_add(self, centred: Tensor, float64: bool) -> None:
        """S += cᵀc for the centred batch c (B×D): a symmetric rank-k update, accumulated in float64.

        CPU: SciPy's BLAS ``ssyrk``/``dsyrk`` on the batch's memory (a C-contiguous B×D array is a
        Fortran D×B one, so no copy), with torch's thread count; only the lower triangle is written
        (the upper one is filled when the scatter is read). float32: into a float32 D×D workspace
        added into the accumulator; float64 (and batches under ``_DIRECT64_ROWS`` rows): straight into
        the accumulator (β = 1). Other devices: ``cᵀc`` (a GEMM) into a workspace, added.
        """
        acc = self._tscatter
        d = self.dim
        if float64 or centred.shape[0] < _DIRECT64_ROWS:
            c = centred if centred.dtype == torch.float64 else centred.to(torch.float64)
            if _syrk_(acc, c):  # straight into the float64 accumulator
                self._lower_only = True  # the C lower triangle was written; the upper one is stale
            else:
                acc.addmm_(c.T, c)
            return
        c = centred if centred.dtype == torch.float32 else self._workspace(
            "centred_narrow", tuple(centred.shape), torch.float32, centred.device
        ).copy_(centred)
        if acc.device.type == "cpu" and torch.float32 in _scipy_blas() and torch.get_num_threads() == 1:
            work = self._gram_workspace(d)
            _syrk_(work, c, beta=0.0)  # writes the lower triangle; the upper one stays 0
            self._add_lower(acc, work)  # float32 products accumulated in float64
            self._lower_only = True
            return
        if acc.device.type == "cpu" and d >= 4 * _TRIL_MIN_BLOCK:
            # several threads: torch's own GEMM on the lower block-triangle (4 column blocks: 5/8 of a full
            # GEMM's flops; measured 2.4 ms vs 3.2 ms for B=1024, D=512 on 2 threads)
            work = self._gram_workspace(d)
            step = -(-d // 4)
            for j0 in range(0, d, step):
                j1 = min(d, j0 + step)
                work[j0:, j0:j1] = c[:, j0:].T @ c[:, j0:j1]
            self._add_lower(acc, work)
            self._lower_only = True
            return
        work = self._workspace("gram", (d, d), torch.float32, c.device)
        torch.mm(c.T, c, out=work)
        acc.add_(work)

    def _add_lower(self, acc: Tensor, work: Tensor) -> None:
        """acc += work on the lower triangle (float32 into float64) through a small float64 row buffer
        (a mixed-dtype ``add_`` would materialise a float64 copy of the whole D×D)."""
        d = acc.shape[0]
        if d * d <= _ADD_BLOCK_ELEMENTS:  # small: one fused mixed-dtype add (its float64 copy is ≤ 4 MiB)
            acc.add_(work)
            return
        rows = max(1, min(d, _ADD_BLOCK_ELEMENTS // d))
        buf = self._workspace("add64", (rows * d,), torch.float64, acc.device)
        for i0 in range(0, d, rows):
            i1 = min(d, i0 + rows)
            block = buf[: (i1 - i0) * i1].view(i1 - i0, i1).copy_(work[i0:i1, :i1])
            acc[i0:i1, :i1].add_(block)

    def _gram_workspace(self, d: int) -> Tensor:
        """(D, D) float32 buffer whose strict upper triangle stays 0 (``ssyrk`` writes only the lower one)."""
        buf = self.__dict__.get("_ws_syrk")
        if buf is None or buf.shape != (d, d):
            buf = torch.zeros(d, d, dtype=torch.float32)
            self.__dict__["_ws_syrk"] = buf
        return buf

    # ------------------------------------------------------------- projection
    @property
    def projection_phase(self) -> str:
        """``"means"`` (pass 1, or not a projected mode), ``"projected"`` (pass 2) or ``"done"``."""
        return self._phase

    @property
    def projection_basis(self) -> Tensor | None:
        """(D, r) orthonormal basis V of span(μ_c − μ_G) fixed by :meth:`begin_projection` (else ``None``)."""
        return self._basis

    @property
    def projected_scatter(self) -> Tensor | None:
        """(r, r) P = Vᵀ S_W V of the pass-2 samples (partial while pass 2 runs; ``None`` before it)."""
        if self._pscatter is None:
            return None

        def make() -> Tensor:
            scaled = self._psum / self._pcounts.clamp_min(1.0).sqrt()[:, None]  # (K, r)
            return self._pscatter - scaled.T @ scaled

        return self._cached("projected_scatter", make)

    @torch.no_grad()
    def begin_projection(self) -> ClassStats:
        """End pass 1 of ``scatter="projected"``: fix V (D×r), an orthonormal basis of span(μ_c − μ_G).

        V holds the right singular vectors of the centred means of the classes seen, with singular
        value above s_max·max(K, D)·ε (r ≤ K−1); it spans the class-mean differences whatever the
        centre (mean of means or sample-weighted), hence serves nc1 with either. After
        :meth:`all_reduce` in pass 1, V is broadcast from rank 0 so that every rank holds the
        same bits.
        """
        if self.scatter != "projected":
            raise ValueError(f"begin_projection() needs scatter='projected', these statistics have {self.scatter!r}")
        if self._phase != "means":
            raise ValueError(f"begin_projection() was already called (phase {self._phase!r})")
        self._require()
        seen = self.counts > 0
        if int(seen.sum()) < 2:
            raise ValueError(
                f"begin_projection() needs at least 2 classes with samples, got {int(seen.sum())}: run pass 1 first"
            )
        means = self.means[seen]
        centred = means - means.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # (K_s,), (K_s, D)
        k_s = means.shape[0]
        tol = float(s[0]) * max(k_s, self.dim) * torch.finfo(torch.float64).eps if s.numel() else 0.0
        keep = (s > tol) & (torch.arange(s.numel(), device=s.device) < k_s - 1)
        if float(s[0]) == 0.0:
            keep[:] = False
        basis = vh[keep].T.contiguous()  # (D, r)
        basis = self._broadcast_basis(basis)
        r = basis.shape[1]
        k = self.n_classes
        f64 = dict(dtype=torch.float64, device=self.device)
        self._basis = basis
        self._pcounts = torch.zeros(k, **f64)
        self._psum = torch.zeros(k, r, **f64)
        self._pscatter = torch.zeros(r, r, **f64)
        self._phase = "projected"
        self._cache = {}
        return self

    def _broadcast_basis(self, basis: Tensor) -> Tensor:
        import torch.distributed as dist

        group = self._synced_group
        if group is None or not (dist.is_available() and dist.is_initialized()):
            return basis
        src = 0 if group is True else dist.get_global_rank(group, 0)
        group = None if group is True else group
        shape = torch.tensor([basis.shape[1]], dtype=torch.long, device=self.device)
        dist.broadcast(shape, src=src, group=group)
        if int(shape) != basis.shape[1]:
            basis = torch.zeros(self.dim, int(shape), dtype=torch.float64, device=self.device)
        basis = basis.contiguous()
        dist.broadcast(basis, src=src, group=group)
        return basis

    def _projection_shifts(self) -> tuple[Tensor, Tensor, Tensor]:
        """(float32 pass-1 means s (K, D), their residual projections Vᵀ(μ − s) (K, r), float32 V (D, r))."""

        def make32() -> Tensor:
            return self.means.to(torch.float32)

        s32 = self._cached("proj_shift32", make32)
        basis32 = self._cached("proj_basis32", lambda: self._basis.to(torch.float32))
        delta = self._cached("proj_delta", lambda: (self.means - s32.to(torch.float64)) @ self._basis)
        return s32, delta, basis32

    def _add_projected(self, x: Tensor, rows: Tensor) -> None:
        """Pass 2: u_i = Vᵀ(h_i − μ_{y_i}) (r), accumulated as counts, class sums and Σ u uᵀ in float64."""
        n_b = torch.bincount(rows, minlength=self.n_classes).to(torch.float64)
        unseen = (n_b > 0) & (self.counts == 0)
        if bool(unseen.any()):
            raise ValueError(
                f"classes {self.label_values[unseen][:10].tolist()} have samples in pass 2 but none in pass 1; "
                f"the second pass of scatter='projected' must see the same samples as the first"
            )
        u = None
        if not (self._exact64 or self.exact_sums or x.dtype == torch.float64):
            s32, delta, basis32 = self._projection_shifts()
            centred = self._workspace("centred_proj", tuple(x.shape), torch.float32, x.device)
            torch.index_select(s32, 0, rows, out=centred)
            torch.sub(x, centred, out=centred)  # h − s_y, float32 (exact when collapse is strong)
            z = (centred @ basis32).to(torch.float64)  # (B, r)
            if bool(torch.isfinite(z.sum())):
                u = z - delta.index_select(0, rows)  # Vᵀ(h − μ) = Vᵀ(h − s) − Vᵀ(μ − s)
            else:
                validate_features(x)  # NaN/Inf input raises; finite overflow falls through to float64
        if u is None:
            centred = self._workspace("centred_proj64", tuple(x.shape), torch.float64, x.device)
            torch.index_select(self.means, 0, rows, out=centred)
            torch.sub(x, centred, out=centred)
            u = centred @ self._basis  # (B, r) float64
            if not bool(torch.isfinite(u.sum())):
                validate_features(x)
                raise ValueError("features too large for float64 projected moments; rescale the features")
        self._pcounts.add_(n_b)
        self._psum.index_add_(0, rows, u)
        self._pscatter.addmm_(u.T, u)
        self._cache.pop("projected_scatter", None)

    def end_projection(self) -> ClassStats:
        """End pass 2: check that it saw exactly pass 1's class counts; phase becomes ``"done"``.

        Also warns when the pass-2 class means differ from pass 1's by more than 3 % of the
        within-class spread (features that change between the passes: dropout, augmentation, a
        model in train mode).
        """
        if self.scatter != "projected" or self._phase != "projected":
            raise ValueError(
                f"end_projection() needs scatter='projected' in phase 'projected' (after begin_projection() and "
                f"pass 2), got scatter={self.scatter!r}, phase {self._phase!r}"
            )
        if not torch.equal(self._pcounts, self.counts):
            diff = (self._pcounts != self.counts).nonzero().flatten()
            detail = ", ".join(
                f"label {int(self.label_values[i])}: pass 1 {int(self.counts[i])}, pass 2 {int(self._pcounts[i])}"
                for i in diff[:5].tolist()
            )
            raise ValueError(
                f"the second pass saw {int(self._pcounts.sum())} samples but the first saw {int(self.counts.sum())}; "
                f"class counts differ for {diff.numel()} classes ({detail}). Both passes must see the same samples."
            )
        drift = float((self._psum.square().sum(1) / self.counts.clamp_min(1.0)).sum())
        spread = float(torch.trace(self._pscatter)) if self._pscatter.numel() else 0.0
        if spread > 0 and drift > 1e-3 * spread:
            warnings.warn(
                f"the pass-2 class means differ from pass 1's by {math.sqrt(drift / spread):.2g} of the within-class "
                f"spread (projected): do both passes see the same features (eval mode, no augmentation)?",
                RuntimeWarning,
                stacklevel=2,
            )
        self._phase = "done"
        self._cache = {}
        return self

    # ------------------------------------------------------------------ merge
    def _rebase(self, new_shift: Tensor, into: Tensor | None = None) -> None:
        """Re-express the moments on new shifts s′ (Chan's correction; exact algebra).

        With d = s′ − s: t′ = t − n d, q′ = q − 2 d·t + n‖d‖², S′ = S − Tᵀ D − Dᵀ T + Dᵀ diag(n) D,
        applied in place (rank-K updates, no D×D temporary). With ``into`` (a D×D accumulator) S′ is
        added into it instead and this state's S is left as it is (merging without a D×D copy).
        """
        d = new_shift - self._shift  # (K, D)
        n = self.counts
        if self._tscatter is not None:
            s = self._full_scatter()
            if into is None:
                target = s
            else:
                target = into.add_(s)
            scaled = n.sqrt()[:, None] * d  # (K, D)
            target.addmm_(scaled.T, scaled).addmm_(self._tsum.T, d, alpha=-1.0).addmm_(d.T, self._tsum, alpha=-1.0)
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
        if other._phase != self._phase:
            raise ValueError(
                f"cannot merge statistics in projection phase {other._phase!r} into phase {self._phase!r}: "
                f"merge pass-1 statistics before begin_projection(), pass-2 ones before end_projection()"
            )
        if self._phase == "done":
            raise ValueError(
                "cannot merge two finished projections (phase 'done'): each holds all of pass 2 already; "
                "merge the pass-2 shards in phase 'projected', then call end_projection() once"
            )
        if self._phase == "projected":
            same = (
                self._basis.shape == other._basis.shape
                and torch.equal(self._basis, other._basis.to(self._basis.device))
                and torch.equal(self.counts, other.counts.to(self.counts.device))
                and torch.equal(self.label_values, other.label_values.to(self.label_values.device))
            )
            if not same:
                raise ValueError(
                    "cannot merge pass-2 statistics with different projection bases (or different pass-1 "
                    "statistics): every shard must start pass 2 from the same begin_projection() (clone it or "
                    "load its state_dict)"
                )

    @torch.no_grad()
    def merge(self, other: ClassStats) -> ClassStats:
        """Merge another ClassStats into this one (in place); equals one pass over both.

        ``other`` is re-expressed on this state's shifts (classes new to this state adopt ``other``'s
        shifts), then the shifted moments add. Per class this is Chan et al.'s (1979) update
        S = S_a + S_b + (n_a n_b/(n_a+n_b)) (μ_a − μ_b)(μ_a − μ_b)ᵀ. In phase ``"projected"`` the
        pass-1 statistics are shared (same basis) and only the pass-2 sums add.
        """
        self._check_compatible(other)
        if not other.initialized:
            return self
        if self._phase == "projected":
            self._pcounts += other._pcounts.to(self.device)
            self._psum += other._psum.to(self.device)
            self._pscatter += other._pscatter.to(self.device)
            self._cache = {}
            return self
        if not self.initialized:
            self._allocate(other.dim, self.device or other.device)
        theirs = other._clone(share_scatter=True)  # its D×D scatter is added, never copied
        theirs._to(self.device)
        if self.num_classes is None and theirs.label_values.numel():
            rows = self._index_labels(theirs.label_values)
        else:
            rows = torch.arange(self.n_classes, device=self.device)
        self._exact64 = self._exact64 or theirs._exact64
        mine = self.counts.index_select(0, rows) > 0
        target = torch.where(mine[:, None], self._shift.index_select(0, rows), theirs._shift)
        theirs._rebase(target, into=self._full_scatter())
        self._shift[rows] = target
        self.counts[rows] += theirs.counts
        self._tsum[rows] += theirs._tsum
        self._tsq[rows] += theirs._tsq
        self._all_seen = False
        self._cache = {}
        return self

    def __add__(self, other: ClassStats) -> ClassStats:
        return self.clone().merge(other)

    def clone(self) -> ClassStats:
        """A deep copy."""
        return self._clone()

    def _clone(self, share_scatter: bool = False) -> ClassStats:
        out = ClassStats.__new__(ClassStats)
        kept = {k: v for k, v in self.__dict__.items() if not k.startswith("_ws_")}  # no scratch buffers
        out.__dict__.update(
            {k: (v.clone() if isinstance(v, Tensor) and not (share_scatter and k == "_tscatter") else v)
             for k, v in kept.items()}
        )
        out._cache = {}
        return out

    _TENSORS = ("counts", "label_values", "_shift", "_tsum", "_tsq", "_tscatter", "_basis", "_pcounts", "_psum",
                "_pscatter")

    def _to(self, device: torch.device) -> None:
        for name in self._TENSORS:
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
        """Tensors and settings, loadable with ``torch.load(weights_only=True)``; resuming is exact.

        On CPU the tensors share memory with the statistics (no D×D copy): save them (``torch.save``)
        or clone them before the next update.
        """
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "num_classes": -1 if self.num_classes is None else self.num_classes,
            "dim": -1 if self.dim is None else self.dim,
            "scatter": self.scatter,
            "exact64": self._exact64,
            "exact_sums": self.exact_sums,
            "phase": self._phase,
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
                state["shifted_scatter"] = self._full_scatter().cpu()
            if self._basis is not None:
                state.update(
                    projection_basis=self._basis.cpu(),
                    projected_counts=self._pcounts.cpu(),
                    projected_sum=self._psum.cpu(),
                    projected_raw_scatter=self._pscatter.cpu(),
                )
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> ClassStats:
        """Restore from :meth:`state_dict` (onto ``self.device`` if set, else CPU), validating everything.

        Checked: the version, settings, every tensor's presence, type, dtype, shape (K rows, D columns,
        a D×D scatter, a D×r orthonormal basis, r×r projected scatter), finiteness, counts that are
        non-negative whole numbers, label values sorted ascending and unique (``0..K−1`` for a fixed
        K), empty classes without sums. Nothing is changed when a check fails.

        Raises:
            ValueError: naming the key, the value found and what was expected.
        """
        parsed = _parse_state(state)
        device = self.device or torch.device("cpu")
        self.__dict__.update(
            num_classes=parsed["num_classes"], dim=parsed["dim"], scatter=parsed["scatter"],
            _exact64=parsed["exact64"], exact_sums=parsed["exact_sums"], _phase=parsed["phase"],
            _lower_only=False, _all_seen=False, _synced_group=None, _cache={}, device=device,
        )
        for name in self._TENSORS:
            value = parsed.get(name)
            setattr(self, name, None if value is None else value.to(device))
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
        the statistics of the union of all ranks' data. In projection phase ``"projected"`` only the
        pass-2 sums are all-reduced (after checking that every rank holds the same basis).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        self._require()
        if self._phase == "done":
            raise ValueError("all_reduce() after end_projection(): reduce the pass-2 sums before end_projection()")
        if self._phase == "projected":
            return self._all_reduce_projected(group)
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
        second = torch.cat([self._tsum.reshape(-1), self._tsq])
        dist.all_reduce(second, group=group)
        if self._tscatter is not None:
            dist.all_reduce(self._full_scatter().contiguous(), group=group)  # in place: no D×D copy
        kd = k * self.dim
        self.counts = counts.contiguous()
        self._tsum = second[:kd].reshape(k, self.dim).contiguous()
        self._tsq = second[kd : kd + k].contiguous()
        self._exact64 = exact64
        self._all_seen = False
        self._synced_group = True if group is None else group
        self._cache = {}
        return self

    def _all_reduce_projected(self, group: Any) -> ClassStats:
        import torch.distributed as dist

        r = self._basis.shape[1]
        probe = torch.cat([torch.tensor([float(r)], dtype=torch.float64, device=self.device),
                           self._basis.sum(0), self.counts])
        high, low = probe.clone(), probe.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
        if not torch.equal(high, low):
            raise ValueError(
                "all_reduce() in pass 2: the ranks hold different projection bases or pass-1 counts; all_reduce "
                "pass 1 before begin_projection() on every rank"
            )
        flat = torch.cat([self._pcounts, self._psum.reshape(-1), self._pscatter.reshape(-1)])
        dist.all_reduce(flat, group=group)
        k = self.n_classes
        self._pcounts = flat[:k].contiguous()
        self._psum = flat[k : k + k * r].reshape(k, r).contiguous()
        self._pscatter = flat[k + k * r :].reshape(r, r).contiguous()
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
        if self._pcounts is not None:
            out._pcounts, out._psum = self._pcounts[keep], self._psum[keep]
        out.num_classes = None
        return out

    def memory_bytes(self) -> int:
        """Bytes held by the statistics."""
        if not self.initialized:
            return 0
        tensors = [getattr(self, name) for name in self._TENSORS]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def __repr__(self) -> str:
        if not self.initialized:
            return f"ClassStats(num_classes={self.num_classes}, empty)"
        phase = f", phase={self._phase!r}" if self.scatter == "projected" else ""
        return (
            f"ClassStats(K={self.n_classes}, D={self.dim}, N={int(self.total)}, scatter={self.scatter!r}{phase}, "
            f"device={self.device}, {self.memory_bytes() / 2**20:.1f} MiB)"
        )


# ------------------------------------------------------------------------ state validation
def _state_error(key: str, found: Any, expected: str) -> ValueError:
    if isinstance(found, Tensor):
        found = f"a {found.dtype} tensor of shape {tuple(found.shape)}"
    elif isinstance(found, str | int | float | bool) or found is None:
        found = repr(found)
    else:
        found = f"a {type(found).__name__}"
    return ValueError(f"invalid ClassStats state: {key!r} is {found}, expected {expected}")


def _tensor(state: Mapping[str, Any], key: str, shape: tuple[int, ...], *, integer: bool = False) -> Tensor:
    value = state.get(key)
    if not isinstance(value, Tensor):
        raise _state_error(key, value, f"a tensor of shape {shape}")
    if integer:
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise _state_error(key, value, "an integer tensor")
    elif not value.is_floating_point():
        raise _state_error(key, value, "a floating tensor (float64)")
    if tuple(value.shape) != shape:
        raise _state_error(key, value, f"shape {shape}")
    if not integer and value.numel() and not bool(torch.isfinite(value).all()):
        raise _state_error(key, value, "finite values (it holds NaN or Inf)")
    return value.to(torch.long if integer else torch.float64)


def _parse_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a :meth:`ClassStats.state_dict` and return its settings and float64/int64 tensors."""
    if not isinstance(state, Mapping):
        raise TypeError(f"a ClassStats state must be a mapping, got {type(state).__name__}")
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in _READABLE_VERSIONS:
        raise _state_error("version", version, f"one of {_READABLE_VERSIONS}")
    out: dict[str, Any] = {}
    for key in ("num_classes", "dim"):
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not (value == -1 or value >= 1):
            raise _state_error(key, value, "a positive integer, or -1 for none")
        out[key] = None if value == -1 else value
    scatter = state.get("scatter")
    if scatter not in SCATTER_MODES:
        raise _state_error("scatter", scatter, f"one of {SCATTER_MODES}")
    phase = state.get("phase", "means")
    if phase not in PROJECTION_PHASES or (scatter != "projected" and phase != "means"):
        raise _state_error("phase", phase, "'means' (or 'projected'/'done' with scatter='projected')")
    for key, default in (("exact64", False), ("exact_sums", True)):
        value = state.get(key, default)
        if not isinstance(value, bool):
            raise _state_error(key, value, "a bool")
        out[key] = value
    out.update(scatter=scatter, phase=phase)
    if "counts" not in state:
        tensors = ("label_values", "shift", "shifted_sum", "shifted_sq", "shifted_scatter")
        extra = [key for key in tensors if key in state]
        if extra or phase != "means":
            raise _state_error("counts", None, f"a tensor (the state has {extra or 'a projection phase'})")
        return out
    counts = state["counts"]
    if not isinstance(counts, Tensor) or counts.ndim != 1:
        raise _state_error("counts", counts, "a 1-D tensor (K,)")
    k = counts.shape[0]
    d = out["dim"]
    if d is None:
        raise _state_error("dim", -1, "the feature dimension D (the state holds statistics)")
    counts = _tensor(state, "counts", (k,))
    if bool((counts < 0).any()) or not bool((counts == counts.round()).all()):
        raise _state_error("counts", state["counts"], f"non-negative whole numbers, got e.g. {counts[:5].tolist()}")
    labels = _tensor(state, "label_values", (k,), integer=True)
    if k > 1 and not bool((labels[1:] > labels[:-1]).all()):
        raise _state_error("label_values", state["label_values"],
                           f"labels sorted ascending and unique, got {labels[:10].tolist()}")
    if out["num_classes"] is not None and (k != out["num_classes"] or not torch.equal(labels, torch.arange(k))):
        raise _state_error("label_values", state["label_values"], f"0..{out['num_classes'] - 1} for num_classes="
                           f"{out['num_classes']}")
    out["counts"], out["label_values"] = counts, labels
    out["_shift"] = _tensor(state, "shift", (k, d))
    out["_tsum"] = _tensor(state, "shifted_sum", (k, d))
    out["_tsq"] = _tensor(state, "shifted_sq", (k,))
    if bool((out["_tsq"] < 0).any()):
        raise _state_error("shifted_sq", state["shifted_sq"], "non-negative sums of squares")
    empty = counts == 0
    if bool(empty.any()) and (bool(out["_tsum"][empty].ne(0).any()) or bool(out["_tsq"][empty].ne(0).any())):
        raise _state_error("shifted_sum", state["shifted_sum"], "zero sums for classes with no samples")
    if scatter == "full":
        s = _tensor(state, "shifted_scatter", (d, d))
        if bool((s.diagonal() < 0).any()):
            raise _state_error("shifted_scatter", state["shifted_scatter"], "a scatter with a non-negative diagonal")
        if not torch.allclose(s, s.T, rtol=1e-12, atol=1e-12 * float(s.abs().max())):
            raise _state_error("shifted_scatter", state["shifted_scatter"], "a symmetric D×D matrix")
        out["_tscatter"] = s
    elif "shifted_scatter" in state:
        raise _state_error("shifted_scatter", state["shifted_scatter"], f"no D×D scatter with scatter={scatter!r}")
    if phase != "means":
        basis = state.get("projection_basis")
        if not isinstance(basis, Tensor) or basis.ndim != 2:
            raise _state_error("projection_basis", basis, "a (D, r) tensor")
        r = basis.shape[1]
        if r > max(k - 1, 0):
            raise _state_error("projection_basis", basis, f"at most K−1 = {k - 1} columns")
        basis = _tensor(state, "projection_basis", (d, r))
        if r and float((basis.T @ basis - torch.eye(r, dtype=torch.float64)).abs().max()) > 1e-10:
            raise _state_error("projection_basis", state["projection_basis"], "orthonormal columns")
        out["_basis"] = basis
        out["_pcounts"] = _tensor(state, "projected_counts", (k,))
        if bool((out["_pcounts"] < 0).any()) or bool((out["_pcounts"] > counts).any()):
            raise _state_error("projected_counts", state["projected_counts"], "counts between 0 and the pass-1 counts")
        if phase == "done" and not torch.equal(out["_pcounts"], counts):
            raise _state_error("projected_counts", state["projected_counts"], "the pass-1 counts (phase 'done')")
        out["_psum"] = _tensor(state, "projected_sum", (k, r))
        ps = _tensor(state, "projected_raw_scatter", (r, r))
        if r and not torch.allclose(ps, ps.T, rtol=1e-12, atol=1e-12 * float(ps.abs().max())):
            raise _state_error("projected_raw_scatter", state["projected_raw_scatter"], "a symmetric r×r matrix")
        out["_pscatter"] = ps
    return out
