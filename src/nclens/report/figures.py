"""Figure primitives shared by every system: collapse per layer and over epochs, training curves, PNG output.

The functions take parsed log records — ``layers.jsonl`` (one record per epoch × split × layer with
metric columns, which every kind that measures layers writes) and ``history.jsonl`` — and return a
:class:`matplotlib.figure.Figure` (Agg backend, no display needed); :func:`save_figures` writes them
into the run folder's ``figures/``. Each system's ``figures.py`` draws its own figures with these.

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
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "fig_within_share_depth",
    "fig_nc1_epochs",
    "fig_training",
    "figure_png",
    "save_figures",
    "split_records",
    "layer_order",
    "by_epoch",
    "positive",
    "layer_xticks",
]

Records = Sequence[dict[str, Any]]


def split_records(records: Records, split: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("split") == split]


def layer_order(records: Records) -> list[str]:
    order: dict[str, int] = {}
    for r in records:
        order.setdefault(r["layer"], r.get("index", len(order)))
    return sorted(order, key=order.get)


def by_epoch(records: Records) -> dict[int, dict[str, dict[str, Any]]]:
    out: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        out[int(r["epoch"])][r["layer"]] = r
    return dict(sorted(out.items()))


def positive(values: list[Any]) -> list[float]:
    return [float(v) if v is not None and v > 0 else float("nan") for v in values]


def layer_xticks(ax: Any, layers: list[str]) -> None:
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=45 if len(layers) > 8 else 0, ha="right" if len(layers) > 8 else "center",
                       fontsize=8 if len(layers) > 12 else 9)


def fig_within_share_depth(records: Records, split: str = "train", metric: str = "within_share") -> Figure:
    """``metric`` (default Tr Σ_W/(Tr Σ_W + Tr Σ_B)) against layer depth, one line per measured epoch, log y."""
    recs = split_records(records, split)
    layers = layer_order(recs)
    epochs = by_epoch(recs)
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for i, (epoch, rows) in enumerate(epochs.items()):
        values = positive([rows.get(name, {}).get(metric) for name in layers])
        ax.plot(range(len(layers)), values, marker="o", ms=4, color=cmap(i / max(len(epochs) - 1, 1)),
                label=f"epoch {epoch}")
    ax.set_yscale("log")
    layer_xticks(ax, layers)
    ax.set_xlabel("layer (input of)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs depth ({split} data)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return fig


def fig_nc1_epochs(records: Records, split: str = "train", metric: str = "nc1") -> Figure:
    """``metric`` of every layer over the epochs (log scale), one line per layer coloured by depth."""
    recs = split_records(records, split)
    layers = layer_order(recs)
    epochs = by_epoch(recs)
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    cmap = plt.get_cmap("plasma")
    xs = list(epochs)
    for i, name in enumerate(layers):
        ys = positive([epochs[e].get(name, {}).get(metric) for e in xs])
        ax.plot(xs, ys, marker="o", ms=3, color=cmap(i / max(len(layers) - 1, 1) * 0.9), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per layer over training ({split} data)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(layers) > 8 else 1)
    return fig


def fig_training(history: Records) -> Figure:
    """Loss (log) and accuracy over epochs."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    xs = [r["epoch"] for r in history]
    for key, style in (("train_loss", "-"), ("test_loss", "--"), ("train_loss_running", ":")):
        if any(key in r for r in history):
            axes[0].plot(xs, positive([r.get(key) for r in history]), style, label=key)
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


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes (and close it)."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def save_figures(run: Any, figures: dict[str, Figure]) -> dict[str, Path]:
    """Render ``{name: Figure}`` into ``<run>/figures/<name>.png`` (atomic, through the run folder); returns paths."""
    return {name: run.write_png(f"figures/{name}.png", fig) for name, fig in figures.items()}
