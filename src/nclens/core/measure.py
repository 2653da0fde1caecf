"""``measure(model, loader, layers=...)``: one pass over the data, NC metrics for every layer.

Data flow (ARCHITECTURE.md): data → model → :class:`~nclens.core.probe.Probe` (features per layer) →
:class:`~nclens.core.stats.ClassStats` (per layer) → :mod:`nclens.core.metrics` → :class:`CollapseReport`.
One forward pass gives NC1–NC3 for all requested layers at once; NC4 (classifier vs nearest class
mean) takes a second pass, only when asked for, because it needs the class means of the first
(``nc4="cache"`` keeps the classifier layers' features of the first pass instead, for small data).

**Any model, any batch.** ``batch_fn(batch) -> (inputs, labels)`` and ``forward_fn(model, inputs)``
say how to read a batch and call the model; by default tuples/lists ``(x, y, ...)`` and dicts with
``labels`` (the Hugging Face convention) or ``label`` work, a dict's other entries are passed as
keyword arguments, and an ``attention_mask`` entry is respected by the token reductions.
``labels_fn(inputs, labels)`` computes the classes (e.g. :func:`nclens.labels.next_token` for causal
LMs: (B, T) classes, one per token); labels equal to ``ignore_index`` (−100) are not counted.

**Any activation rank** (see :mod:`nclens.core.probe`): (B, T, H) sequences need ``tokens=`` —
``"cls" | "first" | "last" | "mean"`` (respecting the attention mask) or ``"all"`` (every token is a
sample, labels broadcast or per token); conv maps keep ``pool="avg" | "flatten"``; anything else is an
error naming the layer, its shape and the options. Per-layer settings with
:class:`~nclens.core.probe.LayerSpec`; ``layers=`` takes names, glob patterns or a predicate.

**Rare classes and large K.** Statistics are O(K·D + D²) per layer whatever N (K = 50,000 classes
with ``num_classes=None`` grow a sorted label index). Classes with fewer than ``min_class_count``
samples are excluded from every metric; beyond that, each metric's ``min_per_class`` (from the
registry: 2 for ``cdnv``, which needs a class variance) excludes the classes it cannot use from
that metric only. Every exclusion is reported in ``report.info["excluded"]``. When K > D + 1 a note
says that the class means span at most D dimensions.

**Classifier metrics** (``*_w``, nc3, nc4) are computed for every measured ``nn.Linear`` layer
measured in ``"input"`` mode whose ``out_features`` equals K (``num_classes`` when given, else the
number of distinct labels): its weight is read as the classifier W, row k belonging to the k-th
class in ascending label order (with ``num_classes``: to label k). Classes absent or excluded drop
their rows, so an LM head (``num_classes=vocab_size``) is measured on the tokens that occur.

**Distributed** (``distributed="auto"`` inside an initialised process group, or a process group):
every rank iterates over its own shard (e.g. :func:`nclens.core.distributed.shard_loader`), the
statistics are all-reduced before the metrics, and every rank returns the metrics of all the data.
``measure`` must be called on every rank: a rank that does not arrive within ``timeout_s`` makes
the others fail with an error naming it, instead of waiting forever. A loader that gives every
rank the same batches (not sharded) is detected from the first batch and warned about (its counts
would be multiplied by the number of ranks). PyTorch's ``DistributedSampler`` pads the last ranks
with repeated samples, which are then counted twice: use ``shard_loader`` for exact numbers.

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
    >>> report.to_records(epoch=0)[0]["layer"], report.to_records(epoch=0)[0]["epoch"]
    ('0', 0)
"""

from __future__ import annotations

import json
import math
import os
import sys
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from nclens.core.console import format_table, progress_bar
from nclens.core.errors import UndefinedMetricWarning
from nclens.core.io import to_jsonable, write_json
from nclens.core.labels import IGNORE_INDEX
from nclens.core.metrics import compute_metrics, mismatch_count
from nclens.core.metrics import extra as _extra  # noqa: F401  (registers GNC2, UNC3, NC5, cdnv_max)
from nclens.core.metrics.extra import nc5_ood_orthogonality
from nclens.core.metrics.multiclass import scatter_available
from nclens.core.metrics.registry import get_metric, metric_specs, order_columns
from nclens.core.probe import LayerSpec, Probe, specs_summary
from nclens.core.stats import ClassStats

