"""Layer-by-layer measurement of the intermediate-NC experiment, on the shared probe and engine.

At one epoch, for the training and (optionally) the test data:

1. :func:`nclens.core.measure.measure` gives every layer's NC metrics (one pass; undefined metrics are
   ``null``, never fatal: a layer of dead units has coinciding class means);
2. one more pass with :class:`~nclens.core.probe.Probe` gives each layer's nearest-class-mean accuracy
   against the *training* class means, and (training data) the class means of the un-pooled inputs of
   every Linear/Conv2d layer, from which :func:`nclens.core.metrics.layers.layer_alignment` computes
   ``subspace_alignment`` and ``assoc_memory_alignment`` (Rangamani et al. 2023).

The official variants of Rangamani et al.'s code (:mod:`nclens.core.metrics.official`) are recorded
next to the canonical metrics: ``within_share_classavg`` and ``nc1_official`` on every layer; on the
training split ``subspace_alignment_ranks`` (conv: the official rank sweep) and the random-subspace
baseline ``subspace_alignment_random`` (mean, sd) at rank K; ``weight_rank_99`` and the official weight
singular values in ``spectra.jsonl``; with ``spectra_max_dim`` the per-class covariance spectra
(``within_stable_rank``, ``within_cov_stable_rank``, ``activation_stable_rank_official``).

nc1 per layer: ``scatter="auto"`` keeps the D×D scatter where it fits ``max_scatter_bytes`` and uses
the exact two-pass projected scatter otherwise (flattened conv maps); the record says which
(``scatter``).

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

from nclens.core.errors import UndefinedMetricError, UndefinedMetricWarning
from nclens.core.measure import measure
from nclens.core.metrics import compute_metrics, ncc_predict
from nclens.core.metrics.layers import layer_alignment, weight_spectrum
from nclens.core.metrics.official import (
    activation_stable_rank_official,
    class_covariance_spectra,
    random_subspace_alignment,
    subspace_alignment_ranks,
    weight_rank,
    weight_singular_values_official,
    within_cov_stable_rank,
    within_stable_rank,
)
from nclens.core.probe import Probe, resolve_layers
from nclens.core.stats import ClassStats

__all__ = ["measure_layers", "alignment_layers", "ClassScatters", "OFFICIAL_LAYER_METRICS", "expand_layers"]


def expand_layers(model: nn.Module, layers: Iterable[str] | None) -> list[str]:
    """Layer names, with the official code's suffix patterns expanded (``None``: every Linear/Conv layer).

    An entry starting with ``.`` or ``^`` is a pattern of the official ``utils.filter_all_named_modules``:
    module ``name`` matches when ``"^" + name`` ends with it — ``.conv1`` is every ``….conv1`` below the
    top level, ``^fc`` the top-level ``fc``; a bare word such as ``fc`` or ``conv`` matches every name
    ending in it and is taken as a pattern when no module has exactly that name (``.conv3`` matches
    nothing in a ResNet-18 and is skipped, as in the official code). Other entries are module names
    (validated by :func:`nclens.core.probe.resolve_layers`, unknown names listed).

    Example:
        >>> from nclens.models import ConvNet
        >>> expand_layers(ConvNet(10, (1, 8, 8), depth=3, width=4), ["conv", "fc"])
        ['b0.conv', 'b1.conv', 'b2.conv', 'fc']
    """
    if layers is None:
        return resolve_layers(model, None)
    names = [n for n, _ in model.named_modules() if n]
    known = set(names)
    out: list[str] = []
    for entry in layers:
        if entry in known and not entry.startswith((".", "^")):
            out.append(entry)
            continue
        pattern = entry.startswith((".", "^"))
        matched = [n for n in names if ("^" + n).endswith(entry)] if pattern or entry.isalnum() else []
        if not matched and not pattern:
            out.append(entry)  # neither a module nor a matching word: resolve_layers names it as unknown
        out.extend(matched)  # a "."/"^" pattern matching nothing is skipped, as the official filter does
    return resolve_layers(model, [n for n in names if n in set(out)] + [n for n in out if n not in known])

#: Registry metrics computed from the statistics on top of the default ones (official variants).
OFFICIAL_LAYER_METRICS = ("within_share_classavg", "nc1_official")


class ClassScatters:
    """Per-class within-class scatters S_c = Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ (K×D×D, float64) around given means.

    A second pass after the means are known (:class:`~nclens.core.stats.ClassStats` of the first);
    each batch is grouped by class with one sort and added with one batched GEMM (no loop over classes).
    """

    def __init__(self, means: Tensor) -> None:
        self.means = means.to(torch.float64)  # (K, D)
        k, d = self.means.shape
        self.scatter = torch.zeros(k, d, d, dtype=torch.float64, device=means.device)
        self.counts = torch.zeros(k, dtype=torch.float64, device=means.device)

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add a batch (B, D) with labels (B,) in 0..K−1."""
        k = self.means.shape[0]
        x = features.to(torch.float64) - self.means[labels]  # (B, D) class-centred
        order = torch.argsort(labels, stable=True)
        ys = labels[order]
        n_b = torch.bincount(ys, minlength=k)  # (K,)
        start = torch.cumsum(n_b, 0) - n_b
        pos = torch.arange(ys.shape[0], device=ys.device) - start[ys]
        grouped = x.new_zeros(k, int(n_b.max()), x.shape[1])  # (K, max n_c in batch, D)
        grouped[ys, pos] = x[order]
        self.scatter += grouped.transpose(1, 2) @ grouped  # (K, D, D)
        self.counts += n_b.to(torch.float64)

    def all_reduce(self) -> None:
        """Sum over ranks (a no-op outside torch.distributed)."""
        from nclens.train.trainer import all_reduce_

        all_reduce_(self.scatter)
        all_reduce_(self.counts)


