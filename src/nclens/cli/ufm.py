"""``nclens ufm``: solve one unconstrained feature model (pal / pal_normalized / mse_half) to high precision.

A solver command (no run folder); studies over restarts and λ are the ``multilabel-ufm`` configs
(``nclens run mlab_ufm_restarts``). Bad input ends in one plain-text error (exit code 2).

Example:
    $ nclens ufm --loss pal --classes 4 --dim 8 --per-set 20,10 --wd-w 5e-3 --wd-h 5e-3 --wd-b 5e-3 --json out.json
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from nclens.cli._common import user_errors

__all__ = ["register", "parse_counts"]


def parse_counts(text: str, option: str) -> tuple[int, ...]:
    """Parse ``"20,10"`` into (20, 10); a non-integer part is an error naming ``option``."""
    try:
        return tuple(int(part) for part in text.split(",")) if text.strip() else ()
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers such as '20,10', got {text!r}") from None


def register(app: typer.Typer) -> None:
    """Add the ``ufm`` command to the CLI."""

    @app.command("ufm")
    def ufm_command(
        loss: str = typer.Option("pal", "--loss", help="pal (Σ_{k∈Y} −log p_k, 0/1 targets) | pal_normalized "
                                 "(CE against Y/|Y|, the paper's 0.5/0.5 targets) | mse_half (½‖z − y‖²)"),
        classes: int = typer.Option(4, "--classes", help="number of classes (tags) K"),
        dim: int = typer.Option(8, "--dim", help="feature dimension d"),
        per_set: str = typer.Option("20,10", "--per-set", help="samples per singleton, per pair, per triple ..."),
        within: str = typer.Option("", "--within", help="counts given in turn to the label sets of multiplicity "
                                   "--within-m (within-multiplicity imbalance), e.g. 10,5"),
        within_m: int = typer.Option(2, "--within-m", help="the multiplicity --within applies to"),
        wd_w: float = typer.Option(5e-3, "--wd-w", help="λ_W"),
        wd_h: float = typer.Option(5e-3, "--wd-h", help="λ_H"),
        wd_b: float = typer.Option(5e-3, "--wd-b", help="λ_b"),
        seed: int = typer.Option(0, "--seed", help="seed of the random initialisation"),
        max_iter: int = typer.Option(20000, "--max-iter", help="L-BFGS iteration budget"),
        tol: float = typer.Option(1e-12, "--tol", help="target gradient norm (finite, > 0)"),
        json_out: Path | None = typer.Option(None, "--json", help="write the solution's metrics here"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        threads: int = typer.Option(1, "--threads", help="torch CPU threads (a positive integer); small problems "
                                    "run fastest on one"),
    ) -> None:
        """Solve min (1/N)Σ L(W h_i + b, Y_i) + λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖² (float64) and report its NC."""
        from nclens.core.env import thread_limit
        from nclens.core.io import package_versions, write_json
        from nclens.multilabel.ufm import UFMConfig, solution_report, solve_ufm

        with user_errors():
            if not (isinstance(threads, int) and threads >= 1):
                raise ValueError(f"--threads must be a positive integer, got {threads!r}")
            for name, value in (("--tol", tol), ("--wd-w", wd_w), ("--wd-h", wd_h), ("--wd-b", wd_b)):
                if not math.isfinite(value):
                    raise ValueError(f"{name} must be a finite number, got {value!r}")
            cfg = UFMConfig(loss=loss, num_classes=classes, dim=dim, per_set=parse_counts(per_set, "--per-set"),
                            within=parse_counts(within, "--within"), within_m=within_m, wd_w=wd_w, wd_h=wd_h,
                            wd_b=wd_b, seed=seed, max_iter=max_iter, tol=tol)
            if json_out is not None and json_out.is_dir():
                raise IsADirectoryError(f"--json {str(json_out)!r} is a directory; give a file name")
            with thread_limit(threads):
                sol = solve_ufm(cfg, progress=progress)
            report = {**solution_report(sol), "versions": package_versions()}
            rows = {key: {"value": report[key]} for key in ("objective", "loss", "grad_norm", "iterations",
                                                            "newton_steps")}
            rows.update({key: {"value": val} for key, val in sol.metrics.items()})
            for m, c in (report.get("theory") or {}).get("tagwise_scale", {}).items():
                rows[f"theory c_{m}"] = {"value": c}
            for m, groups in (report.get("tagwise_scale_by_count") or {}).items():
                for count, values in groups.items():
                    rows[f"c_S, m={m}, {count} samples"] = {"value": sum(values) / len(values)}
            typer.echo(f"UFM {loss}: K={classes}, d={dim}, per-set {per_set}"
                       + (f", within {within} (m={within_m})" if within else ""))
            width = max(len(k) for k in rows)
            for key, row in rows.items():
                value = row["value"]
                text = f"{value:.10g}" if isinstance(value, float) else str(value)
                typer.echo(f"  {key:<{width}}  {text}")
            if json_out is not None:
                write_json(json_out, report)
                typer.echo(f"wrote {json_out}")
