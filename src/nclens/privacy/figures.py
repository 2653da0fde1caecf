"""Figures, report tables and console summaries of the DP runs, drawn from the run folder's files alone.

Reads ``results.jsonl`` (every kind) and ``features.jsonl`` (``dp-features``); the tables are the
same aggregations ``run()`` wrote (:func:`~nclens.privacy.experiment.dimension_table`, ...).

Example:
    >>> from nclens.privacy.figures import fig_threshold
    >>> rows = [{"variant": "base", "beta": b, "dim": p, "error": 0.3 + b / 10, "error_se": 0.01,
    ...          "error_nonprivate": 0.0, "error_closed_form": None, "error_large_p": None}
    ...         for b in (0.0, 1.0) for p in (10, 100)]
    >>> len(fig_threshold(rows).axes)
    1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from nclens.report.figures import save_figures
from nclens.runs.experiment import ReportContent
from nclens.runs.folder import RunFolder

__all__ = [
    "fig_accuracy_vs_dim",
    "fig_threshold",
    "fig_threshold_map",
    "fig_accuracy_vs_epsilon",
    "fig_accuracy_vs_shift",
    "dimension_figures",
    "threshold_figures",
    "features_figures",
    "dimension_report",
    "threshold_report",
    "features_report",
    "dimension_text",
    "threshold_text",
    "features_text",
]

_REF = "Wang, Zhu, Su & Wang, ICML 2024 (PMLR 235:52334-52360; arXiv:2405.08920)"


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _records(run: RunFolder, what: str) -> list[dict[str, Any]]:
    from nclens.privacy.experiment import RESULTS

    records = run.read_jsonl(RESULTS)
    if not records:
        raise FileNotFoundError(f"{str(run.path)!r} holds no {what} results ({RESULTS})")
    return records


# ------------------------------------------------------------------------------------ dp-dimension
def fig_accuracy_vs_dim(rows: list[dict[str, Any]]) -> Figure:
    """Private (error bars over seeds) and non-private accuracy against p, one colour per (τ, arm)."""
    fig, ax = plt.subplots(figsize=(8.2, 4.6), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["perturb"], r["arm"]), []).append(r)
    closed = [r["accuracy_closed_form"] for r in rows if r.get("accuracy_closed_form") is not None]
    for i, ((tau, arm), g) in enumerate(groups.items()):
        g = sorted(g, key=lambda r: r["dim"])
        c = colours[i % len(colours)]
        name = "exact ETF" if tau == 0 else f"τ={tau:g}"
        ax.errorbar([r["dim"] for r in g], [r["accuracy"] for r in g], yerr=[_nan(r["accuracy_sd"]) for r in g],
                    color=c, marker="o", capsize=3, label=f"{name}, {arm} (DP)")
        ax.plot([r["dim"] for r in g], [r["accuracy_nonprivate"] for r in g], color=c, ls=":", marker="x",
                label=f"{name}, {arm} (non-private)")
    if closed:
        ax.axhline(sum(closed) / len(closed), color="grey", ls="--", lw=1, label="closed form (exact ETF)")
    ax.set_xscale("log")
    ax.set_xlabel("feature dimension p")
    ax.set_ylabel("test accuracy")
    eps = rows[0]["epsilon"] if rows else float("nan")
    ax.set_title(f"NoisyGD on layer-peeled features (ε = {eps:.3g}); per-coordinate perturbation τ", fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(alpha=0.3)
    return fig


def dimension_figures(run: RunFolder) -> dict[str, Path]:
    """``figures/accuracy_vs_dim.png``."""
    from nclens.privacy.experiment import dimension_table

    return save_figures(run, {"accuracy_vs_dim": fig_accuracy_vs_dim(dimension_table(_records(run, "dp-dimension")))})


def dimension_report(run: RunFolder) -> ReportContent:
    """Accuracy per (τ, arm) and p as a wide table."""
    from nclens.privacy.experiment import dimension_table

    rows = dimension_table(_records(run, "dp-dimension"))
    dims = sorted({r["dim"] for r in rows})
    wide: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        row = wide.setdefault((r["perturb"], r["arm"]), {"features": "exact ETF" if r["perturb"] == 0 else
                                                         f"τ = {r['perturb']:g}", "arm": r["arm"]})
        sd = f" ± {r['accuracy_sd']:.3f}" if r["accuracy_sd"] is not None else ""
        row[f"p={r['dim']}"] = f"{r['accuracy']:.3f}{sd} (non-private {r['accuracy_nonprivate']:.2f})"
    closed = [r["accuracy_closed_form"] for r in rows if r.get("accuracy_closed_form") is not None]
    head = {"epsilon": rows[0]["epsilon"], "closed-form accuracy (exact ETF)": closed[0] if closed else None,
            "seeds": rows[0]["seeds"]}
    return ReportContent(
        title="NC meets DP: accuracy against the feature dimension",
        headline=[head],
        tables={"test accuracy of NoisyGD (mean ± sd over seeds)": [
            {k: row.get(k) for k in ["features", "arm", *[f"p={p}" for p in dims]]} for row in wide.values()]},
        notes=[f"Layer-peeled model of {_REF}; per-coordinate std τ, so the shift norm grows as τ√p.",
               "Simulated in an exact reduced basis of the span of the features (module nclens.privacy.simulate)."],
    )


def dimension_text(run: RunFolder) -> str:
    """The wide table as plain text."""
    from nclens.core.console import format_table

    content = dimension_report(run)
    table = next(iter(content.tables.values()))
    return format_table({f"{r['features']}, {r['arm']}": {k: v for k, v in r.items() if k.startswith("p=")}
                         for r in table}, title=next(iter(content.tables)), row_header="features").rstrip()


# ------------------------------------------------------------------------------------ dp-threshold
def fig_threshold(rows: list[dict[str, Any]], variant: str | None = None) -> Figure:
    """Error against p for every β of one variant (error bars: standard error over seeds), with the closed forms."""
    variant = variant or rows[0]["variant"]
    rows = [r for r in rows if r["variant"] == variant]
    fig, ax = plt.subplots(figsize=(7.6, 4.4), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    betas = sorted({r["beta"] for r in rows})
    for i, beta in enumerate(betas):
        g = sorted([r for r in rows if r["beta"] == beta], key=lambda r: r["dim"])
        c = cmap(i / max(len(betas) - 1, 1) * 0.9)
        xs = [r["dim"] for r in g]
        ax.errorbar(xs, [r["error"] for r in g], yerr=[_nan(r["error_se"]) for r in g], color=c, marker="o",
                    capsize=3, label=f"β = {beta:g} (DP)")
        ax.plot(xs, [r["error_nonprivate"] for r in g], color=c, ls=":", lw=1)
        closed = [(r["dim"], r["error_closed_form"]) for r in g if r.get("error_closed_form") is not None]
        if closed:
            ax.plot(*zip(*closed), color=c, ls="--", lw=1)
        large = [r["error_large_p"] for r in g if r.get("error_large_p") is not None]
        if large:
            ax.axhline(sum(large) / len(large), color=c, ls="-.", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("feature dimension p")
    ax.set_ylabel("test error")
    ax.set_ylim(0, 1.0)
    ax.set_title(f"{variant}: error vs p at fixed shift norm β (dashed: closed form; dash-dot: p → ∞ form; "
                 "dotted: non-private)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def fig_threshold_map(rows: list[dict[str, Any]], flat: list[dict[str, Any]], variant: str = "base") -> Figure:
    """The (β, p) error table of one variant as an image; β rows that are flat in p marked ✓."""
    import numpy as np

    rows = [r for r in rows if r["variant"] == variant]
    betas, dims = sorted({r["beta"] for r in rows}), sorted({r["dim"] for r in rows})
    grid = np.full((len(betas), len(dims)), np.nan)
    for r in rows:
        grid[betas.index(r["beta"]), dims.index(r["dim"])] = r["error"]
    fig, ax = plt.subplots(figsize=(1.4 * len(dims) + 2.5, 0.55 * len(betas) + 1.6), constrained_layout=True)
    im = ax.imshow(grid, cmap="magma_r", vmin=0, vmax=1, aspect="auto")
    for i in range(len(betas)):
        for j in range(len(dims)):
            ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if grid[i, j] > 0.55 else "black")
    marks = {r["beta"]: r["flat"] for r in flat if r["variant"] == variant}
    ax.set_yticks(range(len(betas)), [f"β={b:g} {'✓' if marks.get(b) else '✗'}" for b in betas])
    ax.set_xticks(range(len(dims)), [f"p={p:g}" for p in dims])
    below = 0  # rows up to the threshold: every β so far flat in p
    while below < len(betas) and marks.get(betas[below]):
        below += 1
    if below:
        ax.axhline(below - 0.5, color="tab:cyan", lw=2.5)
    threshold = f"threshold β = {betas[below - 1]:g}" if below else "no β flat in p"
    ax.set_title(f"{variant}: NoisyGD error over (β, p); ✓ = flat in p; {threshold} (cyan line)", fontsize=9)
    fig.colorbar(im, ax=ax, label="test error")
    return fig


def threshold_figures(run: RunFolder) -> dict[str, Path]:
    """``figures/threshold_<variant>.png`` for every variant and ``figures/threshold_map.png`` (first variant)."""
    from nclens.privacy.experiment import flatness, threshold_table

    sigmas = float((run.config_record() or {}).get("flat_sigmas", 3.0))
    rows = threshold_table(_records(run, "dp-threshold"))
    flat, _ = flatness(rows, sigmas)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    figures = {f"threshold_{v}": fig_threshold(rows, v) for v in variants}
    figures["threshold_map"] = fig_threshold_map(rows, flat, variants[0])
    return save_figures(run, figures)


def _threshold_wide(rows: list[dict[str, Any]], flat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    dims = sorted({r["dim"] for r in rows})
    marks = {(r["variant"], r["beta"]): r for r in flat}
    out: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["variant"], r["beta"])
        row = out.setdefault(key, {"variant": r["variant"], "beta": r["beta"],
                                   "flat in p": "yes" if marks[key]["flat"] else "no"})
        row[f"p={r['dim']}"] = f"{r['error']:.3f} ± {r['error_se']:.3f}" if r["error_se"] is not None else \
            f"{r['error']:.3f}"
        if r.get("error_closed_form") is not None:
            row.setdefault("closed form", f"{r['error_closed_form']:.3f}")
        if r.get("error_large_p") is not None:
            row["p→∞ form"] = f"{r['error_large_p']:.3f}"
        row.setdefault("non-private (max over p)", 0.0)
        row["non-private (max over p)"] = max(row["non-private (max over p)"], r["error_nonprivate"])
    cols = ["variant", "beta", *[f"p={p}" for p in dims], "closed form", "p→∞ form", "non-private (max over p)",
            "flat in p"]
    return [{c: row.get(c) for c in cols} for row in out.values()]


def threshold_report(run: RunFolder) -> ReportContent:
    """The (β, p) error table with the flat-in-p mark and the threshold of every variant."""
    from nclens.privacy.experiment import flatness, threshold_table

    record = run.config_record() or {}
    sigmas = float(record.get("flat_sigmas", 3.0))
    rows = threshold_table(_records(run, "dp-threshold"))
    flat, thresholds = flatness(rows, sigmas)
    head = {f"threshold β ({v})": (t if t is not None else "none flat") for v, t in thresholds.items()}
    head["epsilon (base)"] = rows[0]["epsilon"]
    return ReportContent(
        title="NC meets DP: the dimension threshold at a fixed shift norm",
        headline=[head],
        tables={"test error of NoisyGD over (β, p): mean ± standard error over seeds": _threshold_wide(rows, flat),
                "flatness in p": flat},
        notes=[f"Layer-peeled model of {_REF}. Per-sample shifts have per-coordinate std β/√p (norm β whatever "
               "p); structured shifts are per-class vectors of norm β.",
               f"Flat in p: every p within {sigmas:g} standard errors of the largest p. The threshold is the "
               "largest β up to which every β of the grid is flat.",
               "Closed form: exact one-step error for exactly collapsed features; p→∞ form: its limit for "
               "per-sample shifts. Variants with several steps keep ε by σ√T."],
    )


def threshold_text(run: RunFolder) -> str:
    """The wide error table and the thresholds as plain text."""
    from nclens.core.console import format_table

    content = threshold_report(run)
    table = content.tables["test error of NoisyGD over (β, p): mean ± standard error over seeds"]
    lines = [format_table({f"{r['variant']} β={r['beta']:g}": {k: v for k, v in r.items()
                                                               if k not in ("variant", "beta")} for r in table},
                          title="NoisyGD test error over (β, p)", row_header="variant, β").rstrip()]
    lines += [f"{k}: {v}" for k, v in content.headline[0].items()]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- dp-features
def _feature_rows(run: RunFolder) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from nclens.privacy.experiment import FEATURES, accuracy_table

    features = run.read_jsonl(FEATURES)
    return accuracy_table(_records(run, "dp-features"), features), features


def _remedy_grid(count: int) -> tuple[Figure, Any]:
    """One panel per remedy, at most three per row (shared y); unused panels hidden."""
    cols = min(3, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols + 1.5, 3.6 * rows), sharey=True, squeeze=False,
                             constrained_layout=True)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes


def fig_accuracy_vs_epsilon(rows: list[dict[str, Any]]) -> Figure:
    """Accuracy against ε, one panel per remedy, one colour per feature set; solid NoisyGD, dashed DP-SGD."""
    remedies = list(dict.fromkeys(r["remedy"] for r in rows))
    sets = list(dict.fromkeys(r["feature_set"] for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = _remedy_grid(len(remedies))
    epsilons = sorted({r["epsilon"] for r in rows if r["epsilon"] is not None})
    for ax, remedy in zip(axes.flat, remedies):
        for i, name in enumerate(sets):
            c = colours[i % len(colours)]
            for algorithm, ls in (("noisygd", "-"), ("dpsgd", "--")):
                g = sorted([r for r in rows if r["remedy"] == remedy and r["feature_set"] == name
                            and r["algorithm"] == algorithm], key=lambda r: r["epsilon"])
                if g:
                    ax.errorbar([r["epsilon"] for r in g], [r["accuracy"] for r in g],
                                yerr=[_nan(r["accuracy_sd"]) for r in g], color=c, ls=ls, marker="o", ms=3, capsize=2,
                                label=f"{name} ({algorithm})")
            for ref, ls in (("nonprivate", ":"), ("logreg", "-.")):
                nonp = [r for r in rows if r["remedy"] == remedy and r["feature_set"] == name
                        and r["algorithm"] == ref]
                if nonp:
                    ax.axhline(nonp[0]["accuracy"], color=c, ls=ls, lw=1)
        ax.set_xscale("log")
        if epsilons:
            ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
            ax.minorticks_off()
        ax.set_xlabel("ε")
        ax.set_title(f"{remedy} (non-private: dotted GD, dash-dot logreg)", fontsize=9)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def fig_accuracy_vs_shift(rows: list[dict[str, Any]]) -> Figure:
    """NoisyGD accuracy against the feature shift of each set (one line per ε), one panel per remedy."""
    remedies = list(dict.fromkeys(r["remedy"] for r in rows))
    fig, axes = _remedy_grid(len(remedies))
    for ax, remedy in zip(axes.flat, remedies):
        g = [r for r in rows if r["remedy"] == remedy and r["algorithm"] in ("noisygd", "nonprivate", "logreg")]
        for level in dict.fromkeys(r["level"] for r in g):
            gl = sorted([r for r in g if r["level"] == level], key=lambda r: _nan(r["feature_shift"]))
            reference = level.startswith("non-private")
            ax.plot([r["feature_shift"] for r in gl], [r["accuracy"] for r in gl], marker="o",
                    ls=":" if reference else "-", label=level if reference else f"ε={level}")
        ax.set_xlabel("feature shift (private split)")
        ax.set_title(remedy, fontsize=9)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("test accuracy (NoisyGD)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def features_figures(run: RunFolder) -> dict[str, Path]:
    """``figures/accuracy_vs_epsilon.png`` and ``figures/accuracy_vs_shift.png``."""
    rows, _ = _feature_rows(run)
    return save_figures(run, {"accuracy_vs_epsilon": fig_accuracy_vs_epsilon(rows),
                              "accuracy_vs_shift": fig_accuracy_vs_shift(rows)})


def features_report(run: RunFolder) -> ReportContent:
    """Per feature set its collapse and shift; per (set, remedy, algorithm) the accuracy at every ε."""
    rows, features = _feature_rows(run)
    sets = []
    for f in features:
        row = {k: f.get(k) for k in ("feature_set", "split", "dim", "n_private", "feature_shift", "feature_shift_means",
                                     "feature_shift_within", "feature_shift_sample_normalised", "nc1",
                                     "within_share", "nc2_etf", "pretrained_test_accuracy")}
        for name, rem in (f.get("remedies") or {}).items():
            row[f"shift after {name}"] = rem["feature_shift"]
        sets.append(row)
    refs = ("nonprivate", "logreg")
    levels = list(dict.fromkeys(r["level"] for r in rows if r["algorithm"] not in refs))
    table = []
    for key in dict.fromkeys((r["feature_set"], r["remedy"], r["algorithm"]) for r in rows
                             if r["algorithm"] not in refs):
        row = {"feature_set": key[0], "remedy": key[1], "algorithm": key[2]}
        for r in rows:
            if (r["feature_set"], r["remedy"]) == key[:2] and r["algorithm"] in (key[2], *refs):
                sd = f" ± {r['accuracy_sd']:.3f}" if r["accuracy_sd"] is not None else ""
                row[r["level"] if r["algorithm"] in refs else f"ε={r['level']}"] = f"{r['accuracy']:.3f}{sd}"
        table.append({c: row.get(c) for c in ["feature_set", "remedy", "algorithm", *[f"ε={lv}" for lv in levels],
                                              "non-private", "non-private logreg"]})
    seeds = max((r["seeds"] for r in rows if r["algorithm"] != "logreg"), default=0)
    return ReportContent(
        title="NC meets DP: private heads on real features",
        headline=[{"feature sets": len(sets), "seeds": seeds}],
        tables={"feature sets: collapse and feature shift (private split)": sets,
                f"test accuracy (mean ± sd over {seeds} runs = splits × head seeds)": table},
        notes=[f"Private linear heads (zero-initialised, CE) as in {_REF}; ε at δ from the RDP accountant; "
               "remedies fitted on the public split."],
    )


def features_text(run: RunFolder) -> str:
    """The accuracy table as plain text."""
    from nclens.core.console import format_table

    content = features_report(run)
    sets, accuracy = content.tables.values()
    short = ("dim", "nc1", "feature_shift", "pretrained_test_accuracy")
    lines = [format_table({f"{r['feature_set']} (split {r.get('split')})": {k: r.get(k) for k in short
                                                                          if r.get(k) is not None} for r in sets},
                          title="feature sets (private split)", row_header="set").rstrip()]
    lines.append(format_table({" / ".join(str(r[k]) for k in ("feature_set", "remedy", "algorithm")):
                               {k: v for k, v in r.items() if k not in ("feature_set", "remedy", "algorithm")}
                               for r in accuracy}, title=list(content.tables)[1], row_header="set").rstrip())
    return "\n".join(lines)
