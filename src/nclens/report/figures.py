"""Matplotlib figures of a run folder: collapse per layer, over epochs, alignment and spectra.

Every function takes the parsed log records (``layers.jsonl``, ``history.jsonl``, ``spectra.jsonl``,
``fixed_etf.json``) and returns a :class:`matplotlib.figure.Figure`; :func:`write_figures` renders
them all into ``RUN_DIR/figures/*.png`` (atomic writes, Agg backend, no display needed).

Example:
    >>> from nclens.report.figures import fig_within_share_depth
    >>> recs = [{"epoch": e, "split": "train", "layer": f"fc{i}", "index": i, "within_share": 0.5 / (1 + e * i)}
    ...         for e in (0, 10) for i in range(3)]
    >>> fig = fig_within_share_depth(recs)
    >>> len(fig.axes[0].lines)
    2
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nclens.core.io import atomic_write_bytes, read_json, read_jsonl  # noqa: E402

__all__ = [
    "fig_within_share_depth",
    "fig_nc1_epochs",
    "fig_alignment",
    "fig_ncc_accuracy",
    "fig_spectra",
    "fig_training",
    "fig_fixed_etf",
    "figure_png",
    "write_figures",
]

Records = Sequence[dict[str, Any]]


def _split(records: Records, split: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("split") == split]


def _layer_order(records: Records) -> list[str]:
    order: dict[str, int] = {}
    for r in records:
        order.setdefault(r["layer"], r.get("index", len(order)))
    return sorted(order, key=order.get)


def _by_epoch(records: Records) -> dict[int, dict[str, dict[str, Any]]]:
    out: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        out[int(r["epoch"])][r["layer"]] = r
    return dict(sorted(out.items()))


def _positive(values: list[Any]) -> list[float]:
    return [float(v) if v is not None and v > 0 else float("nan") for v in values]


def _xticks(ax: Any, layers: list[str]) -> None:
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=45 if len(layers) > 8 else 0, ha="right" if len(layers) > 8 else "center",
                       fontsize=8 if len(layers) > 12 else 9)


def fig_within_share_depth(records: Records, split: str = "train", metric: str = "within_share") -> Figure:
    """``metric`` (default Tr Σ_W/(Tr Σ_W + Tr Σ_B)) against layer depth, one line per measured epoch, log y."""
    recs = _split(records, split)
    layers = _layer_order(recs)
    epochs = _by_epoch(recs)
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for i, (epoch, rows) in enumerate(epochs.items()):
        values = _positive([rows.get(name, {}).get(metric) for name in layers])
        ax.plot(range(len(layers)), values, marker="o", ms=4, color=cmap(i / max(len(epochs) - 1, 1)),
                label=f"epoch {epoch}")
    ax.set_yscale("log")
    _xticks(ax, layers)
    ax.set_xlabel("layer (input of)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs depth ({split} data)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def fig_nc1_epochs(records: Records, split: str = "train", metric: str = "nc1") -> Figure:
    """``metric`` of every layer over the epochs (log scale), one line per layer coloured by depth."""
    recs = _split(records, split)
    layers = _layer_order(recs)
    epochs = _by_epoch(recs)
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("plasma")
    xs = list(epochs)
    for i, name in enumerate(layers):
        ys = _positive([epochs[e].get(name, {}).get(metric) for e in xs])
        ax.plot(xs, ys, marker="o", ms=3, color=cmap(i / max(len(layers) - 1, 1) * 0.9), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per layer over training ({split} data)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(layers) > 8 else 1)
    return fig


def fig_alignment(records: Records) -> Figure:
    """subspace_alignment and assoc_memory_alignment per layer, one line per measured epoch."""
    recs = [r for r in _split(records, "train") if r.get("subspace_alignment") is not None]
    layers = _layer_order(recs)
    epochs = _by_epoch(recs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, metric in zip(axes, ("subspace_alignment", "assoc_memory_alignment")):
        for i, (epoch, rows) in enumerate(epochs.items()):
            values = [rows.get(n, {}).get(metric) for n in layers]
            values = [float("nan") if v is None else v for v in values]
            ax.plot(range(len(layers)), values, marker="o", ms=4, color=cmap(i / max(len(epochs) - 1, 1)),
                    label=f"epoch {epoch}")
        _xticks(ax, layers)
        ax.set_ylim(0, 1.02)
        ax.set_title(metric)
        ax.set_xlabel("layer")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("alignment (1 = aligned)")
    axes[1].legend(fontsize=8, ncol=2)
    return fig


def fig_ncc_accuracy(records: Records) -> Figure:
    """Nearest-class-mean accuracy per layer at the last measured epoch (train and test data)."""
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for split, style in (("train", "-o"), ("test", "--s")):
        recs = _split(records, split)
        if not recs:
            continue
        layers = _layer_order(recs)
        last = _by_epoch(recs)
        final_epoch = max(last)
        values = [last[final_epoch].get(n, {}).get("ncc_accuracy") for n in layers]
        ax.plot(range(len(layers)), [float("nan") if v is None else v for v in values], style,
                label=f"{split} (epoch {final_epoch})")
        _xticks(ax, layers)
    ax.set_ylabel("NCC accuracy")
    ax.set_xlabel("layer (input of)")
    ax.set_title("nearest-class-mean accuracy per layer")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def fig_spectra(spectra: Records, epoch: int | None = None) -> Figure:
    """Normalised singular values σ_i/σ_1 of each measured weight at ``epoch`` (default: the last)."""
    if not spectra:
        raise ValueError("no spectra records")
    epoch = max(int(r["epoch"]) for r in spectra) if epoch is None else epoch
    rows = sorted([r for r in spectra if int(r["epoch"]) == epoch], key=lambda r: r.get("index", 0))
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("plasma")
    for i, r in enumerate(rows):
        s = [float(v) for v in r["singular_values"]]
        top = s[0] if s and s[0] > 0 else 1.0
        ax.plot(range(1, len(s) + 1), [v / top if v > 0 else float("nan") for v in s],
                color=cmap(i / max(len(rows) - 1, 1) * 0.9), label=r["layer"], lw=1.3)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("index i")
    ax.set_ylabel("σ_i / σ_1")
    ax.set_title(f"weight singular spectra (epoch {epoch})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(rows) > 8 else 1)
    return fig


def fig_training(history: Records) -> Figure:
    """Loss (log) and accuracy over epochs."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    xs = [r["epoch"] for r in history]
    for key, style in (("train_loss", "-"), ("test_loss", "--"), ("train_loss_running", ":")):
        if any(key in r for r in history):
            axes[0].plot(xs, _positive([r.get(key) for r in history]), style, label=key)
    axes[0].set_yscale("log")
    axes[0].set_title("loss")
    for key, style in (("train_accuracy", "-"), ("test_accuracy", "--")):
        if any(key in r for r in history):
            axes[1].plot(xs, [r.get(key, float("nan")) for r in history], style, label=key)
    axes[1].set_title("accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def fig_fixed_etf(rows: Records) -> Figure:
    """Train/test accuracy against the number of trained layers (the rest fixed to ETF-like matrices)."""
    rows = sorted(rows, key=lambda r: r["num_trained"])
    fig, ax = plt.subplots(figsize=(6, 3.8), constrained_layout=True)
    xs = [r["num_trained"] for r in rows]
    ax.plot(xs, [r["train_accuracy"] for r in rows], "-o", label="train")
    ax.plot(xs, [r["test_accuracy"] for r in rows], "--s", label="test")
    ax.set_xlabel("number of trained Linear layers (the others fixed to ETFs)")
    ax.set_ylabel("accuracy")
    ax.set_xticks(xs)
    ax.set_title("fixed-ETF layers")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes (and close it)."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def write_figures(run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Render every figure the run folder's logs allow into ``run_dir/figures/``; returns {name: path}.

    Raises:
        FileNotFoundError: ``run_dir`` holds neither ``layers.jsonl`` nor ``fixed_etf.json``.
    """
    run = Path(run_dir)
    layers = read_jsonl(run / "layers.jsonl")
    history = read_jsonl(run / "history.jsonl")
    spectra = read_jsonl(run / "spectra.jsonl")
    fixed = read_json(run / "fixed_etf.json")["rows"] if (run / "fixed_etf.json").is_file() else []
    if not layers and not fixed:
        raise FileNotFoundError(f"{str(run)!r} is not a run folder: no layers.jsonl or fixed_etf.json")
    figures: dict[str, Figure] = {}
    if layers:
        figures["within_share_depth"] = fig_within_share_depth(layers)
        if _split(layers, "test"):
            figures["within_share_depth_test"] = fig_within_share_depth(layers, split="test")
        figures["nc1_epochs"] = fig_nc1_epochs(layers)
        if any(r.get("subspace_alignment") is not None for r in layers):
            figures["alignment"] = fig_alignment(layers)
        figures["ncc_accuracy"] = fig_ncc_accuracy(layers)
    if spectra:
        figures["spectra"] = fig_spectra(spectra)
    if history:
        figures["training"] = fig_training(history)
    if fixed:
        figures["fixed_etf"] = fig_fixed_etf(fixed)
    paths = {}
    for name, fig in figures.items():
        paths[name] = atomic_write_bytes(run / "figures" / f"{name}.png", figure_png(fig))
    return paths
