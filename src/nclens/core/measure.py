"""``measure(model, loader, layers=...)``: one pass over the data, NC metrics for every layer.

Data flow (ARCHITECTURE.md): data → model → :class:`~nclens.core.probe.Probe` (features per layer) →
:class:`~nclens.core.stats.ClassStats` (per layer) → :mod:`nclens.core.metrics` → :class:`CollapseReport`.
One forward pass gives NC1–NC3 for all requested layers at once; NC4 (classifier vs nearest class
mean) takes a second pass, only when asked for, because it needs the class means of the first.

Classifier-based metrics (``*_w``, nc3, nc4) are computed for every measured ``nn.Linear`` layer
whose *input* is measured and whose ``out_features`` equals the number of classes: its weight is
then read as the classifier W (row k = k-th class in ascending label order) of its input features.

Under torch.distributed (each rank iterating over its shard, e.g. with a DistributedSampler), the
statistics are all-reduced before the metrics, so every rank returns the metrics of all the data.

Example:
    >>> import torch, torch.nn as nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from nclens.core.measure import measure
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(120, 6, generator=g), torch.arange(120) % 3
    >>> net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> report = measure(net, DataLoader(TensorDataset(x, y), batch_size=32), progress=False)
    >>> sorted(report.metrics)
    ['0', '2']
    >>> "nc3_duality" in report.metrics["2"]
    True
"""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from nclens.core.console import format_table, progress_bar
from nclens.core.io import to_jsonable, write_json
from nclens.core.metrics import compute_metrics, mismatch_count
from nclens.core.metrics.registry import order_columns
from nclens.core.probe import Probe
from nclens.core.stats import ClassStats

__all__ = ["CollapseReport", "measure", "classifier_layers", "format_table", "progress_bar"]


