"""Figures and report tables of the multi-label runs, drawn from the run folder's files alone.

``multilabel`` runs: reads ``<loss>/<variant>/seed<s>/nc.jsonl``, ``table.csv``-equivalent results in
``summary.json``, ``theory.json``; draws ``mlab_nc`` (MLab NC over epochs, mean over seeds with the
min–max band), ``tagwise_scale`` (c_2 over epochs against the UFM: the c_2 implied by the measured
singleton gap, and the matching UFM optimum when there is one) and ``scores`` (test IoU / mAP / F1,
mean ± sd). ``multilabel-ufm`` runs: reads ``solutions.jsonl``; draws ``ufm_restarts`` (objective and
c_m per restart against the theory) and, with within-multiplicity counts, ``ufm_by_count``.

Example:
    >>> from nclens.multilabel.figures import pm
    >>> pm(0.91234, 0.0123, 100)
    '91.23 ± 1.23'
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from nclens.report.figures import save_figures
from nclens.runs.experiment import ReportContent
from nclens.runs.folder import RunFolder

__all__ = ["pm", "load_curves", "fig_mlab_nc", "fig_tagwise_scale", "fig_scores", "write_training_figures",
           "training_report", "training_summary_text", "fig_ufm_restarts", "write_ufm_figures", "ufm_report",
           "ufm_summary_text"]

_NC_KEYS = ("nc1", "nc1_sets", "nc2_etf", "nc2_equinorm", "nc2_equiangular", "nc3_duality", "tagwise_residual_m2",
            "tagwise_angle_ratio", "tagwise_angle_li")
_COLORS = {"learned": "tab:blue", "fixed_etf": "tab:orange", "fixed_etf_dimk": "tab:green"}
_STYLES = {"pal": "-", "pal_normalized": "--"}


def pm(mean: Any, sd: Any, scale: float = 1.0, spec: str = ".2f") -> str:
    """``'mean ± sd'`` (scaled), ``'–'`` when missing."""
    if mean is None:
        return "–"
    return f"{format(scale * mean, spec)} ± {format(scale * (sd or 0.0), spec)}"


def load_curves(run: RunFolder) -> dict[tuple[str, str], dict[int, list[dict[str, Any]]]]:
    """``{(loss, variant): {seed: nc.jsonl records}}`` of every sub-run present."""
    out: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = defaultdict(dict)
    for path in sorted(run.path.glob("*/*/seed*/nc.jsonl")):
        loss, variant, seed = path.parts[-4], path.parts[-3], int(path.parts[-2].removeprefix("seed"))
        out[(loss, variant)][seed] = run.read_jsonl(str(path.relative_to(run.path)))
    return dict(out)


def _stack(curves: dict[int, list[dict[str, Any]]],
           key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """epochs, mean, min, max over seeds of ``key`` (positive finite values only)."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for recs in curves.values():
        for r in recs:
            v = r.get(key)
            if isinstance(v, (int, float)) and v == v and v > 0:
                by_epoch[int(r["epoch"])].append(float(v))
    epochs = sorted(by_epoch)
    return (epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs], [min(by_epoch[e]) for e in epochs],
            [max(by_epoch[e]) for e in epochs])