def alignment_layers(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The measured layers whose weights the alignment metrics read: Linear and ungrouped Conv2d."""
    modules = dict(model.named_modules())
    return [n for n in names if isinstance(modules[n], nn.Linear)
            or (isinstance(modules[n], nn.Conv2d) and modules[n].groups == 1)]


@torch.no_grad()
def _ncc_pass(
    model: nn.Module, batches: Iterable[Any], names: list[str], mode: str, pool: str,
    train_means: dict[str, Tensor], raw_layers: list[str], num_classes: int, device: torch.device,
    own_means: dict[str, Tensor] | None = None,
) -> tuple[dict[str, float], dict[str, Tensor], dict[str, ClassScatters]]:
    """NCC accuracy per layer, (for ``raw_layers``) class means of the un-pooled inputs (K, *shape), and
    (for the layers of ``own_means``) per-class scatters around those means."""
    from nclens.train.trainer import all_reduce_

    correct = torch.zeros(len(names), dtype=torch.float64, device=device)
    seen = torch.zeros((), dtype=torch.float64, device=device)
    raw = {n: ClassStats(num_classes, scatter="trace", device=device, exact_sums=True) for n in raw_layers}
    scatters = {n: ClassScatters(m) for n, m in (own_means or {}).items()}
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
                for name, acc in scatters.items():
                    acc.update(probe.features[name], y)
                seen += y.shape[0]
            if flat is not None:
                shapes = dict(flat.shapes)  # per-sample shapes
    finally:
        model.train(was)
    all_reduce_(correct)
    all_reduce_(seen)
    means = {}
    for name, stats in raw.items():
        stats.all_reduce()
        means[name] = stats.means.reshape(num_classes, *shapes[name])
    for acc in scatters.values():
        acc.all_reduce()
    accuracy = {name: float(correct[i] / seen.clamp_min(1.0)) for i, name in enumerate(names)}
    return accuracy, means, scatters


def _spectra_metrics(acc: ClassScatters) -> dict[str, Any]:
    """Per-class covariance spectra → the three stable ranks (null when undefined) and the class-mean spectrum."""
    if bool((acc.counts == 0).any()):
        return {}
    spectra = class_covariance_spectra(acc.scatter, acc.counts)  # (K, D)
    out: dict[str, Any] = {}
    for key, fn in (("within_stable_rank", lambda: within_stable_rank(spectra)),
                    ("within_cov_stable_rank", lambda: within_cov_stable_rank(spectra)),
                    ("activation_stable_rank_official", lambda: activation_stable_rank_official(spectra, acc.counts))):
        try:
            out[key] = fn()
        except UndefinedMetricError:
            out[key] = None
    return out


def _alignment_records(module: nn.Module, raw_means: Tensor, k: int) -> dict[str, Any]:
    """Canonical alignments, the official rank sweep and the random baseline at rank K (conv: C_in, Linear: d_in)."""
    rec: dict[str, Any] = {}
    try:
        rec.update(layer_alignment(module, raw_means, k=k))
    except ValueError:  # e.g. all-zero input means at initialisation
        rec.update({"subspace_alignment": None, "assoc_memory_alignment": None})
    weight = module.weight.detach()
    try:
        sweep = subspace_alignment_ranks(weight, raw_means)
        rec["subspace_alignment_ranks"] = {str(r): v for r, v in sweep.items()}
    except (ValueError, torch.linalg.LinAlgError):
        rec["subspace_alignment_ranks"] = None
    d = weight.shape[1]  # d_in (Linear) or C_in (conv): the space both subspaces live in
    if weight.ndim == 2:
        rank = min(k, weight.shape[0], d)
    else:  # the canonical conv alignment's k: min(K, C_in, C_out·kh·kw, K·H·W)
        rank = min(k, d, weight[0].numel() // d * weight.shape[0], raw_means[0].numel() // d * k)
    mean, sd = random_subspace_alignment(d, rank)
    rec["subspace_alignment_random"] = mean
    rec["subspace_alignment_random_sd"] = sd
    return rec


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
    scatter: str = "auto",
    max_scatter_bytes: int = 2**30,
    spectra_max_dim: int = 0,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-layer NC records (train and test splits) and weight spectra of ``model`` at one epoch.

    Args:
        scatter: ``full`` | ``trace`` | ``projected`` | ``auto`` (per layer: full when the D×D statistics
            fit ``max_scatter_bytes``, else the exact projected scatter; :func:`nclens.core.measure.measure`).
        max_scatter_bytes: the memory limit of ``auto``.
        spectra_max_dim: per-class covariance spectra for layers with D ≤ this (0: none).

    Returns:
        (layer records, spectrum records); see the module docstring.
    """
    names = expand_layers(model, layers)
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
            report = measure(model, batches, names, mode=mode, pool=pool, num_classes=num_classes, device=device,
                             progress=False, scatter=scatter, max_scatter_bytes=max_scatter_bytes)
            stats = report.stats
            metrics: dict[str, dict[str, Any]] = {}
            for name in names:
                metrics[name] = dict(report.metrics[name])
                official = [m for m in OFFICIAL_LAYER_METRICS if m != "nc1_official" or "nc1" in metrics[name]]
                metrics[name].update(compute_metrics(stats[name], names=official))
                metrics[name]["scatter"] = report.info["scatter_per_layer"][name]
        if split == "train":
            train_means = {n: stats[n].means for n in names}
        own = {n: stats[n].means for n in names if stats[n].dim <= spectra_max_dim} if split == "train" else {}
        acc, raw_means, scatters = _ncc_pass(model, batches, names, mode, pool, train_means,
                                             align if split == "train" else [], num_classes, device, own)
        for index, name in enumerate(names):
            module = modules[name]
            rec: dict[str, Any] = {
                "epoch": epoch, "split": split, "layer": name, "index": index,
                "kind": type(module).__name__, "dim": stats[name].dim,
            }
            rec.update(metrics[name])
            rec["ncc_accuracy"] = acc[name]
            if name in raw_means:
                rec.update(_alignment_records(module, raw_means[name], num_classes))
            if name in scatters:
                rec.update(_spectra_metrics(scatters[name]))
            records.append(rec)
    spectra = []
    for n in align:
        w = modules[n].weight.detach()
        entry: dict[str, Any] = {"epoch": epoch, "layer": n, "index": names.index(n),
                                 "singular_values": weight_spectrum(w).tolist()}
        try:
            official = weight_singular_values_official(w)
            entry.update({"official_relative": official["relative"], "official_cumulative": official["cumulative"],
                          "weight_rank_99": weight_rank(w)})
        except UndefinedMetricError:
            pass
        spectra.append(entry)
    return records, spectra
