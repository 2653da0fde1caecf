"""The bounds-vs-SNR sweep as an experiment (kind ``bounds-sweep``): resumable point by point.

For each SNR of the grid: the CRB (amplitude and phase unknown), the known-phase CRB, the Barankin
bound (nuisance Fisher scores + Barankin test points) and the Hammersley–Chapman–Robbins bound
(:func:`nclens.bounds.quadratic.sinusoid_bounds`), beside the periodogram MLE's Monte Carlo MSE
(:func:`nclens.bounds.montecarlo.sweep_point`). Point i draws its noise from the i-th child of
``numpy.random.SeedSequence(seed)``, so a resumed sweep equals an uninterrupted one.

Run folder: ``points.jsonl`` (one record per SNR, appended as they finish), ``sweep.json`` (the arrays
and the threshold SNRs), ``figures/bounds.png``, ``summary.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nclens.bounds.config import SweepConfig
from nclens.core.console import progress_bar
from nclens.runs.experiment import Experiment, ReportContent, register_experiment
from nclens.runs.folder import RunFolder

__all__ = ["BoundsSweep", "assemble_sweep", "POINTS", "SWEEP"]

POINTS = "points.jsonl"
SWEEP = "sweep.json"
_KEYS = ("crb_frequency", "crb_frequency_known_phase", "barankin_frequency", "hcr_frequency", "hcr_argmax_delta",
         "mle_mse_frequency", "mle_mse_frequency_stderr")


def assemble_sweep(config: SweepConfig, points: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's arrays (grid order) and threshold SNRs from the finished points."""
    from nclens.bounds import quadratic as B

    by_index = {int(p["index"]): p for p in points}
    grid = config.grid()
    rows = [by_index[i] for i in range(grid.size)]
    out: dict[str, Any] = {"n_samples": config.samples, "snr_db": grid.tolist(), "trials": config.trials,
                           "seed": config.seed, "factor": config.factor, "omega": config.omega, "phase": config.phase}
    for key in _KEYS:
        out[key] = [r.get(key) for r in rows] if all(key in r for r in rows) else None
    crb = out["crb_frequency"]
    out["threshold_snr_db"] = {
        "definition": f"lowest grid SNR from which on the quantity stays <= {config.factor:g} x CRB",
        "barankin": B.threshold_snr_db(grid, out["barankin_frequency"], crb, factor=config.factor),
        "hcr": B.threshold_snr_db(grid, out["hcr_frequency"], crb, factor=config.factor),
        "mle": (B.threshold_snr_db(grid, out["mle_mse_frequency"], crb, factor=config.factor)
                if out["mle_mse_frequency"] is not None else None),
    }
    out["barankin_test_points"] = {
        "frequency_offsets": B.sinusoid_barankin_offsets(config.samples, config.per_bin).tolist(),
        "phase_offsets": "-arg sum_n exp(i Delta n) (best phase per offset)",
        "plus": "Fisher scores of (amplitude, phase, frequency) and the HCR argmax offset",
    }
    return out


@register_experiment
class BoundsSweep(Experiment):
    """Quadratic covariance bounds vs SNR: the threshold effect the CRB misses."""

    kind = "bounds-sweep"
    config_class = SweepConfig
    description = "CRB, Barankin and HCR bounds of a sinusoid's frequency vs SNR beside the MLE's MSE"

    def run(self, config: SweepConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        from nclens.bounds.montecarlo import sweep_point

        grid = config.grid()
        seeds = np.random.SeedSequence(config.seed).spawn(grid.size)
        done = {int(p["index"]) for p in run.read_jsonl(POINTS)} if resume else set()
        if not resume:
            run.keep_jsonl(POINTS, lambda r: False)
        total = (grid.size - len(done)) * max(config.trials, 1)
        with progress_bar(progress, "bounds sweep (bounds + MLE Monte Carlo)", total) as advance:
            for i, (snr_db, ss) in enumerate(zip(grid, seeds)):
                if i in done:
                    continue
                point = sweep_point(config.samples, float(snr_db), config.trials, omega=config.omega,
                                    phase=config.phase, per_bin=config.per_bin, rng=np.random.default_rng(ss),
                                    advance=advance)
                run.append_jsonl(POINTS, [{"index": i, **point}])
        sweep = assemble_sweep(config, run.read_jsonl(POINTS))
        run.write_json(SWEEP, sweep)
        return {"threshold_snr_db": sweep["threshold_snr_db"], "points": int(grid.size),
                "mle_over_crb_at_max_snr": (sweep["mle_mse_frequency"][-1] / sweep["crb_frequency"][-1]
                                            if sweep["mle_mse_frequency"] else None)}

    def figures(self, run: RunFolder) -> dict[str, Path]:
        from nclens.bounds.figures import write_figures

        return write_figures(run)

    def report(self, run: RunFolder) -> ReportContent:
        from nclens.bounds.figures import report_content

        return report_content(run)

    def summary_text(self, run: RunFolder) -> str:
        if not run.exists(SWEEP):
            return ""
        thr = run.read_json(SWEEP)["threshold_snr_db"]
        return "threshold SNR (<= factor x CRB): " + ", ".join(
            f"{k} {'n/a' if thr.get(k) is None else f'{thr[k]:g} dB'}" for k in ("mle", "barankin", "hcr"))
