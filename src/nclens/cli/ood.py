"""``nclens ood CONFIG.yaml``: the NC-control-for-OOD experiment (baseline / +entropy / +projector / both).

Example:
    $ nclens ood experiments/ood_digits.yaml --out runs/ood_digits
    $ nclens ood experiments/ood_digits.yaml --out runs/quick --set train.epochs=5 --set "seeds=[0]"
    $ nclens ood experiments/ood_digits_sweep.yaml --out runs/ood_digits_sweep   # α sweep
    $ nclens ood experiments/ood_digits.yaml --out runs/full --set "transfer.shots_per_class=null"
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]


def _fail(message: str, code: int = 2) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    @app.command("ood")
    def ood_command(
        config: Path = typer.Argument(..., help="YAML config (see experiments/ood_*.yaml)."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Run folder (default runs/<name>); rerunning with it resumes."
        ),
        overrides: list[str] = typer.Option(
            [], "--set", "-s", help="Override a config key: key=value or section.key=value (YAML value)."
        ),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print the summary table."),
    ) -> None:
        """Train and evaluate the four NC-control variants; write tables, correlations and figures.

        Per variant, KoLeo weight α and layer (encoder, projector): NC1–NC4, OOD detection (AUROC,
        AUPR, FPR95 of each score and OOD set) and linear-probe transfer accuracy (few-shot with
        transfer.shots_per_class, and on the full transfer split); then the Pearson correlation of
        NC1 with detection and with transfer (Harun, Gallardo & Kanan, ICML 2025).
        """
        from nclens.ood.experiment import format_summary, load_config, run_experiment

        try:
            cfg = load_config(config, overrides)
        except (FileNotFoundError, ValueError, TypeError) as exc:
            _fail(str(exc))
        folder = out if out is not None else Path("runs") / cfg.name
        try:
            result = run_experiment(cfg, folder, progress=progress)
        except (FileNotFoundError, ValueError, ImportError) as exc:
            _fail(str(exc))
        if not quiet:
            typer.echo(format_summary(result))
            typer.echo(f"run folder: {folder}")
