"""``nclens demo [--out DIR] [--epochs N]``: the default intermediate-NC experiment on digits, with report.

Needs nothing but the package: trains the default MLP (:func:`nclens.intermediate.experiment.default_config`) on
scikit-learn's bundled digits, measures every layer at several epochs, prints the per-layer table,
runs the fixed-ETF-layers sweep, and writes a run folder with the resolved config, JSONL metrics,
PNG figures and ``report.html``.

Example:
    $ nclens demo --out runs/demo
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``nclens demo`` to the application."""

    @app.command("demo")
    def demo(
        out: Path | None = typer.Option(None, "--out", help="run folder (default runs/demo-<time>)"),
        epochs: int | None = typer.Option(None, "--epochs", help="training epochs (default 100)", min=1),
        fixed_etf: bool = typer.Option(True, "--fixed-etf/--no-fixed-etf", help="run the fixed-ETF sweep"),
        fixed_epochs: int | None = typer.Option(None, "--fixed-epochs", min=1,
                                                help="epochs per fixed-ETF setting (default 40)"),
        resume: bool = typer.Option(False, "--resume", help="continue an interrupted demo in --out"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
        threads: int = typer.Option(1, "--threads", help="torch CPU threads (1 is fastest for this small MLP)"),
    ) -> None:
        """Train a small MLP on digits, measure collapse layer by layer, write figures and report.html."""
        import time

        import torch

        from nclens.core.io import read_jsonl
        from nclens.intermediate.experiment import default_config, run_experiment
        from nclens.report import make_report
        from nclens.report.html import headline
        from nclens.runs.config import replace

        torch.set_num_threads(threads)
        cfg = default_config()
        train = {"progress": progress}
        if epochs is not None:
            every = max(1, epochs // 5)
            train.update({"epochs": epochs, "measure_every": every})
        fixed = {"epochs": fixed_epochs} if fixed_epochs is not None else {}
        cfg = replace(cfg, name="demo", train=train, fixed_etf=fixed)
        if out is None:
            out = Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        started = time.perf_counter()
        try:
            run_dir = run_experiment(cfg, out, resume=resume, fixed_etf=fixed_etf, log=typer.echo)
        except (ValueError, FileExistsError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from exc
        from nclens.cli.run import _print_final

        _print_final(run_dir)
        head = headline(read_jsonl(run_dir / "layers.jsonl"), read_jsonl(run_dir / "history.jsonl"))
        typer.echo(
            f"test accuracy {head.get('test_accuracy', float('nan')):.4f}; within_share falls "
            f"{head.get('within_share_ratio') or float('nan'):.1f}x from the first to the last layer"
        )
        report_path = make_report(run_dir)
        typer.echo(f"run folder: {run_dir}\nreport: {report_path}\ntook {time.perf_counter() - started:.1f} s")
