"""Figures and report tables of an OOD-control run, drawn from the run folder's files alone.

Reads ``cells.jsonl`` (the per-layer rows of every job) and ``correlations.json``.

* ``nc1_vs_detection_transfer`` — AUROC, headline and full-split transfer against NC1 (log scale):
  one small point per seed, a large one per (variant, α, layer) mean ± std;
* ``variants_bars`` — NC1, AUROC, FPR95 and transfer per (variant, α, layer);
* ``layers`` (per-layer runs) — NC1, FPR95 and transfer error against depth, one line per variant:
  the paper's Fig. 1 view, inside each network.

Example:
    >>> rows = [{"variant": "baseline", "alpha": 0.0, "seed": 0, "layer": "encoder", "depth": 0, "nc1": 0.1,
    ...          "auroc": 0.9, "fpr95": 0.3, "transfer_acc": 0.8, "transfer_acc_full": 0.9}]
    >>> len(fig_layers(rows).axes)
    3
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nclens.ood.analysis import label, summarise  # noqa: E402
from nclens.ood.config import VARIANTS  # noqa: E402
from nclens.report.figures import save_figures  # noqa: E402
from nclens.runs.experiment import ReportContent  # noqa: E402
from nclens.runs.folder import RunFolder  # noqa: E402

__all__ = ["fig_nc1_scatter", "fig_variants", "fig_layers", "write_figures", "report_content", "summary_table",
           "MAIN_LAYERS"]

MAIN_LAYERS = ("encoder", "projector")
_KEYS = ("nc1", "auroc", "fpr95", "dterr", "transfer_acc", "transfer_acc_full", "nc4_bias", "id_head_acc")
_MARKERS = {"encoder": "o", "projector": "s", "projector_l2": "D"}


def _num(value: Any) -> float:
    """A JSON number (NaN is written as null)."""
    return float("nan") if value is None else float(value)


def _main(rows: list[dict[str, Any]], l2: bool = False) -> list[dict[str, Any]]:
    """The encoder/projector rows (and projector_l2 with ``l2``); every row for a frozen network (no such layers)."""
    keep = (*MAIN_LAYERS, "projector_l2") if l2 else MAIN_LAYERS
    return [r for r in rows if r["layer"] in keep] or rows


def _rows(run: RunFolder) -> list[dict[str, Any]]:
    return [r for cell in run.read_jsonl("cells.jsonl") for r in cell["rows"]]


def _colours(summary: list[dict[str, Any]]) -> dict[tuple[str, Any], Any]:
    base = {"baseline": "tab:gray", "entropy": "Blues", "projector": "tab:red", "both": "Purples",
            "frozen": "tab:green"}
    out: dict[tuple[str, Any], Any] = {}
    for variant in dict.fromkeys([*VARIANTS, *(s["variant"] for s in summary)]):
        alphas = sorted({s["alpha"] for s in summary if s["variant"] == variant}, key=lambda a: -1 if a is None else a)
        for i, alpha in enumerate(alphas):
            if base.get(variant, "k") in ("Blues", "Purples"):
                out[(variant, alpha)] = matplotlib.colormaps[base[variant]](0.45 + 0.5 * (i + 1) / (len(alphas) + 1))
            else:
                out[(variant, alpha)] = base.get(variant, "k")
    return out


def fig_nc1_scatter(rows: list[dict[str, Any]], corr: dict[str, Any] | None = None) -> Figure:
    """AUROC / transfer against NC1 per seed and per (variant, α, layer) mean (encoder and projector rows)."""
    rows = _main(rows)
    summary = summarise(rows, _KEYS)
    colours = _colours(summary)
    panels = (("auroc", "OOD detection AUROC (mean over OOD sets)"), ("transfer_acc", "transfer accuracy (headline)"),
              ("transfer_acc_full", "transfer accuracy (full split)"))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), constrained_layout=True)
    for ax, (key, title) in zip(axes, panels):
        for r in rows:
            if r.get(key) is not None:
                ax.scatter(r["nc1"], r[key], color=colours.get((r["variant"], r["alpha"]), "k"),
                           marker=_MARKERS.get(r["layer"], "o"), alpha=0.35, s=20)
        for s in summary:
            if np.isfinite(s[key]):
                ax.errorbar(s["nc1"], s[key], xerr=s["nc1_std"], yerr=s[f"{key}_std"],
                            fmt=_MARKERS.get(s["layer"], "o"),
                            color=colours[(s["variant"], s["alpha"])], ms=8, mec="k", capsize=2, label=label(s))
        c = (corr or {}).get(key, {})
        ax.set_xscale("log")
        ax.set_xlabel("NC1 = Tr(Σ_W Σ_B⁺)/K (lower = more collapse)")
        ax.set_ylabel(title)
        ax.set_title(f"r(NC1, ·) = {_num(c.get('r')):+.2f} (p = {_num(c.get('p')):.2g})", fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    return fig


def fig_variants(rows: list[dict[str, Any]]) -> Figure:
    """Bars of NC1, AUROC, FPR95 and transfer per (variant, α, layer) (mean ± std over seeds)."""
    summary = summarise(_main(rows, l2=True), _KEYS)
    colours = _colours(summary)
    keys = ("nc1", "auroc", "fpr95", "transfer_acc", "transfer_acc_full")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.4), constrained_layout=True)
    x = np.arange(len(summary))
    for ax, key in zip(axes, keys):
        vals = [s[key] for s in summary]
        errs = [s[f"{key}_std"] for s in summary]
        bars = ax.bar(x, vals, yerr=errs, color=[colours[(s["variant"], s["alpha"])] for s in summary],
                      edgecolor="k", capsize=2)
        for bar, s in zip(bars, summary):
            if s["layer"] != "encoder":
                bar.set_hatch("//" if s["layer"] == "projector" else "..")
        ax.set_xticks(x, [label(s) for s in summary], fontsize=7, rotation=40, ha="right")
        ax.set_title(key)
        if key == "nc1":
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
    return fig


def fig_layers(rows: list[dict[str, Any]]) -> Figure:
    """NC1, FPR95 and transfer error against depth, per (variant, α) (mean over seeds)."""
    rows = [r for r in rows if r["layer"] != "projector_l2"]
    summary = summarise(rows, _KEYS)
    colours = _colours(summary)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), constrained_layout=True)
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for s in summary:
        groups.setdefault((s["variant"], s["alpha"]), []).append(s)
    for (variant, alpha), ss in groups.items():
        ss = sorted(ss, key=lambda s: s["depth"])
        depth = [s["depth"] for s in ss]
        name = label({"variant": variant, "alpha": alpha, "layer": ""}, layer=False)
        for ax, (key, f) in zip(axes, (("nc1", lambda v: v), ("fpr95", lambda v: v),
                                       ("transfer_acc", lambda v: 1.0 - v))):
            ax.plot(depth, [f(s[key]) for s in ss], marker="o", color=colours[(variant, alpha)], label=name)
    for ax, title in zip(axes, ("NC1 (log)", "FPR95 (detection error)", "transfer error (1 − accuracy)")):
        ax.set_title(title)
        ax.set_xlabel("layer (depth index: blocks/stages, encoder, projector)")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    return fig


def write_figures(run: RunFolder) -> dict[str, Path]:
    """Draw every figure of ``run`` into ``figures/``."""
    rows = _rows(run)
    if not rows:
        return {}
    corr = run.read_json("correlations.json") if run.exists("correlations.json") else {}
    figures = {"nc1_vs_detection_transfer": fig_nc1_scatter(rows, corr.get("over_all_points")),
               "variants_bars": fig_variants(rows)}
    if len({r["layer"] for r in rows}) > 3:
        figures["layers"] = fig_layers(rows)
    return save_figures(run, figures)


def _table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in summarise(rows, _KEYS):
        entry: dict[str, Any] = {"variant / layer": label(s), "seeds": s["seeds"]}
        for key in ("nc1", "nc4_bias", "auroc", "fpr95", "dterr", "transfer_acc", "transfer_acc_full", "id_head_acc"):
            if np.isfinite(s[key]):
                entry[key] = f"{s[key]:.4g} ± {s[key + '_std']:.2g}"
        out.append(entry)
    return out


def _corr_rows(corr: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for scope in ("over_variant_layer_means", "over_all_points"):
        c = corr.get(scope) or {}
        entry: dict[str, Any] = {"scope": scope, "n": c.get("n_points")}
        for key in ("auroc", "fpr95", "transfer_acc", "transfer_err"):
            if key in c:
                entry[f"r(NC1, {key})"] = f"{_num(c[key]['r']):+.2f} (p={_num(c[key]['p']):.2g})"
        out.append(entry)
    layers = (corr.get("across_layers") or {}).get("summary") or {}
    if layers:
        entry = {"scope": "across the layers of each network (mean r ± sd; agreeing signs)",
                 "n": next(iter(layers.values()))["n_networks"]}
        for key, v in layers.items():
            entry[f"r(NC1, {key})"] = (f"{_num(v['mean_r']):+.2f} ± {_num(v['sd_r']):.2f} "
                                       f"({v['n_agree']}/{v['n_networks']})"
                                       + (f"; paper {v['paper_r']:+.2f}" if v.get("paper_r") is not None else ""))
        out.append(entry)
    return out


def report_content(run: RunFolder) -> ReportContent:
    """Headline, the summary table and the correlations for report.html."""
    rows = _rows(run)
    corr = run.read_json("correlations.json") if run.exists("correlations.json") else {}
    main = _main(rows, l2=True)
    headline = {"jobs": len(run.read_jsonl("cells.jsonl")), "layers": len({r["layer"] for r in rows})}
    return ReportContent(
        title="NC control for OOD detection and transfer (Harun, Gallardo & Kanan, ICML 2025)",
        headline=[headline],
        tables={"mean ± std over seeds": _table(main), "correlations with NC1": _corr_rows(corr),
                "every layer (mean ± std over seeds)": _table(rows) if len({r["layer"] for r in rows}) > 3 else []},
        notes=["projector = the projector's output before L2 normalisation (where the paper measures collapse); "
               "projector_l2 = after it. nc4_bias = ‖Wμ_G + b‖ (official NC4). dterr, fpr95 of the headline score."],
    )


def summary_table(run: RunFolder) -> str:
    """The summary and correlation tables as plain text (what ``nclens run`` prints at the end)."""
    from nclens.core.console import format_table

    rows = _main(_rows(run), l2=True)
    if not rows:
        return ""
    table = {t.pop("variant / layer"): t for t in _table(rows)}
    corr = run.read_json("correlations.json") if run.exists("correlations.json") else {}
    parts = [format_table(table, title="NC control for OOD: mean ± std over seeds",
                          row_header="variant / layer").rstrip()]
    corr_rows = {r.pop("scope"): r for r in _corr_rows(corr)}
    if corr_rows:
        parts.append(format_table(corr_rows, title="correlations with NC1", row_header="scope").rstrip())
    return "\n".join(parts)
