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
from nclens.report.nc_figures import fig_nc_over_epochs
from nclens.runs.experiment import ReportContent
from nclens.runs.folder import RunFolder

__all__ = ["fig_alignment", "fig_ncc_accuracy", "fig_spectra", "fig_fixed_etf", "fig_seeds_depth", "write_figures",
           "report_content", "headline", "TABLE_COLUMNS", "SEED_TABLE_COLUMNS"]

#: Per-layer columns of the final tables, in order.
TABLE_COLUMNS = (
    "layer", "dim", "within_share", "nc1", "nc1_trace", "cdnv", "nc2_etf", "nc2_equinorm",
    "effective_rank", "ncc_accuracy", "subspace_alignment", "subspace_alignment_random", "assoc_memory_alignment",
    "nc3_duality", "within_share_classavg", "nc1_official", "within_stable_rank", "scatter",
)

#: Metrics of the over-seeds table (each as mean ± sd).
SEED_TABLE_COLUMNS = ("within_share", "within_share_classavg", "nc1", "ncc_accuracy", "subspace_alignment",
                      "subspace_alignment_random")


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


def fig_seeds_depth(table: Records, metrics: tuple[str, ...] = ("within_share", "nc1"),
                    title: str = "over seeds") -> Figure:
    """Per-layer mean ± sd over seeds (``seeds.json`` rows) of ``metrics``, log y, one panel each;
    ``subspace_alignment`` is drawn beside its random-subspace baseline on a linear axis."""
    layers = [r["layer"] for r in table]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), constrained_layout=True,
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        pairs = [(metric, "-o")] + ([("subspace_alignment_random", "--s")] if metric == "subspace_alignment" else [])
        for name, style in pairs:
            mean = [r.get(f"{name}_mean") for r in table]
            sd = [r.get(f"{name}_sd") or 0.0 for r in table]
            xs = [i for i, m in enumerate(mean) if m is not None]
            ax.errorbar(xs, [mean[i] for i in xs], yerr=[sd[i] for i in xs], fmt=style, capsize=3, ms=4, label=name)
        if metric != "subspace_alignment" and all((r.get(f"{metric}_mean") or 0) > 0 for r in table):
            ax.set_yscale("log")
        layer_xticks(ax, layers)
        ax.set_title(f"{metric} ({title})")
        ax.set_xlabel("layer (input of)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _seed_figures(run: RunFolder) -> dict[str, Figure]:
    summary = run.read_json("seeds.json")
    figures: dict[str, Figure] = {}
    train = summary.get("layers", {}).get("train", [])
    if train:
        figures["seeds_depth"] = fig_seeds_depth(train, ("within_share", "nc1"), f"{len(summary['seeds'])} seeds")
        if any(r.get("subspace_alignment_mean") is not None for r in train):
            figures["seeds_alignment"] = fig_seeds_depth(train, ("subspace_alignment", "ncc_accuracy"),
                                                         f"{len(summary['seeds'])} seeds")
    fixed = summary.get("fixed_etf")
    if fixed:
        rows = [{"num_trained": r["num_trained"], "train_accuracy": r.get("train_accuracy_mean"),
                 "test_accuracy": r.get("test_accuracy_mean")} for r in fixed]
        figures["fixed_etf"] = fig_fixed_etf(rows)
    return figures


def write_figures(run: RunFolder) -> dict[str, Path]:
    """Render every figure the run folder's logs allow into ``figures/``; returns {name: path}.

    Raises:
        FileNotFoundError: the folder holds neither ``layers.jsonl`` nor ``fixed_etf.json`` nor ``seeds.json``.
    """
    if run.exists("seeds.json"):
        return save_figures(run, _seed_figures(run))
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
        try:  # NC1–NC4 over epochs in four panels (Papyan et al. Fig. 6–9), one line per layer
            figures["nc_over_epochs"] = fig_nc_over_epochs(layers, split="train")
        except ValueError:  # no train records carry any of the four panels' metrics
            pass
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


def _pm(mean: Any, sd: Any) -> str | None:
    return None if mean is None else f"{mean:.4g} ± {sd or 0.0:.2g}"


def seeds_report(summary: dict[str, Any]) -> ReportContent:
    """report.html content of a several-seeds run (``seeds.json``): mean ± sd tables, ρ per seed, fixed ETFs."""
    seeds = summary.get("seeds", [])
    content = ReportContent(title=f"intermediate neural collapse over {len(seeds)} seeds",
                            notes=["Mean ± population sd over seeds, at the last measured epoch; ρ is Spearman's "
                                   "rank correlation of the within-class share with the layer index (per seed)."])
    head = {"seeds": ", ".join(str(s) for s in seeds)}
    head.update({k: v for k, v in summary.get("accuracy", {}).items()})
    content.headline.append(head)
    for split, table in summary.get("layers", {}).items():
        content.tables[f"per-layer collapse, mean ± sd over seeds ({split} data)"] = [
            {"layer": r["layer"], "dim": r.get("dim"),
             **{c: _pm(r.get(f"{c}_mean"), r.get(f"{c}_sd")) for c in SEED_TABLE_COLUMNS if f"{c}_mean" in r}}
            for r in table
        ]
    if summary.get("trend"):
        content.tables["depth trend of the within-class share (train data, last epoch)"] = [
            {k: r.get(k) for k in ("seed", "metric", "rho", "p", "first", "last", "ratio_first_last")}
            for r in summary["trend"]
        ]
    if summary.get("fixed_etf"):
        content.tables["fixed-ETF layers, mean ± sd over seeds"] = [
            {"num_fixed": r["num_fixed"], "num_trained": r.get("num_trained"),
             "train_accuracy": _pm(r.get("train_accuracy_mean"), r.get("train_accuracy_sd")),
             "test_accuracy": _pm(r.get("test_accuracy_mean"), r.get("test_accuracy_sd"))}
            for r in summary["fixed_etf"]
        ]
    return content


def report_content(run: RunFolder) -> ReportContent:
    """Headline numbers and tables for report.html."""
    if run.exists("seeds.json"):
        return seeds_report(run.read_json("seeds.json"))
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
