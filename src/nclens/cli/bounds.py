"""``nclens bounds``: quadratic covariance bounds (Cramér–Rao, Barankin, Hammersley–Chapman–Robbins).

Sub-commands (the mathematics is in :mod:`nclens.bounds.quadratic`, the Monte Carlo in
:mod:`nclens.bounds.montecarlo`):

* ``sinusoid``   -- frequency bounds of a complex sinusoid in white noise and the MLE's Monte Carlo MSE;
* ``covariance`` -- Fisher matrix, CRB and nuisance CRB of an AR(1) Toeplitz covariance, and the MLE's error;
* ``sweep``      -- bounds vs SNR beside the MLE's MSE (threshold effect): a run of kind ``bounds-sweep``
  (an alias of ``nclens run bounds_sinusoid_sweep`` with the options as ``--set`` overrides).

Example:
    $ nclens bounds sinusoid --samples 32 --snr-db 0 --trials 2000 --json sinusoid.json
    $ nclens bounds covariance --dim 8 --snapshots 16 --rho 0.6 --json ar1.json
    $ nclens bounds sweep --samples 32 --snr-db-min -20 --snr-db-max 10 --out runs/bounds
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from nclens.cli._common import user_errors

bounds_app = typer.Typer(
    help="Quadratic covariance bounds (CRB, Bhattacharyya, Barankin, HCR) as Gram matrices of projected scores.",
    no_args_is_help=True,
    add_completion=False,
)


def register(app: typer.Typer) -> None:
    """Add the ``bounds`` command group to the ``nclens`` application."""
    app.add_typer(bounds_app, name="bounds")


def _write(json_out: Path | None, out: dict[str, Any]) -> None:
    from nclens.core.io import write_json

    if json_out is not None:
        write_json(json_out, out)
        typer.echo(f"wrote {json_out}")


def _table(title: str, rows: list[tuple[str, ...]], columns: tuple[str, ...]) -> None:
    from nclens.core.console import format_table

    body = {r[0]: dict(zip(columns[1:], r[1:])) for r in rows}
    typer.echo(format_table(body, title=title, row_header=columns[0]).rstrip())


@bounds_app.command("sinusoid")
def sinusoid(
    samples: int = typer.Option(32, "--samples", "-n", min=2, help="Record length N (n = 0..N-1)."),
    snr_db: float = typer.Option(0.0, "--snr-db", help="SNR a^2/sigma^2 in dB."),
    trials: int = typer.Option(2000, "--trials", min=0, help="Monte Carlo trials for the MLE (0: skip)."),
    omega: float = typer.Option(1.0, "--omega", help="True frequency (rad/sample)."),
    phase: float = typer.Option(0.5, "--phase", help="True phase at n = 0 (rad)."),
    per_bin: int = typer.Option(4, "--per-bin", min=1, help="Barankin test points per DFT bin."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results to this JSON file."),
) -> None:
    """Frequency bounds (CRB, known-phase CRB, Barankin, HCR) of a complex sinusoid, and the MLE's MSE."""
    import numpy as np

    from nclens.bounds.montecarlo import sinusoid_study
    from nclens.core.console import progress_bar
    from nclens.core.io import package_versions

    with user_errors():
        with progress_bar(trials > 0, f"MLE Monte Carlo @ {snr_db:g} dB", trials) as advance:
            out = sinusoid_study(samples, snr_db, trials, omega=omega, phase=phase, per_bin=per_bin,
                                 rng=np.random.default_rng(seed), advance=advance)
        out.update(trials=trials, seed=seed, versions=package_versions())
        crb = out["crb_frequency"]
        rows = [(k, f"{out[k]:.4e}", f"{out[k] / crb:.3f}") for k in
                ("crb_frequency", "crb_frequency_known_phase", "barankin_frequency", "hcr_frequency",
                 "mle_mse_frequency") if k in out]
        _table(f"Complex sinusoid, N={samples}, SNR={snr_db:g} dB: frequency bounds (rad^2)", rows,
               ("quantity", "value", "/ CRB"))
        _write(json_out, out)


@bounds_app.command("covariance")
def covariance(
    dim: int = typer.Option(8, "--dim", min=2, help="Vector dimension N."),
    snapshots: int = typer.Option(16, "--snapshots", "-m", min=1, help="i.i.d. snapshots M per record."),
    rho: float = typer.Option(0.6, "--rho", min=-0.99, max=0.99, help="AR(1) correlation (essential)."),
    variance: float = typer.Option(1.0, "--variance", help="sigma^2 (nuisance)."),
    trials: int = typer.Option(2000, "--trials", min=0, help="Monte Carlo records for the MLE (0: skip)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results to this JSON file."),
) -> None:
    """Fisher matrix, CRB and nuisance CRB of CN(0, R), R_ij = sigma^2 rho^|i-j| (AR(1)), and the MLE's error."""
    import numpy as np

    from nclens.bounds.montecarlo import covariance_study
    from nclens.core.console import progress_bar
    from nclens.core.io import package_versions

    with user_errors():
        with progress_bar(trials > 0, "AR(1) MLE Monte Carlo", trials) as advance:
            out = covariance_study(dim, snapshots, rho, variance, trials, rng=np.random.default_rng(seed),
                                   advance=advance)
        out.update(trials=trials, seed=seed, versions=package_versions())
        rows = [(k, f"{out[k]:.4e}") for k in ("crb_rho", "crb_rho_known_variance", "mle_mse_rho", "crb_variance",
                                                "crb_variance_known_rho", "mle_mse_variance", "score_angle_deg")
                if k in out]
        _table(f"AR(1) covariance, N={dim}, M={snapshots}, rho={rho:g}, sigma^2={variance:g}", rows,
               ("quantity", "value"))
        _write(json_out, out)


@bounds_app.command("sweep")
def sweep(
    samples: int = typer.Option(32, "--samples", "-n", min=2, help="Record length N."),
    snr_db_min: float = typer.Option(-20.0, "--snr-db-min", help="Lowest SNR (dB)."),
    snr_db_max: float = typer.Option(10.0, "--snr-db-max", help="Highest SNR (dB)."),
    snr_db_step: float = typer.Option(1.0, "--snr-db-step", help="SNR step (dB)."),
    trials: int = typer.Option(100000, "--trials", min=0, help="MLE Monte Carlo trials per SNR (0: skip)."),
    per_bin: int = typer.Option(4, "--per-bin", min=1, help="Barankin test points per DFT bin."),
    factor: float = typer.Option(2.0, "--factor", help="Threshold: first SNR with MSE <= factor x CRB."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out: Path | None = typer.Option(None, "--out", help="run folder (default runs/bounds-sinusoid-sweep-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted sweep in --out"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Bounds vs SNR beside the MLE's MSE (a bounds-sweep run: points.jsonl, sweep.json, figures, report)."""
    from nclens.cli.run import execute

    overrides = [f"samples={samples}", f"snr_db_min={snr_db_min}", f"snr_db_max={snr_db_max}",
                 f"snr_db_step={snr_db_step}", f"trials={trials}", f"per_bin={per_bin}", f"factor={factor}",
                 f"seed={seed}"]
    execute("bounds_sinusoid_sweep", overrides, out=out, resume=resume, progress=progress)
