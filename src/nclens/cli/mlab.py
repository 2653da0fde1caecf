"""``nclens mlab``: a thin alias of ``nclens run`` for the multi-label configs (kinds multilabel, multilabel-ufm).

Example:
    $ nclens mlab mlab_digits --out runs/mlab_digits
    $ nclens mlab ml_fashion_mnist --set train.seeds=[0] --out runs/mlf
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``mlab`` command to the CLI."""

    @app.command("mlab")
    def mlab_command(
        config: str = typer.Argument("mlab_digits", help="a shipped multi-label config (nclens configs --kind "
                                     "multilabel) or a YAML file"),
        out: Path | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
        set_: list[str] = typer.Option([], "--set", help="override, e.g. --set train.epochs=100 (repeatable)"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoints"),
        report: bool = typer.Option(True, "--report/--no-report", help="write figures and report.html"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
        threads: int = typer.Option(1, "--threads", min=1,
                                    help="torch CPU threads (1 is fastest for these small nets)"),
    ) -> None:
        """Train learned / fixed-ETF / fixed-ETF+D=K heads with the PAL losses; MLab NC over training."""
        from nclens.cli.run import execute

        execute(config, set_, out=out, resume=resume, progress=progress, threads=threads, report=report)
