"""Figures and report tables of an intermediate-NC run, drawn from the run folder's files alone.

Reads ``layers.jsonl``, ``history.jsonl``, ``spectra.jsonl`` and ``fixed_etf.json``.

Example:
    >>> from nclens.intermediate.figures import fig_fixed_etf
    >>> rows = [{"num_trained": n, "train_accuracy": 1.0, "test_accuracy": 0.9} for n in (1, 2)]
    >>> len(fig_fixed_etf(rows).axes)
    1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from nclens.report.figures import (
    Records,
    by_epoch,
    fig_nc1_epochs,
    fig_training,
    fig_within_share_depth,
    layer_order,
    layer_xticks,
    save_figures,
    split_records,
)
from nclens.runs.experiment import ReportContent
from nclens.runs.folder import RunFolder

__all__ = ["fig_alignment", "fig_ncc_accuracy", "fig_spectra", "fig_fixed_etf", "write_figures", "report_content",
           "headline", "TABLE_COLUMNS"]

#: Per-layer columns of the final tables, in order.
TABLE_COLUMNS = (
    "layer", "dim", "within_share", "nc1", "nc1_trace", "cdnv", "nc2_etf", "nc2_equinorm",
    "effective_rank", "ncc_accuracy", "subspace_alignment", "assoc_memory_alignment", "nc3_duality",
)


def fig_alignment(records: Records) -> Figure:
    """subspace_alignment and assoc_memory_alignment per layer, one line per measured epoch."""
    recs = [r for r in split_records(records, "train") if r.get("subspace_alignment") is not None]
    layers = layer_order(recs)
    epochs = by_epoch(recs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, metric in zip(axes, ("subspace_alignment", "assoc_memory_alignment")):
        for i, (epoch, rows) in enumerate(epochs.items()):
            values = [rows.get(n, {}).get(metric) for n in layers]
            values = [float("nan") if v is None else v for v in values]
            ax.plot(range(len(layers)), values, marker="o", ms=4, color=cmap(i / max(len(epochs) - 1, 1)),
                    label=f"epoch {epoch}")
        layer_xticks(ax, layers)
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
        recs = split_records(records, split)
        if not recs:
            continue
        layers = layer_order(recs)
        last = by_epoch(recs)
        final_epoch = max(last)
        values = [last[final_epoch].get(n, {}).get("ncc_accuracy") for n in layers]
        ax.plot(range(len(layers)), [float("nan") if v is None else v for v in values], style,
                label=f"{split} (epoch {final_epoch})")
        layer_xticks(ax, layers)
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


def write_figures(run: RunFolder) -> dict[str, Path]:
    """Render every figure the run folder's logs allow into ``figures/``; returns {name: path}.

    Raises:
        FileNotFoundError: the folder holds neither ``layers.jsonl`` nor ``fixed_etf.json``.
    """
    layers = run.read_jsonl("layers.jsonl")
    history = run.read_jsonl("history.jsonl")
    spectra = run.read_jsonl("spectra.jsonl")
    fixed = run.read_json("fixed_etf.json")["rows"] if run.exists("fixed_etf.json") else []
    if not layers and not fixed:
        raise FileNotFoundError(f"{str(run.path)!r} holds no intermediate-NC results (layers.jsonl, fixed_etf.json)")
    figures: dict[str, Figure] = {}
    if layers:
        figures["within_share_depth"] = fig_within_share_depth(layers)
        if split_records(layers, "test"):
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
    return save_figures(run, figures)


def _final(records: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    recs = [r for r in records if r.get("split") == split]
    if not recs:
        return []
    last = max(r["epoch"] for r in recs)
    return sorted([r for r in recs if r["epoch"] == last], key=lambda r: r.get("index", 0))


def headline(records: list[dict[str, Any]], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's key numbers: final accuracies, within_share first/last ratio, top-layer alignments."""
    out: dict[str, Any] = {}
    if history:
        out["epochs"] = history[-1].get("epoch")
        out["train_accuracy"] = history[-1].get("train_accuracy")
        out["test_accuracy"] = history[-1].get("test_accuracy")
    final = _final(records, "train")
    if final:
        first, last = final[0].get("within_share"), final[-1].get("within_share")
        out["within_share_first"] = first
        out["within_share_last"] = last
        out["within_share_ratio"] = first / last if first and last else None
        aligned = [r for r in final if r.get("subspace_alignment") is not None]
        if aligned:
            out["subspace_alignment_last"] = aligned[-1]["subspace_alignment"]
            out["subspace_alignment_first"] = aligned[0]["subspace_alignment"]
    return out


def report_content(run: RunFolder) -> ReportContent:
    """Headline numbers and tables for report.html."""
    records = run.read_jsonl("layers.jsonl")
    history = run.read_jsonl("history.jsonl")
    content = ReportContent(title="intermediate neural collapse",
                            notes=["Metrics are measured on each layer's input (Rangamani et al., ICML 2023); "
                                   "definitions in the metric registry (nclens metrics)."])
    head = headline(records, history)
    if head:
        content.headline.append(head)
    for split in ("train", "test"):
        final = _final(records, split)
        if final:
            columns = [c for c in TABLE_COLUMNS if any(c in r for r in final)]
            content.tables[f"per-layer collapse at epoch {final[0]['epoch']} ({split} data)"] = [
                {c: r.get(c) for c in columns} for r in final
            ]
    if run.exists("fixed_etf.json"):
        fixed = run.read_json("fixed_etf.json")
        cols = ["num_fixed", "num_trained", "train_accuracy", "test_accuracy", "within_share_last"]
        content.tables[f"fixed-ETF layers ({fixed.get('epochs')} epochs each)"] = [
            {c: r.get(c) for c in cols} for r in fixed.get("rows", [])
        ]
    if history:
        step = max(1, len(history) // 12)
        picked = history[::step] + ([history[-1]] if history[-1] not in history[::step] else [])
        cols = [c for c in ("epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
                if any(c in r for r in picked)]
        content.tables["training history"] = [{c: r.get(c) for c in cols} for r in picked]
    return content
