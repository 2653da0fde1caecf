"""Figures and a self-contained HTML report of a run folder (``nclens report RUN_DIR``).

Example:
    >>> from nclens.report import make_report  # make_report("runs/intermediate-digits") -> report.html
"""

from __future__ import annotations

import os
from pathlib import Path

from nclens.report.figures import write_figures
from nclens.report.html import headline, write_html

__all__ = ["make_report", "write_figures", "write_html", "headline"]


def make_report(run_dir: str | os.PathLike[str]) -> Path:
    """Render ``run_dir/figures/*.png`` and ``run_dir/report.html``; returns the HTML path.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist or is not a run folder.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {str(run)!r} does not exist")
    return write_html(run, write_figures(run))
