"""Reports of run folders of any kind: figure primitives, a self-contained report.html, console tables.

``nclens report RUN_DIR`` (or :func:`make_report`) reads the kind from ``config.yaml``, asks that kind's
experiment for its figures (drawn from the folder's files) and its headline and tables, and writes
``figures/*.png`` and ``report.html``.

Example:
    >>> from nclens.report import make_report  # make_report("runs/intermediate-digits") -> report.html
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["make_report"]


def make_report(run_dir: str | os.PathLike[str]) -> Path:
    """Render ``run_dir/figures/*.png`` and ``run_dir/report.html`` for a run of any kind; returns the HTML path.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist or holds no nclens run.
        ValueError: its kind is unknown.
    """
    from nclens.core.io import atomic_write_text
    from nclens.report.html import render_html
    from nclens.runs.experiment import get_experiment
    from nclens.runs.folder import RunFolder

    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise FileNotFoundError(f"run folder {str(run.path)!r} does not exist")
    experiment = get_experiment(run.kind)
    figures = experiment.figures(run)
    content = experiment.report(run)
    return atomic_write_text(run.file("report.html"), render_html(run, figures, content))
