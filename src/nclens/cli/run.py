"""``nclens run CONFIG.yaml [--set key=value ...] [--out DIR] [--resume]``: run an experiment config.

Example:
    $ nclens run experiments/intermediate_digits.yaml --set train.epochs=20 --out runs/digits
    $ nclens run experiments/intermediate_digits.yaml --out runs/digits --resume   # after Ctrl-C
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``nclens run`` to the application."""

    @app.command("run")
    def run(
        config: Path = typer.Argument(..., help="experiment YAML (see experiments/intermediate_*.yaml)"),
        set_: list[str] = typer.Option([], "--set", help="override, e.g. --set train.epochs=20 (repeatable)"),
        out: Path | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint"),
        fixed_etf: bool = typer.Option(False, "--fixed-etf", help="also run the fixed-ETF-layers sweep"),
        report: bool = typer.Option(True, "--report/--no-report", help="write figures and report.html"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
        threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)"),
    ) -> None:
        """Train a classifier, measure neural collapse per layer and epoch, write a run folder."""
        import torch

        from nclens.core.io import RunFolderBusy
        from nclens.intermediate.experiment import run_experiment
        from nclens.runs.config import apply_overrides, load_config

        if threads is not None:
            torch.set_num_threads(threads)
        try:
            cfg = load_config(config, set_)
            if not progress:
                cfg = apply_overrides(cfg, ["train.progress=false"])
            run_dir = run_experiment(cfg, out, resume=resume, fixed_etf=fixed_etf, log=typer.echo)
        except (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError, RunFolderBusy) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from exc
        import os

        if int(os.environ.get("RANK", "0")) != 0:
            return
        typer.echo(f"run folder: {run_dir}")
        _print_final(run_dir)
        if report:
            from nclens.report import make_report

            typer.echo(f"report: {make_report(run_dir)}")


def _print_final(run_dir: Path) -> None:
    from nclens.core.io import read_jsonl
    from nclens.core.measure import format_table

    records = [r for r in read_jsonl(run_dir / "layers.jsonl") if r["split"] == "train"]
    if not records:
        return
    last = max(r["epoch"] for r in records)
    cols = ("within_share", "nc1", "cdnv", "ncc_accuracy", "subspace_alignment", "assoc_memory_alignment")
    table = {r["layer"]: {c: r.get(c) for c in cols} for r in records if r["epoch"] == last}
    typer.echo(format_table(table, title=f"train data, epoch {last}"))
