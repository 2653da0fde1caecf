"""``nclens measure FEATURES``: NC metrics of a feature file (.npz / .safetensors).

Example:
    $ nclens measure feats.npz --json metrics.json
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["register", "fail"]


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` to stderr and exit with ``code`` (nothing is written)."""
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    @app.command("measure")
    def measure_command(
        features: Path = typer.Argument(
            ...,
            help="A .npz or .safetensors file holding 'features' (N×D), 'labels' (N integers, or N×K 0/1 "
            "for multi-label), optional 'weight' (K×D) and 'bias' (K).",
        ),
        json_out: Path | None = typer.Option(None, "--json", help="Write one flat JSON object {metric: value}."),
        batch_size: int = typer.Option(65536, help="Rows streamed through the statistics at a time."),
        trace_only: bool = typer.Option(
            False, "--trace-only", help="Keep no D×D scatter (huge D): every metric but nc1."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print the table."),
    ) -> None:
        """Measure neural collapse of features computed anywhere.

        Without 'weight', labels may be any integers: the classes are the distinct values. With
        'weight', label k is row k of 'weight' (0 <= k < K) and the classifier metrics (nc2_*_w,
        nc3_*, nc4_ncc_mismatch) are added.
        """
        from nclens.core.features import load_feature_file, measure_features
        from nclens.core.io import write_json
        from nclens.core.measure import format_table

        try:
            data = load_feature_file(features)
            metrics = measure_features(data, batch_size=batch_size, scatter="trace" if trace_only else "full")
        except (FileNotFoundError, ValueError, TypeError, MemoryError) as exc:
            fail(str(exc))
        if not quiet:
            n, d = data.features.shape
            rows = {name: {"value": value} for name, value in metrics.items()}
            typer.echo(format_table(rows, title=f"{features.name}: N={n}, D={d}", row_header="metric").rstrip())
        if json_out is not None:
            write_json(json_out, metrics)
            if not quiet:
                typer.echo(f"wrote {json_out}")
