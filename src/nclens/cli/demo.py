"""``nclens demo``: the main job — the shipped ``intermediate_digits`` config, with its report.

Trains a 6x128 BatchNorm MLP on scikit-learn's bundled digits, measures every layer at several epochs,
runs the fixed-ETF-layers sweep and writes a run folder with figures and ``report.html``. A thin
alias of ``nclens run intermediate_digits``.

Example:
    $ nclens demo --out runs/demo
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``nclens demo``."""

    @app.command("demo")
    def demo(
        out: Path | None = typer.Option(None, "--out", help="run folder (default runs/intermediate-digits-<time>)"),
        epochs: int | None = typer.Option(None, "--epochs", help="training epochs (default 100)", min=1),
        fixed_etf: bool = typer.Option(True, "--fixed-etf/--no-fixed-etf", help="run the fixed-ETF sweep"),
        fixed_epochs: int | None = typer.Option(None, "--fixed-epochs", min=1,
                                                help="epochs per fixed-ETF setting (default 40)"),
        set_: list[str] = typer.Option([], "--set", help="any other override, e.g. --set model.width=64"),
        resume: bool = typer.Option(False, "--resume", help="continue an interrupted demo in --out"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
        threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads (1 is fastest for this small MLP)"),
    ) -> None:
        """Train a small MLP on digits, measure collapse layer by layer, write figures and report.html."""
        from nclens.cli.run import execute

        overrides = [f"fixed_etf.enabled={str(fixed_etf).lower()}"]
        if epochs is not None:
            overrides += [f"train.epochs={epochs}", f"train.measure_every={max(1, epochs // 5)}"]
        if fixed_epochs is not None:
            overrides.append(f"fixed_etf.epochs={fixed_epochs}")
        execute("intermediate_digits", [*overrides, *set_], out=out, resume=resume, progress=progress,
                threads=threads)
