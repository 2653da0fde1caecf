"""``nclens run NAME_OR_PATH [--set key=value ...] [--out DIR] [--resume]`` and ``nclens configs``.

``run`` runs any experiment kind: it reads the config (a file, or the name of a config shipped in the
package — ``nclens configs`` lists them), dispatches on its ``kind:``, applies ``--set`` overrides
(an unknown key lists the valid ones), checks everything before the run folder is created, runs,
writes ``summary.json`` last and (by default) ``report.html``.

Example:
    $ nclens configs
    $ nclens run intermediate_smoke --out runs/smoke
    $ nclens run intermediate_digits --set train.epochs=20 --out runs/digits
    $ nclens run intermediate_digits --out runs/digits --resume          # after Ctrl-C or a kill
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import typer

from nclens.cli._common import user_errors

__all__ = ["register", "execute"]


def execute(
    name_or_path: str,
    overrides: Sequence[str] = (),
    *,
    out: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    threads: int | None = None,
    report: bool = True,
) -> Path:
    """What ``nclens run`` and its aliases (``demo``, ...) do; bad input ends in ``fail()`` (exit code 2)."""
    from nclens.core.env import thread_limit
    from nclens.runs.experiment import load_run_config, run

    with user_errors(), thread_limit(threads):
        spec = load_run_config(name_or_path, overrides)
        run_dir = run(spec, out=out, resume=resume, progress=progress, log=typer.echo)
        if int(os.environ.get("RANK", "0")) != 0:
            return run_dir
        from nclens.runs.folder import RunFolder

        text = spec.experiment.summary_text(RunFolder(run_dir))
        if text:
            typer.echo(text)
        typer.echo(f"run folder: {run_dir}")
        if report:
            from nclens.report import make_report

            typer.echo(f"report: {make_report(run_dir)}")
    return run_dir


def register(app: typer.Typer) -> None:
    """Add ``nclens run`` and ``nclens configs``."""

    @app.command("run")
    def run_command(
        config: str = typer.Argument(..., help="a YAML config file, or the name of a shipped config (nclens configs)"),
        set_: list[str] = typer.Option([], "--set", help="override, e.g. --set train.epochs=20 (repeatable)"),
        out: Path | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoint"),
        report: bool = typer.Option(True, "--report/--no-report", help="write figures and report.html"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
        threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)"),
    ) -> None:
        """Run any experiment config into a run folder (dispatching on its kind)."""
        execute(config, set_, out=out, resume=resume, progress=progress, threads=threads, report=report)

    @app.command("configs")
    def configs_command(
        kind: str | None = typer.Option(None, "--kind", help="only configs of this kind"),
    ) -> None:
        """List the configs shipped in the package: name, kind, rough CPU time, description."""
        from nclens.core.console import format_table
        from nclens.runs.experiment import shipped_configs

        with user_errors():
            rows = {c.name: {"kind": c.kind, "cpu time": c.cpu_time, "description": c.description}
                    for c in shipped_configs() if kind is None or c.kind == kind}
        if not rows:
            typer.echo(f"no shipped configs{f' of kind {kind!r}' if kind else ''}")
            return
        typer.echo(format_table(rows, title="shipped configs (nclens run NAME)", row_header="name").rstrip())
