"""``nclens bounds``: quadratic covariance bounds (Cramér–Rao, Barankin, Hammersley–Chapman–Robbins).

Sub-commands (see :mod:`nclens.bounds` for the mathematics):

* ``sinusoid``   -- frequency bounds of a complex sinusoid in white noise and the MLE's Monte Carlo MSE;
* ``covariance`` -- Fisher matrix, CRB and nuisance CRB of an AR(1) Toeplitz covariance, and the MLE's error;
* ``sweep``      -- bounds vs SNR beside the MLE's MSE (threshold effect), as a PNG figure and JSON.

Example:
    $ nclens bounds sinusoid --samples 32 --snr-db 0 --trials 2000 --json sinusoid.json
    $ nclens bounds covariance --dim 8 --snapshots 16 --rho 0.6 --json ar1.json
    $ nclens bounds sweep --samples 32 --snr-db-min -20 --snr-db-max 10 --png bounds.png --json bounds.json
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

bounds_app = typer.Typer(
    help="Quadratic covariance bounds (CRB, Bhattacharyya, Barankin, HCR) as Gram matrices of projected scores.",
    no_args_is_help=True,
    add_completion=False,
)

_BATCH = 2000  # Monte Carlo trials per vectorised batch (one progress-bar step)


def register(app: typer.Typer) -> None:
    """Add the ``bounds`` command group to the ``nclens`` application."""
    app.add_typer(bounds_app, name="bounds")


@contextmanager
def _progress() -> Iterator[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        yield progress


def _fail(exc: Exception) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=2)


def _sinusoid_monte_carlo(
    n_samples: int,
    snr_db: float,
    trials: int,
    *,
    omega: float,
    phase: float,
    rng: Any,
    progress: Any,
    task: Any,
) -> dict[str, float]:
    """MSE of the periodogram-peak MLE of omega, batches of vectorised trials (errors wrapped to [-pi, pi))."""
    import numpy as np

    from nclens.bounds import quadratic as B

    sigma = math.sqrt(10.0 ** (-snr_db / 10.0))
    mu = B.sinusoid_mean([1.0, phase, omega], n_samples)
    errs = []
    done = 0
    with B.blas_single_thread():
        while done < trials:
            k = min(_BATCH, trials - done)
            w = (rng.standard_normal((k, n_samples)) + 1j * rng.standard_normal((k, n_samples))) * (
                sigma / math.sqrt(2)
            )
            errs.append(B.wrap_angle(B.sinusoid_mle_frequency(mu[None, :] + w) - omega))
            done += k
            progress.advance(task, k)
    e = np.concatenate(errs)
    sq = e**2
    return {
        "mse": float(sq.mean()),
        "mse_stderr": float(sq.std(ddof=1) / math.sqrt(e.size)) if e.size > 1 else float("nan"),
        "bias": float(e.mean()),
        "outlier_rate": float(np.mean(np.abs(e) > 2 * math.pi / n_samples)),
    }


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
    from rich.console import Console
    from rich.table import Table

    from nclens.bounds import quadratic as B
    from nclens.core.io import package_versions, write_json

    try:
        res = B.sinusoid_bounds(samples, snr_db, omega=omega, phase=phase, per_bin=per_bin)
    except ValueError as exc:
        raise _fail(exc) from exc
    out: dict[str, Any] = {
        "model": "y_n = a exp(i(omega n + phi)) + w_n, w ~ CN(0, sigma^2), SNR = a^2/sigma^2, a = 1",
        **res,
    }
    if trials > 0:
        with _progress() as progress:
            task = progress.add_task(f"MLE Monte Carlo @ {snr_db:g} dB", total=trials)
            mc = _sinusoid_monte_carlo(
                samples,
                snr_db,
                trials,
                omega=omega,
                phase=phase,
                rng=np.random.default_rng(seed),
                progress=progress,
                task=task,
            )
        out.update(
            mle_mse_frequency=mc["mse"],
            mle_mse_frequency_stderr=mc["mse_stderr"],
            mle_bias_frequency=mc["bias"],
            mle_outlier_rate=mc["outlier_rate"],
            mle="zero-padded FFT periodogram peak (8N, power of two) + 6 vectorised Newton steps on |A(omega)|^2",
        )
    out.update(trials=trials, seed=seed, versions=package_versions())
    table = Table(title=f"Complex sinusoid, N={samples}, SNR={snr_db:g} dB: frequency bounds (rad^2)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("/ CRB", justify="right")
    crb = res["crb_frequency"]
    for key in [
        "crb_frequency",
        "crb_frequency_known_phase",
        "barankin_frequency",
        "hcr_frequency",
        "mle_mse_frequency",
    ]:
        if key in out:
            table.add_row(key, f"{out[key]:.4e}", f"{out[key] / crb:.3f}")
    Console().print(table)
    if json_out is not None:
        write_json(json_out, out)
        Console().print(f"wrote {json_out}")


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
    from rich.console import Console
    from rich.table import Table

    from nclens.bounds import quadratic as B
    from nclens.core.io import package_versions, write_json

    try:
        R = B.ar1_covariance(dim, rho, variance)
        dR = B.ar1_covariance_derivatives(dim, rho, variance)
    except ValueError as exc:
        raise _fail(exc) from exc
    J = B.cn_cov_fisher(R, dR, snapshots=snapshots)
    crb = np.linalg.inv(J)
    out: dict[str, Any] = {
        "model": "M i.i.d. snapshots y ~ CN(0, R), R_ij = sigma^2 rho^|i-j| (AR(1) Toeplitz); theta = (rho, sigma^2)",
        "dim": dim,
        "snapshots": snapshots,
        "theta": {"rho": rho, "variance": variance},
        "fisher": J,
        "crb": crb,
        "crb_rho": float(B.nuisance_crb(J, [0])[0, 0]),
        "crb_rho_projection": float(B.cn_cov_nuisance_crb(R, dR, [0], snapshots=snapshots)[0, 0]),
        "crb_rho_known_variance": float(1.0 / J[0, 0]),
        "crb_variance": float(crb[1, 1]),
        "crb_variance_known_rho": float(1.0 / J[1, 1]),
        "score_angle_deg": float(np.degrees(np.arccos(abs(J[0, 1]) / math.sqrt(J[0, 0] * J[1, 1])))),
    }
    if trials > 0:
        rng = np.random.default_rng(seed)
        rhos, vars_, scores = [], [], []
        batch = max(1, _BATCH // max(1, snapshots // 8))
        with _progress() as progress, B.blas_single_thread():
            task = progress.add_task("AR(1) MLE Monte Carlo", total=trials)
            done = 0
            while done < trials:
                k = min(batch, trials - done)
                y = B.sample_cn(np.zeros(dim), R, (k, snapshots), rng)
                r_hat, v_hat = B.ar1_mle(y)
                rhos.append(r_hat)
                vars_.append(v_hat)
                scores.append(B.cn_cov_scores(y.reshape(-1, dim), R, dR).reshape(k, snapshots, 2).sum(axis=1))
                done += k
                progress.advance(task, k)
        er = np.concatenate(rhos) - rho
        ev = np.concatenate(vars_) - variance
        out.update(
            mle_mse_rho=float(np.mean(er**2)),
            mle_bias_rho=float(er.mean()),
            mle_mse_variance=float(np.mean(ev**2)),
            mle_bias_variance=float(ev.mean()),
            mle_error_covariance=np.cov(np.stack([er, ev])),
            fisher_monte_carlo=B.gram(np.concatenate(scores)),
            mle="concentrated likelihood (tridiagonal AR(1) inverse), grid |rho|<0.999 + golden section",
        )
    out.update(trials=trials, seed=seed, versions=package_versions())
    table = Table(title=f"AR(1) covariance, N={dim}, M={snapshots}, rho={rho:g}, sigma^2={variance:g}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key in [
        "crb_rho",
        "crb_rho_known_variance",
        "mle_mse_rho",
        "crb_variance",
        "crb_variance_known_rho",
        "mle_mse_variance",
        "score_angle_deg",
    ]:
        if key in out:
            table.add_row(key, f"{out[key]:.4e}")
    Console().print(table)
    if json_out is not None:
        write_json(json_out, out)
        Console().print(f"wrote {json_out}")


def _sweep_figure(out: dict[str, Any]) -> bytes:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = np.asarray(out["snr_db"])
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.semilogy(s, out["crb_frequency"], "k-", lw=2, label="CRB (amplitude, phase unknown)")
    ax.semilogy(s, out["crb_frequency_known_phase"], color="0.55", ls="--", label="CRB (phase known)")
    ax.semilogy(s, out["barankin_frequency"], "C0-", lw=1.8, label="Barankin (+ nuisance Fisher scores)")
    ax.semilogy(s, out["hcr_frequency"], "C1-.", lw=1.5, label="Hammersley–Chapman–Robbins")
    if out.get("mle_mse_frequency") is not None:
        ax.semilogy(s, out["mle_mse_frequency"], "C3o", ms=4, label=f"MLE MSE ({out['trials']} trials)")
    ax.axhline(math.pi**2 / 3, color="0.3", ls=":", lw=1, label="uniform error on the circle, $\\pi^2/3$")
    finite = [v for v in out["mle_mse_frequency"] or [] if v is not None]
    top = max(30.0, 3 * max(finite)) if finite else 30.0
    for key, color, name in [("mle", "C3", "MLE"), ("barankin", "C0", "Barankin"), ("hcr", "C1", "HCR")]:
        thr = out["threshold_snr_db"].get(key)
        if thr is not None:
            ax.axvline(thr, color=color, ls=":", lw=1.2)
            ax.text(thr, top / 3, f" {name}\n {thr:g} dB", color=color, fontsize=8, va="top")
    ax.set_ylim(0.5 * min(out["crb_frequency"]), top)
    ax.set_xlabel("SNR $a^2/\\sigma^2$ (dB)")
    ax.set_ylabel("frequency MSE / bound (rad$^2$)")
    ax.set_title(
        f"Complex sinusoid, N = {out['n_samples']}: bounds vs SNR (threshold factor {out['factor']:g}×CRB)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left", framealpha=0.9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@bounds_app.command("sweep")
def sweep(
    samples: int = typer.Option(32, "--samples", "-n", min=2, help="Record length N."),
    snr_db_min: float = typer.Option(-20.0, "--snr-db-min", help="Lowest SNR (dB)."),
    snr_db_max: float = typer.Option(10.0, "--snr-db-max", help="Highest SNR (dB)."),
    snr_db_step: float = typer.Option(1.0, "--snr-db-step", min=1e-3, help="SNR step (dB)."),
    trials: int = typer.Option(2000, "--trials", min=0, help="MLE Monte Carlo trials per SNR (0: skip)."),
    omega: float = typer.Option(1.0, "--omega", help="True frequency (rad/sample)."),
    phase: float = typer.Option(0.5, "--phase", help="True phase at n = 0 (rad)."),
    per_bin: int = typer.Option(4, "--per-bin", min=1, help="Barankin test points per DFT bin."),
    factor: float = typer.Option(
        2.0, "--factor", min=1.0, help="Threshold: first SNR with MSE <= factor x CRB."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    png: Path | None = typer.Option(None, "--png", help="Write the bounds-vs-SNR figure (PNG)."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the sweep to this JSON file."),
) -> None:
    """Bounds vs SNR beside the MLE's MSE: Barankin/HCR show the threshold effect that the CRB misses."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from nclens.bounds import quadratic as B
    from nclens.core.io import atomic_write_bytes, package_versions, write_json

    if snr_db_max < snr_db_min:
        raise _fail(ValueError(f"--snr-db-max ({snr_db_max}) must be >= --snr-db-min ({snr_db_min})"))
    grid = np.round(np.arange(snr_db_min, snr_db_max + 1e-9, snr_db_step), 6)
    keys = ["crb_frequency", "crb_frequency_known_phase", "barankin_frequency", "hcr_frequency"]
    out: dict[str, Any] = {k: [] for k in keys}
    out.update(
        n_samples=samples,
        snr_db=grid,
        trials=trials,
        seed=seed,
        factor=factor,
        hcr_argmax_delta=[],
        mle_mse_frequency=[] if trials > 0 else None,
        mle_mse_frequency_stderr=[] if trials > 0 else None,
    )
    seeds = np.random.SeedSequence(seed).spawn(grid.size)
    try:
        with _progress() as progress:
            task = progress.add_task("sweep (bounds + MLE Monte Carlo)", total=grid.size * max(trials, 1))
            for s_db, ss in zip(grid, seeds):
                res = B.sinusoid_bounds(samples, float(s_db), omega=omega, phase=phase, per_bin=per_bin)
                for k in keys:
                    out[k].append(res[k])
                out["hcr_argmax_delta"].append(res["hcr_argmax_delta"])
                if trials > 0:
                    mc = _sinusoid_monte_carlo(
                        samples,
                        float(s_db),
                        trials,
                        omega=omega,
                        phase=phase,
                        rng=np.random.default_rng(ss),
                        progress=progress,
                        task=task,
                    )
                    out["mle_mse_frequency"].append(mc["mse"])
                    out["mle_mse_frequency_stderr"].append(mc["mse_stderr"])
                else:
                    progress.advance(task, 1)
    except ValueError as exc:
        raise _fail(exc) from exc
    crb = out["crb_frequency"]
    out["threshold_snr_db"] = {
        "definition": f"lowest grid SNR from which on the quantity stays <= {factor:g} x CRB",
        "barankin": B.threshold_snr_db(grid, out["barankin_frequency"], crb, factor=factor),
        "hcr": B.threshold_snr_db(grid, out["hcr_frequency"], crb, factor=factor),
        "mle": B.threshold_snr_db(grid, out["mle_mse_frequency"], crb, factor=factor) if trials > 0 else None,
    }
    out["barankin_test_points"] = {
        "frequency_offsets": B.sinusoid_barankin_offsets(samples, per_bin),
        "phase_offsets": "-arg sum_n exp(i Delta n) (best phase per offset)",
        "plus": "Fisher scores of (amplitude, phase, frequency) and the HCR argmax offset",
    }
    out.update(omega=omega, phase=phase, versions=package_versions())
    table = Table(title=f"Sweep N={samples}: threshold SNR (<= {factor:g} x CRB)")
    table.add_column("quantity")
    table.add_column("threshold SNR (dB)", justify="right")
    for k in ["mle", "barankin", "hcr"]:
        v = out["threshold_snr_db"][k]
        table.add_row(k, "n/a" if v is None else f"{v:g}")
    console = Console()
    console.print(table)
    if png is not None:
        atomic_write_bytes(png, _sweep_figure(out))
        console.print(f"wrote {png}")
    if json_out is not None:
        write_json(json_out, out)
        console.print(f"wrote {json_out}")
