"""``NeuralCollapse``: a torchmetrics ``Metric`` over :class:`~nclens.core.stats.ClassStats` (extra ``torchmetrics``).

``update(features, labels)`` streams (B, D) features of one layer; ``compute()`` returns the NC
metrics of the registry as a dict of 0-d tensors; ``reset()`` clears. States are declared with
``add_state`` and hold the canonical per-class moments — counts n_c (K), sums Σh (K×D), within-class
sums of squares Σ‖h − μ_c‖² (K) and, with ``scatter="full"``, the pooled within-class scatter S_W
(D×D) — each with a leading *shard* axis and ``dist_reduce_fx="cat"``. Syncing across processes,
``merge_state`` and ``forward`` therefore concatenate shards, and ``compute`` merges them exactly
with Chan's parallel formula (:meth:`ClassStats.merge`): no E[hhᵀ] − μμᵀ is ever formed, and R
synced processes equal one process. Memory: O(R·(K·D + D²)) after a sync of R shards.

Example:
    >>> import torch
    >>> from nclens.integrations.torchmetrics import NeuralCollapse
    >>> metric = NeuralCollapse(num_classes=3, dim=4)
    >>> g = torch.Generator().manual_seed(0)
    >>> for _ in range(3):
    ...     metric.update(torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g))
    >>> sorted(metric.compute())[:3]
    ['cdnv', 'effective_rank', 'nc1']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from nclens.integrations import require

torchmetrics = require("torchmetrics", "torchmetrics")

__all__ = ["NeuralCollapse"]


class NeuralCollapse(torchmetrics.Metric):
    """Neural-collapse metrics of one layer's features as a torchmetrics ``Metric``.

    Args:
        num_classes: K (labels ``0..K−1``).
        dim: D, the feature dimension.
        weight: optional classifier W (K×D) for the classifier metrics (``*_w``, nc3), or set
            :attr:`weight` later (e.g. ``metric.weight = model.fc.weight``).
        scatter: ``"full"`` or ``"trace"`` (no D×D state: every metric but nc1).
        metrics: metric names (``None``: the registry's defaults).
        min_class_count: classes with fewer samples are excluded (see :func:`nclens.measure`).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        weight: Tensor | None = None,
        scatter: str = "full",
        metrics: Sequence[str] | None = None,
        min_class_count: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for label, value in (("num_classes", num_classes), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if scatter not in ("full", "trace"):
            raise ValueError(f"scatter must be 'full' or 'trace', got {scatter!r}")
        self.num_classes, self.dim, self.scatter = num_classes, dim, scatter
        self.metric_names, self.min_class_count = metrics, min_class_count
        self.weight = weight
        f64 = torch.float64
        self.add_state("counts", torch.zeros(1, num_classes, dtype=f64), dist_reduce_fx="cat")
        self.add_state("sums", torch.zeros(1, num_classes, dim, dtype=f64), dist_reduce_fx="cat")
        self.add_state("class_sq", torch.zeros(1, num_classes, dtype=f64), dist_reduce_fx="cat")
        if scatter == "full":
            self.add_state("scatter_w", torch.zeros(1, dim, dim, dtype=f64), dist_reduce_fx="cat")

    def _shards(self) -> tuple[Any, ...]:
        """The states as (shards, ...) tensors (a sync stacks the ranks' (1, ...) states: (R, 1, ...))."""
        k, d = self.num_classes, self.dim
        counts, sums = self.counts.reshape(-1, k), self.sums.reshape(-1, k, d)
        sq = self.class_sq.reshape(-1, k)
        scatter = self.scatter_w.reshape(-1, d, d) if self.scatter == "full" else None
        return counts, sums, sq, scatter

    def _shard(self, i: int):
        from nclens.core.stats import ClassStats

        counts, sums, sq, scatter = self._shards()
        return ClassStats.from_moments(counts[i], sums[i], sq[i], None if scatter is None else scatter[i])

    def _merged(self):
        from nclens.core.stats import ClassStats

        merged = ClassStats(self.num_classes, scatter=self.scatter, device=self.counts.device)
        counts = self._shards()[0]
        for i in range(counts.shape[0]):
            if float(counts[i].sum()) > 0:
                merged.merge(self._shard(i))
        return merged

    def update(self, features: Tensor, labels: Tensor) -> None:  # noqa: D102 - torchmetrics API
        from nclens.core.stats import ClassStats

        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (B, {self.dim}), got shape {tuple(features.shape)}")
        batch = ClassStats(self.num_classes, scatter=self.scatter, device=self.counts.device)
        batch.update(features.detach(), labels.detach())
        if float(self.counts[0].sum()) > 0:
            batch = self._shard(0).merge(batch)
        self.counts[0] = batch.counts
        self.sums[0] = batch.sums
        self.class_sq[0] = batch.class_sq
        if self.scatter == "full":
            self.scatter_w[0] = batch.scatter_w

    def compute(self) -> dict[str, Tensor]:  # noqa: D102 - torchmetrics API
        from nclens.core.measure import layer_metrics

        stats = self._merged()
        if not stats.initialized or stats.total == 0:
            raise ValueError("NeuralCollapse.compute() before any update()")
        weight = None if self.weight is None else torch.as_tensor(self.weight).detach().to(torch.float64)
        values, _ = layer_metrics(stats, weight, fixed_classes=True, min_class_count=self.min_class_count,
                                  names=self.metric_names)
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in values.items()}
