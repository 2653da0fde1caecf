"""Layer-by-layer measurement of the intermediate-NC experiment, on the shared probe and engine.

At one epoch, for the training and (optionally) the test data:

1. :func:`nclens.core.measure.measure` gives every layer's NC metrics (one pass; undefined metrics are
   ``null``, never fatal: a layer of dead units has coinciding class means);
2. one more pass with :class:`~nclens.core.probe.Probe` gives each layer's nearest-class-mean accuracy
   against the *training* class means, and (training data) the class means of the un-pooled inputs of
   every Linear/Conv2d layer, from which :func:`nclens.core.metrics.layers.layer_alignment` computes
   ``subspace_alignment`` and ``assoc_memory_alignment`` (Rangamani et al. 2023).

Records: one per (epoch, split, layer) — ``layers.jsonl`` — and one weight spectrum per aligned layer
— ``spectra.jsonl``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from nclens.core.errors import UndefinedMetricWarning
from nclens.core.measure import measure
from nclens.core.metrics import ncc_predict
from nclens.core.metrics.layers import layer_alignment, weight_spectrum
from nclens.core.probe import Probe, resolve_layers
from nclens.core.stats import ClassStats

__all__ = ["measure_layers", "alignment_layers"]


def alignment_layers(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The measured layers whose weights the alignment metrics read: Linear and ungrouped Conv2d."""
    modules = dict(model.named_modules())
    return [n for n in names if isinstance(modules[n], nn.Linear)
            or (isinstance(modules[n], nn.Conv2d) and modules[n].groups == 1)]


@torch.no_grad()
def _ncc_pass(
    model: nn.Module, batches: Iterable[Any], names: list[str], mode: str, pool: str,
    train_means: dict[str, Tensor], raw_layers: list[str], num_classes: int, device: torch.device,
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """NCC accuracy per layer and (for ``raw_layers``) class means of the un-pooled inputs (K, *shape)."""
    from nclens.train.trainer import all_reduce_

    correct = torch.zeros(len(names), dtype=torch.float64, device=device)
    seen = torch.zeros((), dtype=torch.float64, device=device)
    raw = {n: ClassStats(num_classes, scatter="trace", device=device) for n in raw_layers}
    was = model.training
    model.eval()
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with contextlib.ExitStack() as stack:
            probe = stack.enter_context(Probe(model, names, mode=mode, pool=pool))
            flat = stack.enter_context(Probe(model, raw_layers, mode="input", pool="flatten")) if raw_layers else None
            for x, y in batches:
                y = y.to(device)
                probe.clear()
                model(x.to(device))
                for i, name in enumerate(names):
                    correct[i] += (ncc_predict(probe.features[name], train_means[name]) == y).sum()
                for name in raw_layers:
                    raw[name].update(flat.features[name], y)
                seen += y.shape[0]
            if flat is not None:
                shapes = dict(flat.shapes)
    finally:
        model.train(was)
    all_reduce_(correct)
    all_reduce_(seen)
    means = {}
    for name, stats in raw.items():
        stats.all_reduce()
        means[name] = stats.means.reshape(num_classes, *shapes[name])
    acc = {name: float(correct[i] / seen.clamp_min(1.0)) for i, name in enumerate(names)}
    return acc, means


def measure_layers(
    model: nn.Module,
    train_batches: Iterable[Any],
    test_batches: Iterable[Any] | None,
    *,
    layers: list[str] | None,
    mode: str = "input",
    pool: str = "avg",
    num_classes: int,
    device: torch.device,
    epoch: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-layer NC records (train and test splits) and weight spectra of ``model`` at one epoch.

    Returns:
        (layer records, spectrum records); see the module docstring.
    """
    names = resolve_layers(model, layers)
    modules = dict(model.named_modules())
    align = alignment_layers(model, names)
    splits: list[tuple[str, Any]] = [("train", train_batches)]
    if test_batches is not None:
        splits.append(("test", test_batches))
    records: list[dict[str, Any]] = []
    train_means: dict[str, Tensor] = {}
    for split, batches in splits:
        with warnings.catch_warnings():  # an undefined metric is recorded as null in layers.jsonl
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            report = measure(model, batches, names, mode=mode, pool=pool, num_classes=num_classes,
                             device=device, progress=False)
        if split == "train":
            train_means = {n: report.stats[n].means for n in names}
        acc, raw_means = _ncc_pass(model, batches, names, mode, pool, train_means,
                                   align if split == "train" else [], num_classes, device)
        for index, name in enumerate(names):
            module = modules[name]
            rec: dict[str, Any] = {
                "epoch": epoch, "split": split, "layer": name, "index": index,
                "kind": type(module).__name__, "dim": report.stats[name].dim,
            }
            rec.update(report.metrics[name])
            rec["ncc_accuracy"] = acc[name]
            if name in raw_means:
                try:
                    rec.update(layer_alignment(module, raw_means[name], k=num_classes))
                except ValueError:  # e.g. all-zero input means at initialisation
                    rec.update({"subspace_alignment": None, "assoc_memory_alignment": None})
            records.append(rec)
    spectra = [
        {"epoch": epoch, "layer": n, "index": names.index(n),
         "singular_values": weight_spectrum(modules[n].weight.detach()).tolist()}
        for n in align
    ]
    return records, spectra