def fig_mlab_nc(curves: dict[tuple[str, str], dict[int, list[dict[str, Any]]]]) -> Figure:
    """MLab NC of the training features over epochs (log scale): one panel per metric, mean over seeds, min–max band."""
    keys = [k for k in _NC_KEYS if any(k in r for c in curves.values() for recs in c.values() for r in recs)]
    cols = 3
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.1 * rows), squeeze=False, constrained_layout=True)
    for ax, key in zip(axes.flat, keys):
        for (loss, variant), c in curves.items():
            ep, mean, lo, hi = _stack(c, key)
            if not ep:
                continue
            color = _COLORS.get(variant)
            ax.plot(ep, mean, _STYLES.get(loss, "-"), color=color, lw=1.4, label=f"{variant} ({loss})")
            if len(c) > 1:
                ax.fill_between(ep, lo, hi, color=color, alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if keys:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle("MLab NC of the training features (mean over seeds, band = min–max)")
    return fig


def fig_tagwise_scale(curves: dict[tuple[str, str], dict[int, list[dict[str, Any]]]], theory: dict[str, Any]) -> Figure:
    """c_2 over training per loss: measured (mean over seeds) vs the UFM (gap-implied c_2, matching UFM optimum)."""
    losses = sorted({loss for loss, _ in curves}, key=lambda s: (s != "pal", s))
    fig, axes = plt.subplots(1, max(len(losses), 1), figsize=(6.0 * max(len(losses), 1), 4.0), squeeze=False,
                             constrained_layout=True)
    for ax, loss in zip(axes.flat, losses):
        for (lo, variant), c in curves.items():
            if lo != loss:
                continue
            color = _COLORS.get(variant)
            ep, mean, low, high = _stack(c, "tagwise_scale_m2")
            if ep:
                ax.plot(ep, mean, "-o", ms=3, color=color, label=f"{variant}: measured c_2")
                ax.fill_between(ep, low, high, color=color, alpha=0.15, lw=0)
            ep, mean, _, _ = _stack(c, "c2_gap_implied")
            if ep:
                ax.plot(ep, mean, ":", color=color, lw=1.6, label=f"{variant}: UFM c_2 from the measured δ_1")
            ref = (theory.get("c2") or {}).get(loss, {}).get(variant)
            if ref is not None:
                ax.axhline(ref, color=color, ls="--", lw=1.0, alpha=0.8,
                           label=f"{variant}: UFM optimum (λ_W={theory['lambda_w']:g}, λ_H={theory['lambda_h']:g})")
        ax.axhline(2.0, color="grey", lw=0.8, alpha=0.6)
        ax.set_title(f"tag-wise scale c_2 — loss {loss}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("c_2 = ⟨μ_S − μ_G¹, a_S⟩/‖a_S‖²")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def fig_scores(table: list[dict[str, Any]]) -> Figure:
    """Test IoU (Li et al.'s), mAP and example F1 per variant and loss, mean ± sd over seeds."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    labels = [f"{r['variant']}\n{r['loss'].replace('pal_normalized', 'pal_norm.')}" for r in table]
    for ax, key, title in zip(axes, ("test_iou", "test_map", "test_f1"), ("IoU (Li et al.)", "mAP", "example F1")):
        means = [100 * (r.get(f"{key}_mean") or 0.0) for r in table]
        sds = [100 * (r.get(f"{key}_sd") or 0.0) for r in table]
        colors = [_COLORS.get(r["variant"], "grey") for r in table]
        hatches = ["" if r["loss"] == "pal" else "//" for r in table]
        bars = ax.bar(range(len(table)), means, yerr=sds, capsize=3, color=colors)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        ax.set_xticks(range(len(table)))
        ax.set_xticklabels(labels, fontsize=7)
        low = min((m - s for m, s in zip(means, sds)), default=0.0)
        ax.set_ylim(max(0.0, low - 5), min(100.0, max((m + s for m, s in zip(means, sds)), default=100.0) + 2))
        ax.set_title(f"test {title} (%)")
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def _summary(run: RunFolder) -> dict[str, Any]:
    """The results of a ``multilabel`` run, aggregated afresh from its sub-runs' ``result.json`` files."""
    from nclens.multilabel.experiment import aggregate, collect_results

    summary = (run.summary() or {}).get("results", {})
    results = collect_results(run)
    return {**{k: summary.get(k) for k in ("n_train", "n_test")}, **aggregate(results)} if results else summary


def write_training_figures(run: RunFolder) -> dict[str, Path]:
    """Render the figures of a ``multilabel`` run into ``figures/``.

    Raises:
        FileNotFoundError: the folder holds no measured sub-run.
    """
    curves = load_curves(run)
    if not curves:
        raise FileNotFoundError(f"{str(run.path)!r} holds no multi-label sub-runs (<loss>/<variant>/seed*/nc.jsonl)")
    theory = run.read_json("theory.json") if run.exists("theory.json") else {}
    figures = {"mlab_nc": fig_mlab_nc(curves), "tagwise_scale": fig_tagwise_scale(curves, theory)}
    table = _summary(run).get("table")
    if table:
        figures["scores"] = fig_scores(table)
    return save_figures(run, figures)


def _table_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    timing = {(t["loss"], t["variant"]): t for t in results.get("timing", [])}
    rows = []
    for r in results.get("table", []):
        t = timing.get((r["loss"], r["variant"]), {})
        rows.append({
            "loss": r["loss"], "variant": r["variant"], "seeds": r["seeds"], "D": r["feature_dim"],
            "trainable params": r["trainable_params"],
            "s/epoch": pm(t.get("time_per_epoch_s"), t.get("time_per_epoch_s_sd"), 1.0, ".3f"),
            "test IoU %": pm(r.get("test_iou_mean"), r.get("test_iou_sd"), 100),
            "test mAP %": pm(r.get("test_map_mean"), r.get("test_map_sd"), 100),
            "test F1 %": pm(r.get("test_f1_mean"), r.get("test_f1_sd"), 100),
            "nc1": pm(r.get("nc1_mean"), r.get("nc1_sd"), 1.0, ".3g"),
            "nc2_etf": pm(r.get("nc2_etf_mean"), r.get("nc2_etf_sd"), 1.0, ".3g"),
            "nc3_duality": pm(r.get("nc3_duality_mean"), r.get("nc3_duality_sd"), 1.0, ".3g"),
            "tagwise_angle_li": pm(r.get("tagwise_angle_li_mean"), r.get("tagwise_angle_li_sd"), 1.0, ".3g"),
            "c_2": pm(r.get("tagwise_scale_m2_mean"), r.get("tagwise_scale_m2_sd"), 1.0, ".3f"),
            "c_2 (UFM, from δ_1)": pm(r.get("c2_gap_implied_mean"), r.get("c2_gap_implied_sd"), 1.0, ".3f"),
            "smallest NC fall": r.get("min_fall_min"),
        })
    return rows


def _comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in results.get("comparison", []):
        row = {"loss": r["loss"], "variant − learned": r["variant"],
               "trainable params ratio": r.get("trainable_params_ratio")}
        for key, label in (("test_iou", "IoU"), ("test_map", "mAP"), ("test_f1", "F1")):
            row[f"Δ{label} (points)"] = pm(r.get(f"{key}_diff_mean"), r.get(f"{key}_diff_sd"), 100)
            row[f"{label}: equal or better?"] = r.get(f"{key}_verdict")
        rows.append(row)
    return rows


def training_report(run: RunFolder) -> ReportContent:
    """Headline and tables of a ``multilabel`` run for report.html."""
    results = _summary(run)
    content = ReportContent(
        title="multi-label neural collapse (pick-all-label losses)",
        notes=["Li, Li, Wang & Qu, ICML 2024. IoU as the official iou_measure (utility.py of Heimine/NC_MLab): "
               "the softmax mass on the true label set. MLab NC of the training features; definitions in "
               "nclens metrics --kind multilabel. 'equal or better' compares each fixed head with the learned "
               "head seed by seed: better if mean − sd of the paired differences > 0, worse if mean + sd < 0."],
    )
    if results:
        content.headline.append({k: results.get(k) for k in ("n_train", "n_test") if k in results})
        content.tables["mean ± sd over seeds"] = _table_rows(results)
        if results.get("comparison"):
            content.tables["fixed heads against the learned head (paired by seed)"] = _comparison_rows(results)
        cols = ("loss", "variant", "seed", "test_iou", "test_map", "test_f1", "nc1", "nc2_etf", "tagwise_angle_li",
                "tagwise_scale_m2", "c2_gap_implied", "min_fall", "min_fall_metric")
        content.tables["every run"] = [{c: r.get(c) for c in cols} for r in results.get("runs", [])]
    if run.exists("theory.json"):
        th = run.read_json("theory.json")
        content.notes.append(f"UFM reference for c_2: λ_W = {th.get('lambda_w')}, λ_H = {th.get('lambda_h')}; "
                             f"{th.get('c2') or th.get('note')}")
    return content


def training_summary_text(run: RunFolder) -> str:
    """The mean ± sd table as plain text (what ``nclens run`` prints)."""
    from nclens.core.console import format_table

    results = _summary(run)
    rows = _table_rows(results)
    if not rows:
        return ""
    keep = ("D", "trainable params", "s/epoch", "test IoU %", "test mAP %", "test F1 %", "c_2", "c_2 (UFM, from δ_1)",
            "smallest NC fall")
    table = {f"{r['variant']} / {r['loss']}": {k: r[k] for k in keep} for r in rows}
    lines = [format_table(table, title=f"multi-label NC: n_train {results.get('n_train')}, n_test "
                          f"{results.get('n_test')} (mean ± sd over seeds)", row_header="variant / loss").rstrip()]
    for r in _comparison_rows(results):
        lines.append(f"{r['variant − learned']} − learned ({r['loss']}): ΔIoU {r['ΔIoU (points)']} "
                     f"({r['IoU: equal or better?']}), ΔmAP {r['ΔmAP (points)']} ({r['mAP: equal or better?']})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ UFM
def fig_ufm_restarts(records: list[dict[str, Any]]) -> Figure:
    """Per restart: objective minus the best objective (log), and c_m against the theory, per loss × λ."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.0), constrained_layout=True)
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["loss"], r["lambda"])].append(r)
    for i, ((loss, lam), recs) in enumerate(groups.items()):
        color = plt.get_cmap("tab10")(i % 10)
        label = f"{loss}, λ={lam if lam is not None else 'ufm'}"
        best = min(r["objective"] for r in recs)
        gaps = [max(r["objective"] - best, 1e-18) for r in recs]
        axes[0].semilogy([r["restart"] for r in recs], gaps, "o", color=color, label=label)
        for key in sorted({k for r in recs for k in r["metrics"] if k.startswith("tagwise_scale_m")
                           and not k.endswith("_std")}):
            m = key.removeprefix("tagwise_scale_m")
            axes[1].plot([r["restart"] for r in recs], [r["metrics"][key] for r in recs], "o", color=color,
                         label=f"{label}: c_{m}")
            theory = (recs[0].get("theory") or {}).get("tagwise_scale", {})
            ref = theory.get(m, theory.get(int(m)) if m.isdigit() else None)
            if ref is not None:
                axes[1].axhline(ref, color=color, ls="--", lw=0.9)
    axes[0].set_title("objective − best objective over the restarts (floor 1e-18)")
    axes[0].set_xlabel("random initialisation")
    axes[1].set_title("tag-wise scale c_m per restart (dashed: theory)")
    axes[1].set_xlabel("random initialisation")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


def fig_ufm_by_count(records: list[dict[str, Any]]) -> Figure:
    """c_S of each label set, grouped by its sample count (within-multiplicity imbalance), vs the balanced theory."""
    fig, ax = plt.subplots(figsize=(7, 4.0), constrained_layout=True)
    ticks: dict[str, int] = {}
    for i, r in enumerate(rec for rec in records if rec.get("tagwise_scale_by_count") and rec["restart"] == 0):
        color = plt.get_cmap("tab10")(i % 10)
        for m, groups in r["tagwise_scale_by_count"].items():
            for count, values in groups.items():
                x = ticks.setdefault(f"m={m}, {count} samples", len(ticks))
                ax.plot([x] * len(values), values, "o", color=color, alpha=0.7,
                        label=f"{r['loss']}: sets of {count} samples (m={m})")
            ref = (r.get("theory") or {}).get("tagwise_scale", {}).get(m)
            if ref is not None:
                ax.axhline(ref, color=color, ls="--", lw=0.9, label=f"{r['loss']}: theory with the same N_m (ETF W)")
    ax.set_xticks(list(ticks.values()))
    ax.set_xticklabels(list(ticks))
    ax.set_xlim(-0.5, len(ticks) - 0.5)
    ax.set_xlabel("label sets grouped by their sample count")
    ax.set_ylabel("c_S")
    ax.set_title("within-multiplicity imbalance: c_S by the set's sample count")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def write_ufm_figures(run: RunFolder) -> dict[str, Path]:
    """Render the figures of a ``multilabel-ufm`` run into ``figures/``."""
    records = run.read_jsonl("solutions.jsonl")
    if not records:
        raise FileNotFoundError(f"{str(run.path)!r} holds no UFM solutions (solutions.jsonl)")
    figures = {"ufm_restarts": fig_ufm_restarts(records)}
    if any(r.get("tagwise_scale_by_count") for r in records):
        figures["ufm_by_count"] = fig_ufm_by_count(records)
    return save_figures(run, figures)


_UFM_COLUMNS = ("loss", "lambda", "restarts", "objective_min", "objective_spread", "gram_w_max_diff",
                "gram_sets_max_diff", "grad_norm_max", "tagwise_scale_m2_mean", "theory_tagwise_scale_m2",
                "tagwise_scale_m2_abs_err_max", "tagwise_scale_m3_mean", "theory_tagwise_scale_m3",
                "tagwise_scale_m3_abs_err_max", "nc2_etf_w_max", "tagwise_angle_li_max", "nc1_sets_max")


def _ufm_rows(run: RunFolder) -> list[dict[str, Any]]:
    from nclens.multilabel.experiment import study_rows

    records = run.read_jsonl("solutions.jsonl")
    return study_rows(records) if records else []


def ufm_report(run: RunFolder) -> ReportContent:
    """Tables of a ``multilabel-ufm`` run for report.html (from ``solutions.jsonl``)."""
    rows = _ufm_rows(run)
    content = ReportContent(title="unconstrained feature model of the pick-all-label losses",
                            notes=["Each case solved in float64 (L-BFGS, then Newton) to the stated gradient norm; "
                                   "geometry differences are max |Δ| of W Wᵀ and of the Gram of the label-set "
                                   "means against restart 0 (rotation-invariant). Theory: nclens.multilabel.ufm."])
    if rows:
        content.tables["study (one row per loss × λ)"] = [{c: r.get(c) for c in _UFM_COLUMNS if c in r} for r in rows]
        extra = [{k: v for k, v in r.items() if k.startswith("c_m")} | {"loss": r["loss"]} for r in rows
                 if any(k.startswith("c_m") for k in r)]
        if extra:
            content.tables["c_S by sample count (within-multiplicity imbalance)"] = extra
        zhu = [{"loss": r["loss"], "objective": r["objective_min"]}
               | {k: v for k, v in r.items() if k.startswith("zhu_")} for r in rows if "zhu_objective" in r]
        if zhu:
            content.tables["singletons only: Zhu et al.'s closed form"] = zhu
    return content


def ufm_summary_text(run: RunFolder) -> str:
    """One line per loss × λ (what ``nclens run`` prints)."""
    lines = []
    for r in _ufm_rows(run):
        lam = "ufm's λ" if r["lambda"] is None else f"λ={r['lambda']:g}"
        text = (f"{r['loss']} {lam}: {r['restarts']} restart(s), objective {r['objective_min']:.12g} "
                f"(spread {r['objective_spread']:.2e}), geometry max diff {r['gram_sets_max_diff']:.2e}")
        for m in (2, 3):
            if f"tagwise_scale_m{m}_mean" in r:
                th = r.get(f"theory_tagwise_scale_m{m}")
                text += f", c_{m} {r[f'tagwise_scale_m{m}_mean']:.10g}" + (f" (theory {th:.10g})" if th else "")
        for k, v in r.items():
            if k.startswith("c_m") and k.endswith("_mean"):
                text += f", {k.removesuffix('_mean')} {v:.6g}"
        if "zhu_objective" in r:
            err = max(r[f"zhu_{k}_abs_err_max"] for k in ("objective", "w_norm", "h_norm"))
            text += (f"; Zhu et al. closed form: objective {r['zhu_objective']:.10g}, ‖w_k‖ {r['zhu_w_norm']:.6g}, "
                     f"‖h_k‖ {r['zhu_h_norm']:.6g} (max abs err {err:.1e})")
        lines.append(text)
    return "\n".join(lines)
