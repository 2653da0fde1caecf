"""``nclens mlab``: run a multi-label NC experiment config (experiments/mlab_*.yaml).

Example:
    $ nclens mlab experiments/mlab_digits.yaml --out runs/mlab_digits
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``mlab`` command to the CLI."""

    @app.command("mlab")
    def mlab_command(
        config: Path = typer.Argument(..., exists=True, dir_okay=False, help="YAML config (experiments/mlab_*.yaml)"),
        out: Path | None = typer.Option(None, "--out", help="run folder (default runs/<config name>)"),
        epochs: int | None = typer.Option(None, "--epochs", help="override the config's epochs"),
        device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda[:i]"),
        set_: list[str] = typer.Option([], "--set", help="override a config key, e.g. --set lr=0.1"),
        resume: bool = typer.Option(True, "--resume/--fresh", help="continue a stopped run in the same folder"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        figures: bool = typer.Option(True, "--figures/--no-figures", help="write mlab_nc.png and tagwise_scale.png"),
    ) -> None:
        """Train learned / fixed-ETF / fixed-ETF+dim-K heads with PAL on multilabel-digits; report MLab NC."""
        from rich.console import Console
        from rich.table import Table

        from nclens.multilabel.experiment import load_config, run_mlab

        try:
            cfg = load_config(config, set_, epochs=epochs, device=device)
        except (ValueError, TypeError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        folder = out if out is not None else Path("runs") / cfg.name
        summary = run_mlab(cfg, folder, progress=progress, resume=resume, figures=figures)
        table = Table(title=f"{cfg.name} ({cfg.epochs} epochs)")
        for col in ("variant", "D", "trainable", "s/epoch", "mAP", "F1", "IoU", "nc1", "nc1_sets", "nc2_etf",
                    "residual m2", "c_2", "min NC fall"):
            table.add_column(col, justify="right")
        def g(r: dict, key: str, spec: str) -> str:
            val = r.get(key)
            return "–" if val is None else format(val, spec)

        for r in summary["variants"]:
            table.add_row(r["variant"], str(r["feature_dim"]), f"{r['trainable_params']:,}",
                          f"{r['time_per_epoch_s']:.3f}", f"{100 * r['test_map']:.2f}", f"{100 * r['test_f1']:.2f}",
                          f"{100 * r['test_iou']:.2f}", g(r, "nc1", ".3g"), g(r, "nc1_sets", ".3g"),
                          g(r, "nc2_etf", ".3g"), g(r, "tagwise_residual_m2", ".3g"), g(r, "tagwise_scale_m2", ".3f"),
                          f"{g(r, 'min_fall', '.3g')}× ({r.get('min_fall_metric') or '–'})")
        console = Console(width=max(Console().width, 160))  # the table is wide; never truncate it
        console.print(table)
        console.print("min NC fall: the smallest (value at initialisation / final value) over the MLab NC metrics "
                      "of the training features (report.md lists every one)")
        console.print(f"run folder: {folder} (report.md, summary.csv, mlab_nc.png, tagwise_scale.png)")
