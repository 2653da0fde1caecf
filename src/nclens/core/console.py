"""Console output in one place: progress bars and plain-text tables.

* :func:`progress_bar` — a rich progress bar on a terminal; on anything else (a pipe, a CI log, a
  file) it prints a plain log line every ~10 % of the work (and at the end) instead of redrawing.
  ``enabled=False`` prints nothing. It yields ``advance(n=1)``.
* :func:`format_table` — ``{row: {column: value}}`` as a plain-text table, values to 4 significant
  digits, metric columns in registry order.

Messages that contain user values (paths, config values) are never passed through rich markup here:
only the table cells, which are escaped.

Example:
    >>> with progress_bar(False, "work", 3) as advance:
    ...     for _ in range(3):
    ...         advance()
    >>> table = format_table({"fc1": {"nc1": 0.5}})
    >>> "fc1" in table and "0.5" in table
    True
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["progress_bar", "format_table", "is_terminal"]


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default stdout) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress_bar(enabled: bool, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar (rich on a terminal, plain log lines otherwise); yields ``advance(n=1)``.

    Args:
        enabled: ``False`` prints nothing.
        description: what is being done (printed as is, never interpreted as markup).
        total: the number of steps, or ``None`` when unknown.
    """
    if not enabled:
        yield lambda n=1: None
        return
    if not is_terminal():
        done = [0]
        marks = [0]
        started = time.perf_counter()

        def log(n: int = 1) -> None:
            done[0] += n
            if total:
                pct = int(100 * done[0] / total)
                if pct // 10 > marks[0] // 10 or done[0] == total:
                    marks[0] = pct
                    print(f"{description}: {done[0]}/{total} ({pct}%) {time.perf_counter() - started:.1f}s",
                          file=sys.stderr, flush=True)

        yield log
        if not total:
            print(f"{description}: {done[0]} steps, {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
        return
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as prog:
        task = prog.add_task(escape(description), total=total)
        yield lambda n=1: prog.advance(task, n)


def format_table(
    metrics: Mapping[str, Mapping[str, Any]], title: str | None = None, row_header: str = "layer"
) -> str:
    """Render ``{row: {column: value}}`` as a plain-text table (rich), floats to 4 significant digits."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from nclens.core.metrics.registry import order_columns

    columns: list[str] = []
    for row in metrics.values():
        columns += [c for c in row if c not in columns]
    columns = order_columns(columns)
    table = Table(title=escape(title) if title else None)
    table.add_column(escape(row_header))
    for col in columns:
        table.add_column(escape(col), justify="right")
    for name, row in metrics.items():
        cells = []
        for col in columns:
            value = row.get(col)
            cells.append("" if value is None else (f"{value:.4g}" if isinstance(value, float) else escape(str(value))))
        table.add_row(escape(str(name)), *cells)
    console = Console(width=max(100, 14 * (len(columns) + 1)), record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table)
    return capture.get()
