"""``nclens gnn`` and ``nclens gufm``: thin aliases of ``nclens run`` for the graph kinds.

``nclens gnn CONFIG`` runs a shipped ``gnn`` config (or a YAML file) into a run folder — the same as
``nclens run CONFIG``; ``nclens gufm`` runs the shipped ``gufm_c2`` config (or ``--config``) with its
options turned into ``--set`` overrides. Every run-folder rule is the runner's: an existing run is
refused without ``--resume``, bad values are refused before a folder is created.

Example:
    $ nclens gnn gnn_sbm_c2_homophilic --out runs/gnn_c2
    $ nclens gufm --graph sbm-regular --epochs 300 --out runs/gufm_reg
    $ nclens gufm --config gufm_paper_c2_cpu --out runs/gufm_paper      # paper's setting, 1 graph per family
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the graph commands to the ``nclens`` application."""

    @app.command("gnn")
    def gnn_command(
        config: str = typer.Argument("gnn_sbm_c2_homophilic", help="a shipped gnn config (nclens configs --kind gnn) "
                                                                   "or a YAML file"),
        out: Path | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
        set_: list[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.epochs=2"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoints"),
        report: bool = typer.Option(True, "--report/--no-report", help="write figures and report.html"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads"),
    ) -> None:
        """Train GraphConv GNNs on SBM graphs: node NC per layer, trace ratios, spectral baselines (kind gnn)."""
        from nclens.cli.run import execute

        execute(config, set_, out=out, resume=resume, progress=progress, threads=threads, report=report)

    @app.command("gufm")
    def gufm_command(
        config: str = typer.Option("gufm_c2", "--config", help="a shipped gufm config or a YAML file"),
        graph: str | None = typer.Option(None, "--graph", help="only this family: sbm or sbm-regular"),
        nodes: int | None = typer.Option(None, "--nodes", help="N nodes per graph"),
        classes: int | None = typer.Option(None, "--classes", help="C communities"),
        p: float | None = typer.Option(None, "--p", help="nominal within-community edge probability"),
        q: float | None = typer.Option(None, "--q", help="nominal across-community edge probability"),
        graphs: int | None = typer.Option(None, "--graphs", help="graphs per family (one step each per epoch)"),
        wd: float | None = typer.Option(None, "--wd", help="λ = λ_W1 = λ_W2 = λ_H"),
        epochs: int | None = typer.Option(None, "--epochs"),
        lr: float | None = typer.Option(None, "--lr", help="gradient-descent step size"),
        dim: int | None = typer.Option(None, "--dim", help="feature dimension d"),
        no_w1: bool = typer.Option(False, "--no-w1", help="drop the root weight W1"),
        seed: int | None = typer.Option(None, "--seed"),
        log_every: int | None = typer.Option(None, "--log-every", help="record NC1 every this many epochs"),
        out: Path | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
        set_: list[str] = typer.Option([], "--set", help="any other override, e.g. --set solver.init_std=1"),
        resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its checkpoints"),
        report: bool = typer.Option(True, "--report/--no-report", help="write figures and report.html"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
        threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads"),
    ) -> None:
        """Solve the graph unconstrained feature model on regular vs plain SBM graphs (kind gufm)."""
        from nclens.cli.run import execute

        options = {
            "families": f"[{graph}]" if graph is not None else None, "graph.num_nodes": nodes,
            "graph.num_classes": classes, "graph.p": p, "graph.q": q, "graphs": graphs, "solver.epochs": epochs,
            "solver.lr": lr, "solver.dim": dim, "solver.seed": seed, "solver.log_every": log_every,
        }
        overrides = [f"{key}={value}" for key, value in options.items() if value is not None]
        if wd is not None:
            overrides += [f"solver.wd_w1={wd}", f"solver.wd_w2={wd}", f"solver.wd_h={wd}"]
        if no_w1:
            overrides.append("solver.use_w1=false")
        if epochs is not None and log_every is None:
            overrides.append(f"solver.log_every={max(1, epochs // 100)}")
        if epochs is not None:
            overrides.append("report_epochs=[]")
        execute(config, [*overrides, *set_], out=out, resume=resume, progress=progress, threads=threads, report=report)
