"""``nclens metrics``: the metric registry — name, what it needs, definition, source.

Example:
    $ nclens metrics --kind multiclass --format markdown
"""

from __future__ import annotations

import typer

from nclens.cli._common import fail


def register(app: typer.Typer) -> None:
    """Add ``nclens metrics``."""

    @app.command("metrics")
    def metrics_command(
        kind: str = typer.Option("multiclass", "--kind", help="multiclass | multilabel"),
        fmt: str = typer.Option("table", "--format", help="table | markdown"),
    ) -> None:
        """List the registered metrics (the README's metric tables are this command's Markdown output)."""
        import nclens.core.metrics  # noqa: F401 - registers every metric
        from nclens.core.metrics.registry import KINDS, metric_table, metric_table_markdown

        if kind not in KINDS:
            fail(f"--kind must be one of {list(KINDS)}, got {kind!r}")
        if fmt == "markdown":
            typer.echo(metric_table_markdown(kind), nl=False)
        elif fmt == "table":
            from nclens.core.console import format_table

            rows = {r["name"]: {"needs": r["needs"], "definition": r["definition"], "source": r["source"]}
                    for r in metric_table(kind)}
            typer.echo(format_table(rows, title=f"{kind} metrics", row_header="metric").rstrip())
        else:
            fail(f"--format must be 'table' or 'markdown', got {fmt!r}")