__all__ = [
    "CollapseReport",
    "measure",
    "classifier_layers",
    "layer_metrics",
    "format_table",
    "progress_bar",
    "NC4_MODES",
]

NC4_MODES = (False, True, "cache")
#: Label lists longer than this are summarised in ``report.info`` (count, min, max) instead of listed.
_MAX_LISTED_LABELS = 1000


@dataclass
class CollapseReport:
    """Per-layer NC metrics of one measurement.

    Attributes:
        metrics: ``{layer: {metric: value}}``.
        stats: ``{layer: ClassStats}`` — the statistics the metrics came from (merge, save, reuse).
        info: how the measurement was taken (layer specs, samples, classes, exclusions, notes, ...).
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

    def to_records(self, **tags: Any) -> list[dict[str, Any]]:
        """Long format for papers: one ``{**tags, "layer", "metric", "value"}`` record per number.

        Example: ``report.to_records(epoch=3, split="train", run="a")`` → rows for a DataFrame
        (``pandas.DataFrame(records)``) or :func:`nclens.collect`. NaN stays NaN (``None`` in JSON).
        """
        clash = sorted(set(tags) & {"layer", "metric", "value"})
        if clash:
            raise ValueError(f"tags {clash} would overwrite the record's own columns (layer, metric, value)")
        return [
            {**tags, "layer": layer, "metric": metric, "value": value}
            for layer, row in self.metrics.items()
            for metric in order_columns(row)
            for value in (row[metric],)
        ]

    def to_dataframe(self):  # -> pandas.DataFrame
        """A pandas DataFrame: one row per layer, one column per metric."""
        import pandas as pd

        frame = pd.DataFrame.from_dict(self.metrics, orient="index")
        frame.index.name = "layer"
        return frame[order_columns(frame.columns)]

    def __str__(self) -> str:
        return format_table(self.metrics, title="neural collapse per layer")


# --------------------------------------------------------------------------- batches
def _default_batch(batch: Any, need_labels: bool) -> tuple[Any, Any]:
    """(inputs, labels) of a batch: ``(x, y, ...)`` or a dict with ``labels``/``label``."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        for key in ("labels", "label"):
            if key in batch:
                return {k: v for k, v in batch.items() if k not in ("labels", "label")}, batch[key]
        if not need_labels:
            return dict(batch), None
        raise TypeError(
            f"a dict batch needs a 'labels' (or 'label') entry; this one has keys {sorted(batch)}. Pass "
            f"batch_fn=lambda b: (inputs, labels) or labels_fn=... (e.g. nclens.labels.next_token())"
        )
    if not need_labels:
        return batch, None
    raise TypeError(
        f"each batch must be (inputs, labels) or a dict with 'labels'/'label'; got {type(batch).__name__}. "
        f"Pass batch_fn=lambda b: (inputs, labels) to say how to read it"
    )


