"""``nclens ufm``: solve an unconstrained feature model (CE / PAL / MSE) to high precision.

Example:
    $ nclens ufm --loss pal --classes 4 --dim 8 --per-set 20,10 --wd-w 5e-3 --wd-h 5e-3 --wd-b 5e-3 --json out.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

__all__ = ["register", "parse_per_set", "ufm_report"]


def parse_per_set(text: str) -> tuple[int, ...]:
    """Parse ``"20,10"`` into (20, 10): samples per singleton, per pair, (per triple, ...)."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise ValueError(f"--per-set must be comma-separated integers such as '20,10', got {text!r}") from exc
    if not counts or any(c < 0 for c in counts) or counts[0] <= 0:
        raise ValueError(f"--per-set needs a positive singleton count then non-negative counts, got {text!r}")
    return counts


def ufm_report(sol: Any) -> dict[str, Any]:
    """The JSON content for a solved UFM: config, summary, metrics and the theory comparison."""
    from dataclasses import asdict

    from nclens.core.io import package_versions
    from nclens.multilabel.ufm import ufm_theory, zhu_ce_closed_form

    cfg = sol.config
    out: dict[str, Any] = {"config": asdict(cfg), **sol.summary()}
    singletons_only = all(c == 0 for c in cfg.per_set[1:])
    if cfg.loss in ("pal", "ce"):
        theory = ufm_theory(cfg.loss, cfg.num_classes, cfg.per_set, cfg.wd_w, cfg.wd_h)
        check = {"objective_abs_err": abs(theory["objective"] - sol.objective),
                 "w_row_norm_abs_err": abs(theory["alpha"] - out["weight_row_norm_mean"])}
        for m, c in theory["tagwise_scale"].items():
            key = f"tagwise_scale_m{m}"
            if key in sol.metrics:
                check[f"{key}_abs_err"] = abs(c - sol.metrics[key])
        out["theory"] = {**theory, "check": check}
        if singletons_only and cfg.wd_b > 0:
            zhu = zhu_ce_closed_form(cfg.num_classes, cfg.per_set[0], cfg.wd_w, cfg.wd_h)
            out["zhu_closed_form"] = {
                **zhu,
                "check": {
                    "w_norm_abs_err": abs(zhu["w_norm"] - out["weight_row_norm_mean"]),
                    "h_norm_abs_err": abs(zhu["h_norm"] - out["feature_norm_m1"]),
                    "objective_abs_err": abs(zhu["objective"] - sol.objective),
                },
            }
    out["versions"] = package_versions()
    return out


def register(app: typer.Typer) -> None:
    """Add the ``ufm`` command to the CLI."""

    @app.command("ufm")
    def ufm_command(
        loss: str = typer.Option(
            "pal", "--loss", help="pal (pick-all-label CE) | ce (CE against Y/|Y|) | mse (½‖z − y‖²)"
        ),
        classes: int = typer.Option(4, "--classes", help="number of classes (tags) K"),
        dim: int = typer.Option(8, "--dim", help="feature dimension d"),
        per_set: str = typer.Option("20,10", "--per-set", help="samples per singleton, per pair, per triple ..."),
        wd_w: float = typer.Option(5e-3, "--wd-w", help="λ_W"),
        wd_h: float = typer.Option(5e-3, "--wd-h", help="λ_H"),
        wd_b: float = typer.Option(5e-3, "--wd-b", help="λ_b"),
        seed: int = typer.Option(0, "--seed"),
        max_iter: int = typer.Option(20000, "--max-iter", help="L-BFGS iteration budget"),
        tol: float = typer.Option(1e-12, "--tol", help="target gradient norm"),
        json_out: Path | None = typer.Option(None, "--json", help="write the solution's metrics here"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        threads: int = typer.Option(1, "--threads", help="torch CPU threads (0 = torch's default); small "
                                    "problems run fastest on one"),
    ) -> None:
        """Solve min (1/N)Σ L(W h_i + b, Y_i) + λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖² (float64) and report its NC."""
        from rich.console import Console
        from rich.table import Table

        from nclens.core.io import write_json
        from nclens.multilabel.ufm import UFMConfig, solve_ufm

        try:
            cfg = UFMConfig(loss=loss, num_classes=classes, dim=dim, per_set=parse_per_set(per_set), wd_w=wd_w,
                            wd_h=wd_h, wd_b=wd_b, seed=seed, max_iter=max_iter, tol=tol)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        import torch

        before = torch.get_num_threads()
        if threads > 0:
            torch.set_num_threads(threads)
        try:
            sol = solve_ufm(cfg, progress=progress)
        finally:
            torch.set_num_threads(before)
        report = ufm_report(sol)
        console = Console()
        table = Table(title=f"UFM {loss}: K={classes}, d={dim}, per-set {per_set}")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        for key in ("objective", "loss", "grad_norm", "iterations", "newton_steps"):
            table.add_row(key, f"{report[key]:.6g}" if isinstance(report[key], float) else str(report[key]))
        for key, val in sol.metrics.items():
            table.add_row(key, f"{val:.6g}")
        if "theory" in report:
            for m, c in report["theory"]["tagwise_scale"].items():
                table.add_row(f"theory c_{m}", f"{c:.10g}")
        console.print(table)
        if json_out is not None:
            write_json(json_out, report)
            console.print(f"wrote {json_out}")
