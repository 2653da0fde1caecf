"""``nclens ood CONFIG``: the NC-control-for-OOD experiment — a thin alias of ``nclens run`` for kind ``ood``.

Example:
    $ nclens ood ood_digits --out runs/ood_digits
    $ nclens ood ood_digits --out runs/quick --set train.epochs=5 --set "seeds=[0]"
    $ nclens ood ood_fashion_mnist --out runs/ood_fmnist          # the real-image protocol (issue 18)
    $ nclens ood ood_digits --out runs/ood_digits --resume        # after Ctrl-C or a kill
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``nclens ood``."""

    @app.command("ood")
    def ood_command(
        config: str = typer.Argument("ood_digits",
                                     help="an ood config file or shipped name (nclens configs --kind ood)"),
        out: Path | None = typer.Option(None, "--out", "-o", help="run folder (default runs/<name>-<time>)"),
        set_: list[str] = typer.Option([], "--set", "-s", help="override, e.g. --set train.epochs=5 (repeatable)"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out (finished jobs are kept)"),
        report: bool = typer.Option(True, "--report/--no-report", help="write figures and report.html"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
        threads: int = typer.Option(1, "--threads", min=1,
                                     help="torch CPU threads (1 is fastest for these small nets)"),
    ) -> None:
        """Train the NC-control variants (baseline / +KoLeo / +ETF projector / both); NC, OOD detection and
        transfer per layer, and their correlations (Harun, Gallardo & Kanan, ICML 2025)."""
        from nclens.cli._common import fail, user_errors
        from nclens.cli.run import execute
        from nclens.runs.experiment import load_run_config

        with user_errors():
            kind = load_run_config(config).experiment.kind
        if kind != "ood":
            fail(f"{config!r} is a {kind!r} config; nclens ood runs kind 'ood' configs (nclens configs --kind ood)")
        execute(config, set_, out=out, resume=resume, progress=progress, threads=threads, report=report)