def _to(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, Tensor):
        return inputs.to(device, non_blocking=True)
    if isinstance(inputs, Mapping):
        return {k: _to(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to(v, device) for v in inputs)
    return inputs


def _default_forward(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def _attention_mask(inputs: Any) -> Tensor | None:
    if isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
        return mask if isinstance(mask, Tensor) else None
    return None


class _Batches:
    """Reads batches the way ``measure`` was told to: batch_fn, forward_fn, labels_fn, device, mask."""

    def __init__(self, batch_fn, forward_fn, labels_fn, device: torch.device) -> None:
        for name, fn in (("batch_fn", batch_fn), ("forward_fn", forward_fn), ("labels_fn", labels_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        self.batch_fn, self.forward_fn, self.labels_fn, self.device = batch_fn, forward_fn, labels_fn, device

    def run(self, model: nn.Module, probe: Probe, batch: Any, need_labels: bool = True) -> Tensor | None:
        """Forward one batch with the probe attached; return its labels (on ``device``) or ``None``."""
        if self.batch_fn is not None:
            out = self.batch_fn(batch)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise TypeError(f"batch_fn must return (inputs, labels), got {type(out).__name__}")
            inputs, labels = out
        else:
            inputs, labels = _default_batch(batch, need_labels and self.labels_fn is None)
        inputs = _to(inputs, self.device)
        probe.clear()
        probe.mask = _attention_mask(inputs)
        (self.forward_fn or _default_forward)(model, inputs)
        if self.labels_fn is not None and need_labels:
            labels = self.labels_fn(inputs, labels)
        missing = [name for name in probe.layers if name not in probe.features]
        if missing:
            raise RuntimeError(f"layers {missing} were not called in the forward pass")
        if labels is None:
            return None
        return torch.as_tensor(labels).to(self.device)


def _layer_labels(spec: LayerSpec, feats: Tensor, valid: Tensor | None, labels: Tensor, batch: int,
                  ignore_index: int | None) -> tuple[Tensor, Tensor | None]:
    """Labels aligned with this layer's samples, and the mask of samples to count."""
    if labels.is_floating_point() or labels.dtype == torch.bool:
        if labels.is_floating_point() and bool((labels == labels.round()).all()):
            labels = labels.long()
        else:
            raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}")
    per_token = feats.shape[0] != batch  # tokens="all": B·T samples
    if per_token:
        tokens = feats.shape[0] // batch
        if labels.shape == (batch,):
            labels = labels.repeat_interleave(tokens)
        elif labels.shape == (batch, tokens):
            labels = labels.reshape(-1)
        else:
            raise ValueError(
                f"layer {spec.name!r} (tokens='all') has {batch}×{tokens} token samples; labels must be ({batch},) "
                f"(broadcast to every token) or ({batch}, {tokens}), got shape {tuple(labels.shape)}"
            )
    elif labels.shape != (batch,):
        hint = (" (per-token labels: measure this layer with tokens='all')" if labels.ndim == 2 and labels.shape[0]
                == batch and labels.shape[1] > 1 else " (squeeze the labels to 1-D)" if labels.ndim == 2 else "")
        raise ValueError(f"layer {spec.name!r}: labels must have shape ({batch},), got {tuple(labels.shape)}{hint}")
    keep = valid
    if ignore_index is not None:
        counted = labels != ignore_index
        keep = counted if keep is None else keep & counted
    if keep is not None and bool(keep.all()):
        keep = None
    return labels.long(), keep


class _Accumulator:
    """Per-layer ClassStats fed from a probe's features and a batch's labels (shared with OnlineCollapse)."""

    def __init__(self, specs: Sequence[LayerSpec], num_classes: int | None, device: torch.device | None,
                 ignore_index: int | None, cache: Sequence[str] = ()) -> None:
        self.specs = list(specs)
        self.num_classes, self.device, self.ignore_index = num_classes, device, ignore_index
        self.cache_layers = set(cache)
        self.reset()

    def reset(self) -> None:
        self.stats = {s.name: ClassStats(self.num_classes, scatter=s.scatter or "full", device=self.device)
                      for s in self.specs}
        self.samples = {s.name: 0 for s in self.specs}
        self.ignored = {s.name: 0 for s in self.specs}
        self.batches = 0
        self.cached: dict[str, list[tuple[Tensor, Tensor]]] = {n: [] for n in self.cache_layers}
        self.fingerprint: list[float] | None = None

    def add(self, probe: Probe, labels: Tensor, batch: int) -> None:
        for spec in self.specs:
            feats, valid = probe.features[spec.name], probe.token_valid.get(spec.name)
            lab, keep = _layer_labels(spec, feats, valid, labels.to(feats.device), batch, self.ignore_index)
            if self.fingerprint is None:  # the first batch, to detect loaders that are not sharded
                self.fingerprint = [float(lab.shape[0]), float(lab.double().sum()),
                                    float(feats.detach().double().sum())]
            self.stats[spec.name].update(feats, lab, mask=keep)
            n = int(lab.shape[0] if keep is None else keep.sum())
            self.samples[spec.name] += n
            self.ignored[spec.name] += int(lab.shape[0]) - n
            if spec.name in self.cache_layers:
                kept = (feats, lab) if keep is None else (feats[keep], lab[keep])
                self.cached[spec.name].append(kept)
        self.batches += 1


# --------------------------------------------------------------------------- classifier layers
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


def _heads(model: nn.Module, specs: Sequence[LayerSpec], k: int) -> dict[str, nn.Linear]:
    modules = dict(model.named_modules())
    return {s.name: modules[s.name] for s in specs if s.mode == "input" and isinstance(modules[s.name], nn.Linear)
            and modules[s.name].out_features == k}


# --------------------------------------------------------------------------- metrics with exclusions
def _subset(stats: ClassStats, keep: Tensor) -> ClassStats:
    """Statistics of the kept classes (exact: counts, sums, class_sq; S_W see :func:`layer_metrics`)."""
    if bool(keep.all()):
        return stats
    sub = ClassStats.from_moments(stats.counts[keep], stats.sums[keep], stats.class_sq[keep], stats.scatter_w)
    sub.label_values = stats.label_values[keep]  # the kept classes' labels (for messages); rows are 0..K'-1
    return sub


def layer_metrics(
    stats: ClassStats,
    weight: Tensor | None = None,
    *,
    fixed_classes: bool = False,
    min_class_count: int = 1,
    names: Sequence[str] | None = None,
    on_undefined: str = "nan",
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of one layer with the rare-class policy; ``(metrics, info)``.

    Classes with no sample are dropped (and their rows of ``weight``); classes with fewer than
    ``min_class_count`` samples are excluded from every metric; each registered metric then uses
    only the classes with at least its ``min_per_class`` samples. ``info`` holds ``classes`` (K
    used), ``excluded`` (``{"all": labels, metric: labels}``) and ``notes``.

    Excluding a class removes its count, mean and within-class sum of squares exactly. The pooled
    D×D scatter cannot be split by class after the pass, so scatter metrics (``nc1``,
    ``effective_rank``) are exact when every excluded class has a single sample (its scatter is 0)
    and are otherwise left out, with a note.

    Args:
        stats: the layer's statistics.
        weight: the classifier (one row per class row of ``stats``), or ``None``.
        fixed_classes: ``stats`` has ``num_classes`` rows (row k = label k).
        min_class_count: the fewest samples a class needs to be measured at all.
        names: the metrics to compute (``None``: the registry's defaults).
        on_undefined: ``"nan"`` or ``"raise"`` (see :func:`~nclens.core.metrics.compute_metrics`).
    """
    counts = stats.counts
    present = counts > 0
    base = present & (counts >= min_class_count)
    labels = stats.label_values
    info: dict[str, Any] = {"excluded": {}, "notes": []}
    dropped = present & ~base
    if bool(dropped.any()):
        info["excluded"]["all"] = labels[dropped].tolist()
    have_weight = weight is not None
    if names is None:
        specs = [s for s in metric_specs("multiclass") if s.default and s.fn is not None]
    else:
        specs = [get_metric(n) for n in names if get_metric(n).fn is not None]
    have = scatter_available(stats) | ({"weight"} if have_weight else set())
    specs = [s for s in specs if not (set(s.needs) - have)]
    groups: dict[int, list[str]] = {}
    for spec in specs:
        groups.setdefault(max(spec.min_per_class, min_class_count), []).append(spec.name)
    metrics: dict[str, float] = {}
    used_k = int(base.sum())
    with warnings.catch_warnings(record=True) as caught:  # one UndefinedMetricWarning per layer, not per group
        warnings.simplefilter("always", UndefinedMetricWarning)
        _grouped_metrics(stats, weight, groups, base, counts, labels, present, min_class_count, fixed_classes,
                         on_undefined, metrics, info)
    undefined = [str(w.message).split(" — ", 1)[-1] for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    for w in caught:
        if not issubclass(w.category, UndefinedMetricWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if undefined:
        warnings.warn(f"undefined metrics reported as NaN — {'; '.join(undefined)}", UndefinedMetricWarning,
                      stacklevel=3)
    info["classes"] = used_k
    if used_k < 2:
        why = f" ({len(info['excluded'].get('all', []))} classes have fewer than {min_class_count} samples)" \
            if info["excluded"].get("all") else ""
        raise ValueError(f"neural-collapse metrics need at least 2 classes, got K={used_k}{why}")
    return {n: metrics[n] for n in order_columns(metrics)}, info


def _grouped_metrics(stats, weight, groups, base, counts, labels, present, min_class_count, fixed_classes,
                     on_undefined, metrics, info) -> None:
    for need, group in sorted(groups.items()):
        keep = base & (counts >= need)
        if need > min_class_count and bool((base & ~keep).any()):
            for name in group:
                info["excluded"][name] = labels[base & ~keep].tolist()
        excluded = present & ~keep
        group_names = list(group)
        if bool((counts[excluded] >= 2).any()):
            scatter_names = [n for n in group_names if set(get_metric(n).needs) & {"scatter", "full_scatter"}]
            if scatter_names:
                info["notes"].append(
                    f"{', '.join(scatter_names)} left out: excluded classes with 2 or more samples contribute to the "
                    f"pooled within-class scatter, which cannot be split by class after the pass (use "
                    f"min_class_count <= 2 to keep them)"
                )
                group_names = [n for n in group_names if n not in scatter_names]
        if int(keep.sum()) < 2:
            info["notes"].append(f"{', '.join(group)}: fewer than 2 classes have >= {need} samples")
            continue
        sub = _subset(stats, keep)
        w = None
        if weight is not None:
            rows = labels[keep] if fixed_classes else keep.nonzero().flatten()
            w = weight.index_select(0, rows.to(weight.device))
        if group_names:
            metrics.update(compute_metrics(sub, w, names=group_names, on_undefined=on_undefined))


# --------------------------------------------------------------------------- measure
def _check_options(nc4: Any, min_class_count: Any, mode: str, distributed: Any, timeout_s: Any) -> None:
    if nc4 not in NC4_MODES or isinstance(nc4, int) and not isinstance(nc4, bool):
        raise ValueError(f"nc4 must be False, True or 'cache', got {nc4!r}")
    if isinstance(min_class_count, bool) or not isinstance(min_class_count, int) or min_class_count < 1:
        raise ValueError(f"min_class_count must be a positive integer, got {min_class_count!r}")
    if mode not in ("input", "output"):
        raise ValueError(f"mode must be 'input' or 'output', got {mode!r}")
    if isinstance(distributed, str) and distributed not in ("auto", "off"):
        raise ValueError(f"distributed must be 'auto', 'off' or a process group, got {distributed!r}")
    if not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")


def _loader_length(loader: Any, max_batches: int | None) -> int | None:
    try:
        total = len(loader)
    except TypeError:
        total = None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    return total


def _one_pass(model: nn.Module, loader: Iterable[Any], probe: Probe, reader: _Batches, acc: _Accumulator | None,
              max_batches: int | None, bar: Any, on_batch: Callable[[Tensor | None], None] | None = None) -> int:
    """Iterate ``loader`` once with the probe attached; return the number of batches."""
    steps = 0
    with probe, bar as advance:
        for step, batch in enumerate(loader):
            if max_batches is not None and step >= max_batches:
                break
            labels = reader.run(model, probe, batch, need_labels=acc is not None or on_batch is None)
            if acc is not None:
                if labels is None:
                    raise TypeError("the batch has no labels; pass labels_fn or batch_fn")
                first = probe.features[probe.layers[0]]
                batch_size = _batch_size(labels, first, probe)
                acc.add(probe, labels, batch_size)
            if on_batch is not None:
                on_batch(labels)
            steps += 1
            advance()
    return steps


def _batch_size(labels: Tensor, first: Tensor, probe: Probe) -> int:
    """B of the batch: from the shapes the probe saw (its first dim)."""
    size = probe.batch_sizes.get(probe.layers[0])
    return int(size) if size is not None else int(labels.shape[0])


@torch.no_grad()
def measure(
    model: nn.Module,
    loader: Iterable[Any],
    layers: Any = None,
    *,
    mode: str = "input",
    pool: str | None = None,
    tokens: str | None = None,
    output_fn: Callable[[Any], Any] | None = None,
    batch_fn: Callable[[Any], tuple[Any, Any]] | None = None,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    labels_fn: Callable[[Any, Any], Tensor] | None = None,
    ignore_index: int | None = IGNORE_INDEX,
    num_classes: int | None = None,
    min_class_count: int = 1,
    metrics: Sequence[str] | None = None,
    on_undefined: str = "nan",
    nc4: bool | str = False,
    reference: CollapseReport | None = None,
    ood: Iterable[Any] | None = None,
    scatter: str = "full",
    device: torch.device | str | None = None,
    distributed: Any = "auto",
    timeout_s: float = 300.0,
    progress: bool = True,
    max_batches: int | None = None,
) -> CollapseReport:
    """Measure neural collapse of ``layers`` of ``model`` in one pass over ``loader``.

    Args:
        model: any ``nn.Module`` (put in eval mode during the pass, then restored).
        loader: an iterable of batches (see ``batch_fn``); a DataLoader or a list (re-iterable) when
            ``nc4=True`` or ``ood`` needs another pass.
        layers: module names, glob patterns, a predicate ``(name, module) -> bool``,
            :class:`~nclens.core.probe.LayerSpec` objects, or a list of them; ``None`` = the default
            layer set of the model's family (transformer blocks and the head; else every Linear/Conv).
        mode: measure each layer's ``"input"`` (as Rangamani et al. 2023) or ``"output"`` (layers
            whose spec does not say).
        pool: ``"avg"`` (default) or ``"flatten"`` for channel-first conv maps.
        tokens: ``"cls" | "first" | "last" | "mean" | "all"`` for (B, T, H) sequences.
        output_fn: maps a layer's captured value to a tensor (e.g. ``lambda o: o.last_hidden_state``).
        batch_fn: ``batch -> (inputs, labels)``.
        forward_fn: ``(model, inputs) -> anything`` (default ``model(**inputs)`` for dicts, else ``model(inputs)``).
        labels_fn: ``(inputs, labels) -> labels`` (B,) or (B, T), e.g. ``nclens.labels.next_token()``.
        ignore_index: labels with this value are not counted (``None``: count everything).
        num_classes: K when labels are ``0..K−1`` (fixed rows: classifier rows line up even when a class
            is absent); ``None`` = the distinct labels seen.
        min_class_count: classes with fewer samples are excluded from every metric (reported).
        metrics: metric names to compute (``None``: the registry's defaults; e.g. add ``"gnc2_log"``).
        on_undefined: ``"nan"`` (NaN plus a warning) or ``"raise"`` for metrics without a value.
        nc4: ``True`` takes a second pass for ``nc4_ncc_mismatch`` on classifier layers (the loader must
            yield the data again); ``"cache"`` keeps those layers' features from the first pass instead.
        reference: class means for nc4 from another report (e.g. the training data's report when
            measuring test data); default: this pass's own means.
        ood: a loader of out-of-distribution inputs; adds ``nc5_ood_orthogonality`` to every layer
            (labels, if any, are ignored).
        scatter: ``"full"`` (all metrics) or ``"trace"`` (no D×D scatter: every metric but nc1).
        device: where the model runs (default: the device of its first parameter).
        distributed: ``"auto"`` (all-reduce inside an initialised process group), ``"off"``, or a
            process group.
        timeout_s: how long a rank waits for the others before failing with a message naming them.
        progress: show a progress bar (rank 0 only under distributed).
        max_batches: stop after this many batches (quick looks).

    Returns:
        A :class:`CollapseReport` with metrics, statistics and info.

    Raises:
        ValueError: bad options, a (B, T, H) layer without ``tokens``, labels of the wrong shape, a
            loader without samples, ``nc4=True`` on a loader that yields nothing the second time.
        TypeError: a batch that cannot be read, a non-tensor layer output without ``output_fn``.
        KeyError: an unknown layer name (the valid names listed).
        RuntimeError: under distributed, a rank that does not call ``measure`` in time.
    """
    from nclens.core.distributed import resolve_group, sync_measurement

    _check_options(nc4, min_class_count, mode, distributed, timeout_s)
    group_info = resolve_group(distributed)
    if nc4 is True and isinstance(loader, Iterator):
        raise ValueError(
            "nc4=True needs a second pass over the data, but the loader is a one-shot iterator"
            " (an Iterator); pass a re-iterable loader (a DataLoader or a list) or nc4='cache' to keep the classifier "
            "layers' features of this pass in memory"
        )
    if ood is not None and ood is loader:
        raise ValueError("ood must be a separate loader of out-of-distribution inputs")
    probe = Probe(model, layers, mode=mode, pool=pool, tokens=tokens, output_fn=output_fn)
    specs = [s.filled(scatter=scatter) for s in probe.specs]
    names = [s.name for s in specs]
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    reader = _Batches(batch_fn, forward_fn, labels_fn, device)
    show = progress and (group_info is None or group_info.rank == 0)
    was_training = model.training
    model.eval()
    cache = names if nc4 == "cache" else ()
    acc = _Accumulator(specs, num_classes, device, ignore_index, cache=cache)
    try:
        _one_pass(model, loader, probe, reader, acc, max_batches,
                  progress_bar(show, "measuring", _loader_length(loader, max_batches)))
        total = sum(acc.samples.values())
        if group_info is not None:
            sync_measurement(acc.stats, acc.samples, acc.fingerprint, names, group_info, timeout_s)
            total = sum(acc.samples.values())
        if total == 0:
            why = " (every label was ignore_index)" if acc.batches else ""
            raise ValueError(f"the loader yielded no samples{why}")
        empty = [n for n in names if not acc.stats[n].initialized or acc.stats[n].total == 0]
        if empty:
            raise ValueError(f"layers {empty} received no samples (every label was ignore_index?)")
        first_stats = acc.stats[names[0]]
        fixed = num_classes is not None
        k = first_stats.n_classes
        heads = _heads(model, specs, k)
        out: dict[str, dict[str, float]] = {}
        excluded: dict[str, Any] = {}
        notes: list[str] = []
        used: dict[str, int] = {}
        for name in names:
            weight = heads[name].weight.detach().to(torch.float64) if name in heads else None
            row, linfo = layer_metrics(acc.stats[name], weight, fixed_classes=fixed, min_class_count=min_class_count,
                                       names=metrics, on_undefined=on_undefined)
            out[name] = row
            used[name] = linfo["classes"]
            if linfo["excluded"]:
                excluded[name] = linfo["excluded"]
            notes += [f"{name}: {note}" for note in linfo["notes"]]
            d = acc.stats[name].dim
            if linfo["classes"] > d + 1:
                notes.append(f"{name}: K={linfo['classes']} classes in D={d} dimensions: the centred class means span "
                             f"at most {d} < K-1 dimensions, so nc1 lives in a {d}-dim space and an exact simplex ETF "
                             f"(nc2 = 0) is impossible")
        if nc4 and heads:
            _nc4(model, loader, probe, reader, acc, heads, reference, out, fixed, min_class_count, device,
                 show, max_batches, group_info, timeout_s)
        if ood is not None:
            _nc5(model, ood, probe, reader, acc, out, fixed, min_class_count, show, max_batches, group_info, timeout_s)
    finally:
        model.train(was_training)
    labels = first_stats.label_values[first_stats.counts > 0]
    info: dict[str, Any] = {
        "mode": mode,
        "layers": specs_summary(specs),
        "samples": int(first_stats.total),
        "samples_per_layer": {n: int(acc.stats[n].total) for n in names},
        "classes": int((first_stats.counts > 0).sum()),
        "classes_used": used,
        "labels": labels.tolist() if labels.numel() <= _MAX_LISTED_LABELS else
        {"count": int(labels.numel()), "min": int(labels.min()), "max": int(labels.max())},
        "dims": {name: acc.stats[name].dim for name in names},
        "classifier_layers": sorted(heads),
        "scatter": scatter,
        "min_class_count": min_class_count,
        "excluded": excluded,
        "notes": notes,
        "world_size": 1 if group_info is None else group_info.world_size,
    }
    ignored = {n: c for n, c in acc.ignored.items() if c}
    if ignored:
        info["ignored"] = ignored
    if pool is not None:
        info["pool"] = pool
    return CollapseReport(metrics=out, stats=acc.stats, info=info)


def _kept_rows(stats: ClassStats, min_class_count: int) -> Tensor:
    return (stats.counts > 0) & (stats.counts >= min_class_count)


def _nc4(model, loader, probe, reader, acc, heads, reference, out, fixed, min_class_count, device, show,
         max_batches, group_info, timeout_s) -> None:
    """nc4_ncc_mismatch for every classifier layer: second pass (nc4=True) or cached features ("cache")."""
    from nclens.core.distributed import all_reduce_tensor

    order = list(heads)
    params = {}
    for name in order:
        stats = acc.stats[name]
        source = stats
        if reference is not None:
            source = reference.stats.get(name)
            if source is None:
                raise KeyError(f"reference report has no layer {name!r}; it has {sorted(reference.stats)}")
            if source.n_classes != stats.n_classes:
                raise ValueError(f"reference layer {name!r} has K={source.n_classes} classes, this data "
                                 f"K={stats.n_classes}")
        keep = _kept_rows(source, min_class_count)
        head = heads[name]
        rows = source.label_values[keep] if fixed else keep.nonzero().flatten()
        w = head.weight.detach().index_select(0, rows.to(head.weight.device))
        b = head.bias.detach().index_select(0, rows.to(head.weight.device)) if head.bias is not None else None
        params[name] = (w, b, source.means[keep], source.label_values[keep])
    counts = torch.zeros(len(order), 2, dtype=torch.float64, device=device)  # (layers, [mismatch, n])

    def add(i: int, name: str, feats: Tensor, labels: Tensor) -> None:
        w, b, means, kept_labels = params[name]
        sel = torch.isin(labels.to(kept_labels.device), kept_labels)
        if not bool(sel.any()):
            return
        bad, n = mismatch_count(feats[sel.to(feats.device)], w, b, means)
        counts[i, 0] += bad
        counts[i, 1] += n

    if acc.cache_layers:
        for i, name in enumerate(order):
            for feats, labels in acc.cached[name]:
                add(i, name, feats, labels)
            acc.cached[name] = []
    else:
        head_specs = [s for s in acc.specs if s.name in heads]
        second = Probe(model, head_specs)

        def on_batch(labels: Tensor | None) -> None:
            b = _batch_size(labels, second.features[order[0]], second)
            for spec in head_specs:
                feats, valid = second.features[spec.name], second.token_valid.get(spec.name)
                lab, keep = _layer_labels(spec, feats, valid, labels.to(feats.device), b, acc.ignore_index)
                if keep is not None:
                    feats, lab = feats[keep], lab[keep]
                add(order.index(spec.name), spec.name, feats, lab)

        steps = _one_pass(model, loader, second, reader, None, max_batches,
                          progress_bar(show, "nc4 pass", _loader_length(loader, max_batches)), on_batch)
        if steps == 0:
            raise ValueError(
                "nc4=True: the loader yielded nothing the second time (a generator or other one-shot iterable?); "
                "pass a re-iterable loader (a DataLoader or a list) or nc4='cache'"
            )
    if group_info is not None:
        all_reduce_tensor(counts, group_info, timeout_s, "measure (nc4)")
    for i, name in enumerate(order):
        seen = float(counts[i, 1])
        if not acc.cache_layers and reference is None:
            expected = float(acc.stats[name].counts[_kept_rows(acc.stats[name], min_class_count)].sum())
            if seen != expected:
                warnings.warn(f"the nc4 pass over {name!r} saw {int(seen)} samples of the measured classes, the first "
                              f"pass {int(expected)}: the loader does not yield the same data twice", stacklevel=3)
        out[name]["nc4_ncc_mismatch"] = float(counts[i, 0] / seen) if seen else math.nan


def _nc5(model, ood, probe, reader, acc, out, fixed, min_class_count, show, max_batches, group_info,
         timeout_s) -> None:
    """nc5_ood_orthogonality of every layer from one pass over the OOD loader (labels ignored)."""
    from nclens.core.distributed import all_reduce_tensor

    names = [s.name for s in acc.specs]
    sums = {n: torch.zeros(acc.stats[n].dim, dtype=torch.float64, device=acc.stats[n].device) for n in names}
    counts = torch.zeros(len(names), dtype=torch.float64, device=acc.stats[names[0]].device)
    ood_probe = Probe(model, acc.specs)
    ood_reader = _Batches(reader.batch_fn, reader.forward_fn, None, reader.device)

    def on_batch(_labels: Any) -> None:
        for i, name in enumerate(names):
            feats, valid = ood_probe.features[name], ood_probe.token_valid.get(name)
            if valid is not None:
                feats = feats[valid]
            sums[name] += feats.to(sums[name]).sum(0)
            counts[i] += feats.shape[0]

    _one_pass(model, ood, ood_probe, ood_reader, None, max_batches, progress_bar(show, "ood pass", None), on_batch)
    if group_info is not None:
        flat = torch.cat([counts, *sums.values()])
        all_reduce_tensor(flat, group_info, timeout_s, "measure (ood)")
        counts = flat[: len(names)]
        offset = len(names)
        for name in names:
            d = sums[name].numel()
            sums[name] = flat[offset: offset + d]
            offset += d
    if float(counts.sum()) == 0:
        raise ValueError("the ood loader yielded no samples")
    for i, name in enumerate(names):
        stats = acc.stats[name]
        sub = _subset(stats, _kept_rows(stats, min_class_count))
        out[name]["nc5_ood_orthogonality"] = nc5_ood_orthogonality(sub, sums[name] / counts[i])


class _CallableModule(types.ModuleType):
    """Lets ``nclens.measure(model, loader, ...)`` call :func:`measure` while ``nclens.measure`` stays the
    module (``from nclens.core.measure import CollapseReport`` and ``import nclens.core.measure as m`` still work)."""

    def __call__(self, *args: Any, **kwargs: Any) -> CollapseReport:
        return measure(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

