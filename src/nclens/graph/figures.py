"""Figures and report tables of the graph runs (kinds ``gnn`` and ``gufm``), drawn from the run folder's files alone.

``gnn``: reads ``config.yaml`` (the seeds), ``seed_<s>/layers.json``, ``seed_<s>/history.jsonl``,
``seed_<s>/spectral.json``, ``seed_<s>/graphs.json`` and ``seeds.json``. ``gufm``: ``<family>/history.jsonl``
and ``<family>/condition.json``.

Example:
    >>> from nclens.graph.figures import depth_profile
    >>> recs = [{"split": "test", "stage": "out", "layer": l, "nc1": {"mean": 1.0 / (l + 1)}} for l in range(3)]
    >>> depth_profile([recs], "nc1")[0]
    [1.0, 0.5, 0.3333333333333333]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from nclens.graph.nc import mean_sd
from nclens.report.figures import save_figures
from nclens.runs.experiment import ReportContent
from nclens.runs.folder import RunFolder

__all__ = ["depth_profile", "gnn_figures", "gnn_report", "gnn_summary_text", "gufm_figures", "gufm_report",
           "LAYER_COLUMNS"]

#: Columns of the per-layer table (test graphs, block outputs), in order.
LAYER_COLUMNS = ("nc1", "nc1_ha", "nc1_trace", "nc2_etf", "nc2_of", "tw_ratio", "tw_pred", "tw_lower", "tw_upper",
                 "tb_ratio", "tb_pred", "tb_lower", "tb_upper")
HEAD_COLUMNS = ("nc2_etf_w1", "nc2_of_w1", "nc2_etf_w2", "nc2_of_w2", "nc3_w1", "nc3_etf_w1", "nc3_of_w1",
                "nc3_uncentred_w1", "nc3_w2", "nc3_etf_w2", "nc3_of_w2", "nc3_uncentred_w2", "nc3_etf_yhat",
                "nc3_of_yhat", "nc1_snr_w1", "nc1_snr_w2")


def _seeds(run: RunFolder) -> list[int]:
    record = run.config_record() or {}
    return [int(s) for s in record.get("seeds", [0])]


def _read(run: RunFolder, seed: int, name: str) -> Any:
    sub = RunFolder(run.file(f"seed_{seed}"), writer=False)
    if name.endswith(".jsonl"):
        return sub.read_jsonl(name)
    return sub.read_json(name) if sub.exists(name) else None


def _out_records(layers: dict[str, Any] | None, split: str = "test", stage: str = "out") -> list[dict[str, Any]]:
    if not layers:
        return []
    recs = [r for r in layers["records"] if r["split"] == split and r["stage"] == stage]
    return sorted(recs, key=lambda r: r["layer"])


def depth_profile(per_seed: list[list[dict[str, Any]]], key: str) -> list[list[float]]:
    """For each seed, the per-layer mean of ``key`` (NaN where absent)."""
    return [[(r.get(key) or {}).get("mean", math.nan) for r in recs] for recs in per_seed]


def _mean_sd(columns: list[list[float]]) -> tuple[list[float], list[float]]:
    """Per position, the mean and sample sd over the lists (seeds)."""
    stats = [mean_sd(values) for values in zip(*columns)]
    return [s["mean"] for s in stats], [s["sd"] if s["n"] else math.nan for s in stats]


def _log_errorbar(ax: Any, xs: list[int], mean: list[float], sd: list[float], **kwargs: Any) -> None:
    lower = [s if m - s > 0 else max(m - 1e-300, 0.0) for m, s in zip(mean, sd)]  # a log axis shows no bar below 0
    ax.errorbar(xs, mean, yerr=[lower, sd], marker="o", ms=3, capsize=2, **kwargs)


def _plot_spectral(ax: Any, spectral: list[dict[str, Any]], key: str) -> None:
    """``key`` of the spectral iterates per iteration (mean over seeds of the mean over graphs), both iterations."""
    for family, style in (("nclens", "-"), ("official", "--")):
        for method in (spectral[0].get(family) or {}) if spectral else {}:
            curves = [s[family][method] for s in spectral if (s.get(family) or {}).get(method)]
            mean, _ = _mean_sd([[r[key]["mean"] for r in c] for c in curves])
            ax.plot([r["iteration"] for r in curves[0]], mean, style, marker=".", label=f"{method} ({family})")


def fig_nc1_layers(per_seed: list[list[dict[str, Any]]], spectral: list[dict[str, Any]], title: str) -> Figure:
    """NC1 of H and H Â per layer (mean over seeds, bars ± sd over seeds — over graphs for one seed) and
    NC1 of the spectral iterates."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    depth = [r["layer"] for r in per_seed[0]]
    for key, label in (("nc1", "NC1 of H"), ("nc1_ha", "NC1 of HÂ")):
        if len(per_seed) > 1:
            mean, sd = _mean_sd(depth_profile(per_seed, key))
        else:
            mean = depth_profile(per_seed, key)[0]
            sd = [(r.get(key) or {}).get("std", 0.0) for r in per_seed[0]]
        _log_errorbar(axes[0], depth, mean, sd, label=label)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("GNN layer (0 = input)")
    axes[0].set_ylabel("NC1 (test graphs)")
    axes[0].set_title(title)
    axes[0].grid(True, which="both", alpha=0.3)
    axes[0].legend()
    _plot_spectral(axes[1], spectral, "nc1")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("power iteration")
    axes[1].set_ylabel("NC1 of the iterate")
    axes[1].set_title("spectral baselines")
    axes[1].grid(True, which="both", alpha=0.3)
    if axes[1].lines:
        axes[1].legend(fontsize=8)
    return fig


