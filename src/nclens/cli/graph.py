"""``nclens gufm`` and ``nclens gnn``: neural collapse on stochastic block model graphs.

torch_geometric (the ``graph`` extra) is imported only when a command runs, so ``nclens --help``
works without it.

Example:
    $ nclens gufm --graph sbm-regular --nodes 1000 --classes 2 --p 0.025 --q 0.0017 --graphs 2 \\
        --wd 0.005 --epochs 300 --json gufm.json
    $ nclens gnn experiments/gnn_sbm_c2_homophilic.yaml --out runs/gnn_c2
"""

from __future__ import annotations

import time
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the graph commands to the ``nclens`` application."""

    @app.command("gufm")
    def gufm_command(
        graph: str = typer.Option("sbm-regular", "--graph", help="sbm or sbm-regular"),
        nodes: int = typer.Option(1000, "--nodes", help="N nodes per graph"),
        classes: int = typer.Option(2, "--classes", help="C communities"),
        p: float = typer.Option(0.025, "--p", help="within-community edge probability"),
        q: float = typer.Option(0.0017, "--q", help="across-community edge probability"),
        graphs: int = typer.Option(1, "--graphs", help="number of graphs (one gradient step each per epoch)"),
        wd: float = typer.Option(5e-3, "--wd", help="λ = λ_W1 = λ_W2 = λ_H"),
        epochs: int = typer.Option(300, "--epochs"),
        lr: float = typer.Option(10.0, "--lr", help="gradient-descent step size"),
        dim: int = typer.Option(8, "--dim", help="feature dimension d"),
        no_w1: bool = typer.Option(False, "--no-w1", help="drop the root weight W1"),
        seed: int = typer.Option(0, "--seed"),
        log_every: int = typer.Option(10, "--log-every", help="record NC1 every this many epochs"),
        json_out: Path = typer.Option(None, "--json", help="write the result JSON here"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Solve the graph unconstrained feature model on SBM graphs; report NC1 and the structural condition."""
        import torch

        from nclens.core.io import write_json
        from nclens.graph.gufm import GUFMConfig, solve_gufm, structural_condition
        from nclens.graph.sbm import SBMSpec, make_graph, regular_degrees

        if graphs < 1:
            raise typer.BadParameter(f"--graphs must be >= 1, got {graphs}")
        try:
            spec = SBMSpec(kind=graph, num_nodes=nodes, num_classes=classes, p=p, q=q, feature_dim=dim)
            config = GUFMConfig(dim=dim, wd_w1=wd, wd_w2=wd, wd_h=wd, lr=lr, epochs=epochs, use_w1=not no_w1,
                                seed=seed, log_every=log_every)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        sample = [make_graph(spec, seed * 1_000_003 + i)[1:] for i in range(graphs)]
        union = torch.cat([ei + i * nodes for i, (ei, _) in enumerate(sample)], dim=1)
        cond = structural_condition(union, torch.cat([y for _, y in sample]), classes)
        t0 = time.perf_counter()
        result = solve_gufm(sample, classes, config, progress=progress)
        wall = time.perf_counter() - t0
        last = result.history_[-1]
        out = {
            "graph": graph, "nodes": nodes, "classes": classes, "p": p, "q": q, "graphs": graphs, "wd": wd,
            "epochs": epochs, "lr": lr, "dim": dim, "use_w1": not no_w1, "seed": seed,
            "nc1": last["nc1"], "nc1_ha": last["nc1_ha"], "loss": last["loss"],
            "structural_condition_holds": cond.holds, "structural_condition_gap": cond.gap,
            "class_fractions": cond.fractions, "wall_s": wall, "history": result.history_,
        }
        if graph == "sbm-regular":
            out["k_in"], out["k_out"] = regular_degrees(nodes, classes, p, q)
        if json_out is not None:
            write_json(json_out, out)
        typer.echo(
            f"{graph}: nc1(H)={last['nc1']:.3e} nc1(HÂ)={last['nc1_ha']:.3e} loss={last['loss']:.6f} "
            f"structural_condition={'holds' if cond.holds else 'fails'} (gap {cond.gap:.3g}) [{wall:.1f}s]"
        )

    @app.command("gnn")
    def gnn_command(
        config: Path = typer.Argument(..., exists=True, dir_okay=False, help="experiments/gnn_*.yaml"),
        out: Path = typer.Option(None, "--out", help="run folder (default runs/<name>)"),
        threads: int = typer.Option(None, "--threads", help="torch CPU threads (overrides the config)"),
        set_: list[str] = typer.Option([], "--set", help="override a config key, e.g. --set train.epochs=2"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Train a GraphConv GNN on SBM graphs; per-layer node NC, spectral baselines, gUFM, figures."""
        import dataclasses

        from nclens.graph.experiment import ExperimentConfig, run_experiment

        try:
            cfg = ExperimentConfig.from_yaml(config, set_)
        except (ValueError, TypeError) as exc:
            raise typer.BadParameter(f"{config}: {exc}") from exc
        if threads is not None:
            cfg = dataclasses.replace(cfg, threads=threads)
        folder = out if out is not None else Path("runs") / cfg.name
        summary = run_experiment(cfg, folder, progress=progress)
        typer.echo(f"run folder: {folder}")
        typer.echo(f"test overlap {summary['test_overlap']:.4f} ± {summary['test_overlap_std']:.4f}")
        typer.echo("NC1 per layer (H):  " + " ".join(f"{v:.3g}" for v in summary["nc1_per_layer"]))
        typer.echo("NC1 per layer (HÂ): " + " ".join(f"{v:.3g}" for v in summary["nc1_ha_per_layer"]))
        for method, value in summary["spectral_final_overlap"].items():
            typer.echo(f"spectral {method}: overlap {value:.4f}, NC1 {summary['spectral_final_nc1'][method]:.3g}")
        for kind, res in summary.get("gufm", {}).items():
            typer.echo(f"gUFM {kind}: nc1 {res['nc1']:.3e}, structural condition "
                       f"{'holds' if res['structural_condition_holds'] else 'fails'}")
