"""``nclens report RUN_DIR``: figures (PNG) and a self-contained report.html of a run folder of any kind.

Example:
    $ nclens report runs/intermediate-digits-20261202-101500
"""

from __future__ import annotations

from pathlib import Path

import typer

from nclens.cli._common import user_errors


def register(app: typer.Typer) -> None:
    """Add ``nclens report``."""

    @app.command("report")
    def report(run_dir: Path = typer.Argument(..., help="a run folder written by nclens run (any kind)")) -> None:
        """Write RUN_DIR/figures/*.png and RUN_DIR/report.html."""
        from nclens.report import make_report

        with user_errors():
            path = make_report(run_dir)
        for png in sorted((run_dir / "figures").glob("*.png")):
            typer.echo(f"figure: {png}")
        typer.echo(f"report: {path}")