def fig_overlap(histories: dict[int, list[dict[str, Any]]], spectral: list[dict[str, Any]], final: float) -> Figure:
    """Test overlap per epoch (one line per seed) and the spectral iterates' overlap beside the GNN's."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    for seed, hist in histories.items():
        axes[0].plot([r["epoch"] for r in hist], [r.get("test_overlap") for r in hist], marker="o",
                     label=f"seed {seed}")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("test overlap")
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].set_title("GNN training")
    axes[0].grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    _plot_spectral(axes[1], spectral, "overlap")
    axes[1].axhline(final, color="k", ls=":", label="GNN (final)")
    axes[1].set_xlabel("power iteration")
    axes[1].set_ylabel("overlap")
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_title("spectral baselines vs GNN")
    axes[1].grid(True, alpha=0.3)
    axes[1].legend(fontsize=8)
    return fig


def fig_trace_ratios(per_seed: list[list[dict[str, Any]]]) -> Figure:
    """Measured Tr Σ_W and Tr Σ_B ratios per block with the point prediction and the singular-value bounds."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    for ax, tag, title in ((axes[0], "tw", "Tr Σ_W(Z)/Tr Σ_W(H)"), (axes[1], "tb", "Tr Σ_B(Z)/Tr Σ_B(H)")):
        recs = [[r for r in seed if r["layer"] >= 1] for seed in per_seed]
        layers = [r["layer"] for r in recs[0]]
        for suffix, style, label in (("ratio", "-o", "measured"), ("pred", "--", "T prediction"),
                                     ("lower", ":", "lower bound"), ("upper", ":", "upper bound")):
            mean, _ = _mean_sd(depth_profile(recs, f"{tag}_{suffix}"))
            ax.plot(layers, mean, style, ms=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("block")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def gnn_figures(run: RunFolder) -> dict[str, Path]:
    """``nc1_layers``, ``overlap`` and ``trace_ratios`` of a ``gnn`` run (whatever seeds have finished)."""
    seeds = _seeds(run)
    per_seed, spectral, histories = [], [], {}
    for seed in seeds:
        layers = _read(run, seed, "layers.json")
        if layers is None:
            continue
        per_seed.append(_out_records(layers))
        histories[seed] = _read(run, seed, "history.jsonl")
        spec = _read(run, seed, "spectral.json")
        if spec:
            spectral.append(spec)
    if not per_seed:
        raise FileNotFoundError(f"{str(run.path)!r} holds no finished seed (seed_<s>/layers.json)")
    record = run.config_record() or {}
    graph = record.get("graph", {})
    title = (f"{record.get('name', '')}: N={graph.get('num_nodes')}, C={graph.get('num_classes')}, "
             f"p={graph.get('p')}, q={graph.get('q')}")
    seeds_json = run.read_json("seeds.json") if run.exists("seeds.json") else []
    final = sum(r["test_overlap"] for r in seeds_json) / len(seeds_json) if seeds_json else math.nan
    figures = {"nc1_layers": fig_nc1_layers(per_seed, spectral, title),
               "overlap": fig_overlap(histories, spectral, final),
               "trace_ratios": fig_trace_ratios(per_seed)}
    return save_figures(run, figures)


def layer_table(run: RunFolder, split: str = "test") -> list[dict[str, Any]]:
    """Per layer: each column's mean over seeds of the per-seed mean over graphs (and ``nc1_sd``: sd over seeds,
    or over graphs for one seed)."""
    seeds = [s for s in _seeds(run) if _read(run, s, "layers.json") is not None]
    per_seed = [_out_records(_read(run, s, "layers.json"), split) for s in seeds]
    if not per_seed or not per_seed[0]:
        return []
    rows = []
    for i, rec in enumerate(per_seed[0]):
        row: dict[str, Any] = {"layer": rec["layer"]}
        for col in LAYER_COLUMNS:
            vals = [(seed[i].get(col) or {}).get("mean", math.nan) for seed in per_seed]
            if any(v is not None and math.isfinite(v) for v in vals):
                row[col] = mean_sd(vals)["mean"]
        vals = [(seed[i].get("nc1") or {}).get("mean", math.nan) for seed in per_seed]
        row["nc1_sd"] = mean_sd(vals)["sd"] if len(per_seed) > 1 else (rec.get("nc1") or {}).get("std")
        rows.append(row)
    return rows


def gnn_report(run: RunFolder) -> ReportContent:
    """Headline (overlap, NC1 first/last layer, spectral) and tables (per layer, head NC, seeds, edge counts)."""
    content = ReportContent(
        title="neural collapse in GNNs (SBM community detection)",
        notes=["Node NC per layer on the test graphs (Kothapalli, Tirer & Bruna 2023); values are means over seeds of "
               "per-seed means over graphs; nc1_sd is the sd over seeds (over graphs for one seed). "
               "Metric definitions: "
               "nclens metrics; OF = orthogonal frame (official tracker variants)."],
    )
    seeds_json = run.read_json("seeds.json") if run.exists("seeds.json") else []
    rows = layer_table(run)
    if seeds_json:
        ov = mean_sd([r["test_overlap"] for r in seeds_json])
        head = {"seeds": len(seeds_json), "test_overlap": ov["mean"], "test_overlap_sd_seeds": ov["sd"]}
        if rows:
            head["nc1_input"] = rows[0].get("nc1")
            head["nc1_last_layer"] = rows[-1].get("nc1")
        for key in seeds_json[0]:
            if key.startswith("spectral_") and key.endswith("_overlap"):
                head[key] = mean_sd([r.get(key) for r in seeds_json])["mean"]
        content.headline.append(head)
        content.tables["per seed"] = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in seeds_json]
    if rows:
        content.tables["per layer (test graphs, block outputs)"] = rows
    seeds = [s for s in _seeds(run) if _read(run, s, "layers.json") is not None]
    heads = [_out_records(_read(run, s, "layers.json"))[-1] for s in seeds]
    if heads:
        content.tables["head NC (last layer, W1/W2 of the final GraphConv; test graphs)"] = [
            {"metric": col, "mean": mean_sd([(h.get(col) or {}).get("mean", math.nan) for h in heads])["mean"],
             "sd_seeds": mean_sd([(h.get(col) or {}).get("mean", math.nan) for h in heads])["sd"]}
            for col in HEAD_COLUMNS if any(col in h for h in heads)
        ]
    graphs = _read(run, seeds[0], "graphs.json") if seeds else None
    if graphs:
        content.tables[f"edge counts (seed {seeds[0]})"] = [{"set": k, **v} for k, v in graphs.items()]
    return content


