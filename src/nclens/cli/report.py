"""``nclens report RUN_DIR``: figures (PNG) and a self-contained report.html of a run folder.

Example:
    $ nclens report runs/intermediate-digits
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``nclens report`` to the application."""

    @app.command("report")
    def report(run_dir: Path = typer.Argument(..., help="a run folder written by nclens run / demo")) -> None:
        """Write RUN_DIR/figures/*.png and RUN_DIR/report.html."""
        from nclens.report import make_report

        try:
            path = make_report(run_dir)
        except (FileNotFoundError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from exc
        for png in sorted((run_dir / "figures").glob("*.png")):
            typer.echo(f"figure: {png}")
        typer.echo(f"report: {path}")