@dataclass
class CollapseReport:
    """Per-layer NC metrics of one measurement.

    Attributes:
        metrics: ``{layer: {metric: value}}``.
        stats: ``{layer: ClassStats}`` — the statistics the metrics came from (merge, save, reuse).
        info: how the measurement was taken (mode, pool, samples, classes, ...).
    """

    metrics: dict[str, dict[str, float]]
    stats: dict[str, ClassStats] = field(default_factory=dict, repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        """Measured layer names, in measurement order."""
        return list(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        """``{"info": ..., "metrics": {layer: {metric: value}}}`` (JSON-ready)."""
        return to_jsonable({"info": self.info, "metrics": self.metrics})

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The report as JSON text; also written atomically to ``path`` when given."""
        if path is not None:
            write_json(path, self.to_dict())
        return json.dumps(self.to_dict(), indent=2)

    def to_dataframe(self):  # -> pandas.DataFrame
        """A pandas DataFrame: one row per layer, one column per metric."""
        import pandas as pd

        frame = pd.DataFrame.from_dict(self.metrics, orient="index")
        frame.index.name = "layer"
        return frame[order_columns(frame.columns)]

    def __str__(self) -> str:
        return format_table(self.metrics, title="neural collapse per layer")


def classifier_layers(model: nn.Module, layers: Sequence[str], mode: str, num_classes: int) -> dict[str, nn.Linear]:
    """Measured Linear layers whose input is measured and whose ``out_features`` is K: {name: module}."""
    if mode != "input":
        return {}
    modules = dict(model.named_modules())
    return {
        name: modules[name]
        for name in layers
        if isinstance(modules[name], nn.Linear) and modules[name].out_features == num_classes
    }


def _unpack(batch: Any) -> tuple[Any, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "label" in batch:
        inputs = {k: v for k, v in batch.items() if k != "label"}
        return inputs, batch["label"]
    raise TypeError(
        f"each batch must be (inputs, labels) or a dict with 'label'; got {type(batch).__name__}"
    )


def _to(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, dict):
        return {k: _to(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to(v, device) for v in inputs)
    return inputs


def _forward(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def _probed_batches(
    model: nn.Module,
    loader: Iterable[Any],
    names: Sequence[str],
    mode: str,
    pool: str,
    device: torch.device,
    max_batches: int | None,
    bar: Any,
) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """One pass: for each batch, the (B, D) features of every named layer and the labels on ``device``.

    Hooks are attached for the pass and removed in ``finally`` (also when the forward raises).
    """
    with Probe(model, names, mode=mode, pool=pool) as probe, bar as advance:
        for step, batch in enumerate(loader):
            if max_batches is not None and step >= max_batches:
                break
            inputs, labels = _unpack(batch)
            probe.clear()
            _forward(model, _to(inputs, device))
            missing = [name for name in names if name not in probe.features]
            if missing:
                raise RuntimeError(f"layers {missing} were not called in the forward pass")
            yield probe.features, torch.as_tensor(labels).to(device)
            advance()


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@torch.no_grad()
def measure(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Sequence[str] | None = None,
    *,
    mode: str = "input",
    pool: str = "avg",
    num_classes: int | None = None,
    nc4: bool = False,
    reference: CollapseReport | None = None,
    scatter: str = "full",
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
) -> CollapseReport:
    """Measure neural collapse of ``layers`` of ``model`` in one pass over ``loader``.

    Args:
        model: any ``nn.Module`` (put in eval mode during the pass, then restored).
        loader: iterable of ``(inputs, labels)`` batches (labels: integer class ids).
        layers: module names from ``named_modules()``; ``None`` = every Linear/Conv module.
        mode: measure each layer's ``"input"`` (as Rangamani et al. 2023) or ``"output"``.
        pool: ``"avg"`` (global average over spatial dims) or ``"flatten"`` for conv maps.
        num_classes: K when labels are ``0..K−1`` (fixed rows, required for classifier metrics to
            line up when a class may be absent); ``None`` = the distinct labels seen.
        nc4: take a second pass for ``nc4_ncc_mismatch`` on classifier layers.
        reference: class means for nc4 from another report (e.g. the training data's report when
            measuring test data); default: this pass's own means.
        scatter: ``"full"`` (all metrics) or ``"trace"`` (no D×D scatter: every metric but nc1).
        device: where the model runs (default: the device of its first parameter).
        progress: show a progress bar.
        max_batches: stop after this many batches (quick looks).

    Returns:
        A :class:`CollapseReport` with metrics, statistics and info.
    """
    names = Probe(model, layers).layers  # validates names (unknown → KeyError listing valid ones)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    stats = {name: ClassStats(num_classes, scatter=scatter, device=device) for name in names}
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    was_training = model.training
    model.eval()
    n_samples = 0
    try:
        batches = _probed_batches(model, loader, names, mode, pool, device, max_batches,
                                  progress_bar(progress, "measuring", total))
        with closing(batches):  # hooks come off as soon as the pass ends or anything raises
            for features, labels in batches:
                for name in names:
                    stats[name].update(features[name], labels)
                n_samples += int(labels.shape[0])
        if n_samples == 0:
            raise ValueError("the loader yielded no samples")
        if _distributed():
            for s in stats.values():
                s.all_reduce()
        k = stats[names[0]].n_classes
        heads = classifier_layers(model, names, mode, k)
        metrics: dict[str, dict[str, float]] = {}
        for name in names:
            weight = heads[name].weight.detach().to(torch.float64) if name in heads else None
            metrics[name] = compute_metrics(stats[name], weight)
        if nc4 and heads:
            _nc4_pass(model, loader, heads, stats, reference, metrics, mode, pool, device, progress, max_batches)
    finally:
        model.train(was_training)
    info = {
        "mode": mode,
        "pool": pool,
        "samples": int(stats[names[0]].total),
        "classes": stats[names[0]].n_classes,
        "labels": stats[names[0]].label_values.tolist(),
        "dims": {name: stats[name].dim for name in names},
        "classifier_layers": sorted(heads),
        "scatter": scatter,
    }
    return CollapseReport(metrics=metrics, stats=stats, info=info)


def _nc4_pass(
    model: nn.Module,
    loader: Iterable[Any],
    heads: dict[str, nn.Linear],
    stats: dict[str, ClassStats],
    reference: CollapseReport | None,
    metrics: dict[str, dict[str, float]],
    mode: str,
    pool: str,
    device: torch.device,
    progress: bool,
    max_batches: int | None,
) -> None:
    """Second pass: count classifier/NCC disagreements for every classifier layer."""
    means = {}
    for name in heads:
        source = reference.stats.get(name) if reference is not None else stats[name]
        if source is None:
            raise KeyError(f"reference report has no layer {name!r}; it has {sorted(reference.stats)}")
        means[name] = source.means
    counts = torch.zeros(len(heads), 2, dtype=torch.float64, device=device)  # (layers, [mismatch, n])
    order = list(heads)
    batches = _probed_batches(model, loader, order, mode, pool, device, max_batches,
                              progress_bar(progress, "nc4 pass", None))
    with closing(batches):
        for features, _ in batches:
            for i, name in enumerate(order):
                head = heads[name]
                bias = head.bias.detach() if head.bias is not None else None
                bad, n = mismatch_count(features[name], head.weight.detach(), bias, means[name])
                counts[i, 0] += bad
                counts[i, 1] += n
    if _distributed():
        import torch.distributed as dist

        dist.all_reduce(counts)
    for i, name in enumerate(order):
        metrics[name]["nc4_ncc_mismatch"] = float(counts[i, 0] / counts[i, 1])


class _CallableModule(types.ModuleType):
    """Lets ``nclens.measure(model, loader, ...)`` call :func:`measure` while ``nclens.measure`` stays the
    module (``from nclens.core.measure import CollapseReport`` and ``import nclens.core.measure as m`` still work)."""

    def __call__(self, *args: Any, **kwargs: Any) -> CollapseReport:
        return measure(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
