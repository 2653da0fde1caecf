"""The figure and tables of a bounds sweep, drawn from ``sweep.json`` alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from nclens.report.figures import save_figures
from nclens.runs.experiment import ReportContent
from nclens.runs.folder import RunFolder

__all__ = ["fig_sweep", "write_figures", "report_content"]


def fig_sweep(out: dict[str, Any]) -> Figure:
    """Bounds and the MLE's MSE vs SNR (log scale), the threshold SNRs marked."""
    import numpy as np

    s = np.asarray(out["snr_db"])
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    ax = fig.add_subplot(1, 1, 1)
    ax.semilogy(s, out["crb_frequency"], "k-", lw=2, label="CRB (amplitude, phase unknown)")
    ax.semilogy(s, out["crb_frequency_known_phase"], color="0.55", ls="--", label="CRB (phase known)")
    ax.semilogy(s, out["barankin_frequency"], "C0-", lw=1.8, label="Barankin (+ nuisance Fisher scores)")
    ax.semilogy(s, out["hcr_frequency"], "C1-.", lw=1.5, label="Hammersley–Chapman–Robbins")
    if out.get("mle_mse_frequency") is not None:
        ax.semilogy(s, out["mle_mse_frequency"], "C3o", ms=4, label=f"MLE MSE ({out['trials']} trials)")
    ax.axhline(math.pi**2 / 3, color="0.3", ls=":", lw=1, label="uniform error on the circle, $\\pi^2/3$")
    finite = [v for v in out.get("mle_mse_frequency") or [] if v is not None]
    top = max(30.0, 3 * max(finite)) if finite else 30.0
    for key, color, name in [("mle", "C3", "MLE"), ("barankin", "C0", "Barankin"), ("hcr", "C1", "HCR")]:
        thr = out["threshold_snr_db"].get(key)
        if thr is not None:
            ax.axvline(thr, color=color, ls=":", lw=1.2)
            ax.text(thr, top / 3, f" {name}\n {thr:g} dB", color=color, fontsize=8, va="top")
    ax.set_ylim(0.5 * min(out["crb_frequency"]), top)
    ax.set_xlabel("SNR $a^2/\\sigma^2$ (dB)")
    ax.set_ylabel("frequency MSE / bound (rad$^2$)")
    ax.set_title(f"Complex sinusoid, N = {out['n_samples']}: bounds vs SNR (threshold factor {out['factor']:g}×CRB)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left", framealpha=0.9)
    fig.tight_layout()
    return fig


def write_figures(run: RunFolder) -> dict[str, Path]:
    """``figures/bounds.png`` from ``sweep.json``."""
    if not run.exists("sweep.json"):
        raise FileNotFoundError(f"{str(run.path)!r} holds no finished bounds sweep (no sweep.json)")
    return save_figures(run, {"bounds": fig_sweep(run.read_json("sweep.json"))})


def report_content(run: RunFolder) -> ReportContent:
    """Threshold SNRs and the per-SNR table."""
    content = ReportContent(title="quadratic covariance bounds vs SNR")
    if not run.exists("sweep.json"):
        return content
    sweep = run.read_json("sweep.json")
    thr = sweep["threshold_snr_db"]
    content.headline.append({f"threshold SNR (dB), {k}": thr.get(k) for k in ("mle", "barankin", "hcr")})
    content.notes.append(str(thr.get("definition", "")))
    keys = [k for k in ("crb_frequency", "barankin_frequency", "hcr_frequency", "mle_mse_frequency") if sweep.get(k)]
    content.tables["bounds per SNR (rad²)"] = [
        {"snr_db": s, **{k: sweep[k][i] for k in keys}} for i, s in enumerate(sweep["snr_db"])
    ]
    return content