def gnn_summary_text(run: RunFolder) -> str:
    """What ``nclens run`` prints for a ``gnn`` run."""
    from nclens.core.console import format_table

    lines = []
    rows = layer_table(run)
    if rows:
        cols = ("nc1", "nc1_sd", "nc1_ha", "nc2_of", "tw_ratio", "tw_pred")
        table = {f"layer {r['layer']}": {k: r.get(k) for k in cols} for r in rows}
        lines.append(format_table(table, title="per layer (test graphs)").rstrip())
    seeds_json = run.read_json("seeds.json") if run.exists("seeds.json") else []
    if seeds_json:
        ov = mean_sd([r["test_overlap"] for r in seeds_json])
        n = len(seeds_json)
        lines.append(f"test overlap {ov['mean']:.4f} ± {ov['sd']:.4f} (sd over {n} seeds)" if n > 1 else
                     f"test overlap {ov['mean']:.4f} ± {seeds_json[0]['test_overlap_std']:.4f} (sd over test graphs)")
        for key in seeds_json[0]:
            if key.startswith("spectral_") and key.endswith("_overlap"):
                lines.append(f"{key}: {mean_sd([r.get(key) for r in seeds_json])['mean']:.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- gUFM
def _families(run: RunFolder) -> list[str]:
    record = run.config_record() or {}
    return [f for f in record.get("families", ["sbm-regular", "sbm"]) if (run.path / f / "history.jsonl").is_file()]


def gufm_figures(run: RunFolder) -> dict[str, Path]:
    """``gufm``: NC1 of H and the gradient norm against the epoch, per family (log–log)."""
    families = _families(run)
    if not families:
        raise FileNotFoundError(f"{str(run.path)!r} holds no gUFM history (<family>/history.jsonl)")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    for family in families:
        sub = RunFolder(run.file(family), writer=False)
        hist = [r for r in sub.read_jsonl("history.jsonl") if r["epoch"] > 0]
        cond = sub.read_json("condition.json") if sub.exists("condition.json") else {}
        label = f"{family} (condition {'holds' if cond.get('holds') else 'fails'})"
        axes[0].plot([r["epoch"] for r in hist], [max(r["nc1"], 1e-40) for r in hist], label=label)
        axes[1].plot([r["epoch"] for r in hist], [max(r["grad_norm"], 1e-40) for r in hist], label=label)
    for ax, ylabel in ((axes[0], "NC1(H), pooled over graphs"), (axes[1], "‖∇ objective‖")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    record = run.config_record() or {}
    graph = record.get("graph", {})
    fig.suptitle(f"gUFM, N={graph.get('num_nodes')}, C={graph.get('num_classes')}, p={graph.get('p')}, "
                 f"q={graph.get('q')}")
    return save_figures(run, {"gufm": fig})


def gufm_report(run: RunFolder) -> ReportContent:
    """Per family: the final values, the structural condition and the report-epoch table."""
    content = ReportContent(title="graph unconstrained feature model",
                            notes=["Exact collapse needs the structural condition (Kothapalli et al. 2023, Thm 3.1). "
                                   "A plateau is NC1 flat while the gradient norm falls to 0."])
    summary = (run.summary() or {}).get("results", {})
    for family in _families(run):
        sub = RunFolder(run.file(family), writer=False)
        hist = sub.read_jsonl("history.jsonl")
        cond = sub.read_json("condition.json") if sub.exists("condition.json") else {}
        last = hist[-1]
        content.headline.append({"family": family, "epoch": last["epoch"], "nc1": last["nc1"], "nc1_ha": last["nc1_ha"],
                                 "grad_norm": last["grad_norm"], "condition": "holds" if cond.get("holds") else "fails",
                                 "gap": cond.get("gap")})
        rows = (summary.get(family) or {}).get("report_epochs") or []
        if rows:
            content.tables[f"{family}: report epochs"] = rows
        step = max(1, len(hist) // 12)
        content.tables[f"{family}: history"] = [
            {k: r.get(k) for k in ("epoch", "loss", "grad_norm", "nc1", "nc1_ha", "nc2_of_w2", "nc3_etf_yhat")}
            for r in hist[::step] + ([hist[-1]] if (len(hist) - 1) % step else [])
        ]
    return content
