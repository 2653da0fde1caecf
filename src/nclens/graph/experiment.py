"""Run a GNN neural-collapse experiment (``experiments/gnn_*.yaml``) into a run folder with figures.

One run (Kothapalli, Tirer & Bruna 2023, Sections 4–6) on SBM community detection:

1. seeded train / test sets of SBM (or regular-SBM) graphs with N(0, 1) node features;
2. a :class:`~nclens.graph.gnn.GraphConvGNN` trained with the permutation-invariant loss, one graph
   per step (Adam), the test overlap logged every epoch;
3. on the test graphs, every layer's node NC (nc1, nc1_trace, nc2_etf of H and H Â; nc3 against the
   head's W1, W2), mean ± std over graphs, and every hidden layer's Tr Σ_W / Tr Σ_B ratios beside
   their T_W / T_B predictions;
4. spectral baselines (Bethe Hessian, normalised Laplacian) by projected power iteration: overlap
   and NC1 per iteration;
5. the gUFM on regular vs plain SBM graphs with the same p, q: NC1 trajectories and the structural
   condition.

Files written (all atomically): ``config.json``, ``versions.json``, ``train_log.jsonl``,
``layers.json`` + ``layers.csv``, ``spectral.json``, ``gufm.json``, ``summary.json``, and the figures
``nc1_layers.png`` (NC1 per layer, log), ``overlap.png`` and ``gufm.png``.

Example:
    >>> from nclens.graph.experiment import ExperimentConfig
    >>> cfg = ExperimentConfig.from_dict({"name": "tiny", "graph": {"num_nodes": 100, "p": 0.1, "q": 0.01}})
    >>> cfg.graph.num_nodes, cfg.train.loss
    (100, 'mse')
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nclens.core.io import append_jsonl, atomic_write_text, package_versions, write_json, write_png
from nclens.graph.sbm import SBMDataset, SBMSpec, regular_degrees

__all__ = ["ModelSettings", "TrainSettings", "SpectralSettings", "GUFMSettings", "ExperimentConfig", "run_experiment"]


@dataclass(frozen=True)
class ModelSettings:
    """GNN architecture (see :class:`nclens.graph.gnn.GNNConfig`)."""

    hidden: int = 16
    num_layers: int = 8
    use_w1: bool = True
    batch_norm: bool = True


@dataclass(frozen=True)
class TrainSettings:
    """Training: ``epochs`` passes over the train graphs, one graph per Adam step."""

    epochs: int = 5
    lr: float = 0.01
    weight_decay: float = 5e-4
    loss: str = "mse"

    def __post_init__(self) -> None:
        if self.loss not in ("mse", "ce"):
            raise ValueError(f"train.loss must be 'mse' or 'ce', got {self.loss!r}")
        if self.epochs < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"need epochs >= 1, lr > 0, weight_decay >= 0; got {self.epochs}, {self.lr}, "
                             f"{self.weight_decay}")


@dataclass(frozen=True)
class SpectralSettings:
    """Spectral baselines on the first ``graphs`` test graphs."""

    methods: tuple[str, ...] = ("bethe", "laplacian")
    iterations: int = 40
    every: int = 2
    graphs: int = 4

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in ("bethe", "laplacian")]
        if bad:
            raise ValueError(f"spectral.methods must be among 'bethe', 'laplacian'; got {bad}")


@dataclass(frozen=True)
class GUFMSettings:
    """gUFM on regular vs plain SBM graphs of the experiment's N, C, p, q."""

    enabled: bool = True
    graphs: int = 2
    epochs: int = 300
    lr: float = 10.0
    wd: float = 5e-3
    dim: int = 8


@dataclass(frozen=True)
class ExperimentConfig:
    """A full GNN-NC experiment (the YAML file's sections map to the nested settings)."""

    name: str = "gnn"
    seed: int = 0
    graph: SBMSpec = field(default_factory=SBMSpec)
    train_graphs: int = 64
    test_graphs: int = 8
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    spectral: SpectralSettings = field(default_factory=SpectralSettings)
    gufm: GUFMSettings = field(default_factory=GUFMSettings)
    threads: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a (YAML-loaded) mapping; unknown keys are an error naming the valid ones."""
        from nclens.runs.config import build_config

        return build_config(cls, data)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
        """Load a YAML experiment file and apply ``section.key=value`` overrides."""
        from nclens.runs.config import load_yaml_config

        return load_yaml_config(cls, path, overrides)


# ---------------------------------------------------------------- stages
def _train(cfg: ExperimentConfig, train_set: SBMDataset, test_set: SBMDataset, out: Path, progress: bool):  # noqa: ANN202
    from rich.progress import Progress

    from nclens.graph.gnn import GNNConfig, GraphConvGNN, overlap, permutation_invariant_loss

    c = cfg.graph.num_classes
    torch.manual_seed(cfg.seed)
    net = GraphConvGNN(GNNConfig(in_dim=cfg.graph.feature_dim, hidden=cfg.model.hidden,
                                 num_layers=cfg.model.num_layers, num_classes=c,
                                 use_w1=cfg.model.use_w1, batch_norm=cfg.model.batch_norm))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    log = out / "train_log.jsonl"
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("train GNN", total=cfg.train.epochs * len(train_set))
        for epoch in range(1, cfg.train.epochs + 1):
            net.train()
            losses = []
            for idx in torch.randperm(len(train_set), generator=gen).tolist():
                g = train_set[idx]
                opt.zero_grad()
                loss = permutation_invariant_loss(net(g.x, g.edge_index), g.y, c, kind=cfg.train.loss)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.advance(task)
            net.eval()
            with torch.no_grad():
                ovs = [overlap(net(g.x, g.edge_index).argmax(1), g.y, c) for g in test_set]
            record = {"epoch": epoch, "train_loss": sum(losses) / len(losses),
                      "test_overlap": sum(ovs) / len(ovs)}
            append_jsonl(log, [record])
            bar.update(task, description=f"train GNN (overlap {record['test_overlap']:.3f})")
    return net


def _evaluate_layers(cfg: ExperimentConfig, net: torch.nn.Module, test_set: SBMDataset) -> dict[str, Any]:
    from nclens.graph.gnn import overlap
    from nclens.graph.nc import node_nc, summarize, trace_ratios

    c = cfg.graph.num_classes
    p_eff, q_eff = cfg.graph.effective_pq()
    n = cfg.graph.block_size
    weights = net.layer_weights()
    head_w1, head_w2 = weights[-1]
    per_layer: list[list[dict[str, float]]] = [[] for _ in range(cfg.model.num_layers + 1)]
    overlaps = []
    net.eval()
    with torch.no_grad():
        for g in test_set:
            out, feats, pre = net(g.x, g.edge_index, return_features=True)
            overlaps.append(overlap(out.argmax(1), g.y, c))
            for layer, h in enumerate(feats):
                last = layer == len(feats) - 1
                rec = node_nc(h, g.edge_index, g.y, c, w1=head_w1 if last else None, w2=head_w2 if last else None)
                if layer >= 1:
                    w1, w2 = weights[layer - 1]
                    rec.update(trace_ratios(feats[layer - 1], pre[layer - 1], g.y, c, w1, w2, p_eff, q_eff, n))
                per_layer[layer].append(rec)
    layers = []
    for layer, recs in enumerate(per_layer):
        summary = summarize(recs)
        layers.append({"layer": layer, **{k: v for k, v in summary.items()}})
    ov = torch.tensor(overlaps, dtype=torch.float64)
    return {"layers": layers, "test_overlap": {"mean": float(ov.mean()), "std": float(ov.std(correction=0)),
                                               "per_graph": overlaps}}


def _spectral(cfg: ExperimentConfig, test_set: SBMDataset) -> dict[str, Any]:
    from nclens.graph.nc import summarize
    from nclens.graph.spectral import power_iteration

    s = cfg.spectral
    homophilic = cfg.graph.p >= cfg.graph.q
    out: dict[str, Any] = {}
    for method in s.methods:
        curves = [
            power_iteration(g.edge_index, g.y, cfg.graph.num_classes, method=method, iterations=s.iterations,
                            homophilic=homophilic, seed=cfg.seed + i, every=s.every)
            for i, g in enumerate(test_set.graphs[: s.graphs])
        ]
        rows = []
        for step in range(len(curves[0])):
            summary = summarize([{k: v for k, v in c[step].items() if k != "iteration"} for c in curves])
            rows.append({"iteration": curves[0][step]["iteration"], **summary})
        out[method] = rows
    return out


def _gufm(cfg: ExperimentConfig, progress: bool) -> dict[str, Any]:
    from nclens.graph.gufm import GUFMConfig, solve_gufm, structural_condition
    from nclens.graph.sbm import make_graph

    s = cfg.gufm
    out: dict[str, Any] = {}
    for kind in ("sbm-regular", "sbm"):
        spec = dataclasses.replace(cfg.graph, kind=kind)
        graphs = [make_graph(spec, cfg.seed * 1_000_003 + 500_000 + i)[1:] for i in range(s.graphs)]
        union_ei = torch.cat([ei + i * spec.num_nodes for i, (ei, _) in enumerate(graphs)], dim=1)
        cond = structural_condition(union_ei, torch.cat([y for _, y in graphs]), spec.num_classes)
        res = solve_gufm(graphs, spec.num_classes,
                         GUFMConfig(dim=s.dim, wd_w1=s.wd, wd_w2=s.wd, wd_h=s.wd, lr=s.lr, epochs=s.epochs,
                                    use_w1=cfg.model.use_w1, seed=cfg.seed, log_every=max(1, s.epochs // 100)),
                         progress=progress)
        out[kind] = {"structural_condition_holds": cond.holds, "structural_condition_gap": cond.gap,
                     "history": res.history_, "nc1": res.history_[-1]["nc1"],
                     "nc1_ha": res.history_[-1]["nc1_ha"], "loss": res.history_[-1]["loss"]}
    return out


# --------------------------------------------------------------- figures
def _figures(cfg: ExperimentConfig, out: Path, layers: dict[str, Any], spectral: dict[str, Any],
             gufm: dict[str, Any] | None, log: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = layers["layers"]
    depth = [r["layer"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("nc1", "NC1 of H"), ("nc1_ha", "NC1 of HÂ")):
        mean = [r[key]["mean"] for r in rows]
        std = [r[key]["std"] for r in rows]
        lower = [s if m - s > 0 else 0.0 for m, s in zip(mean, std)]  # a log axis shows no bar below 0
        axes[0].errorbar(depth, mean, yerr=[lower, std], marker="o", capsize=3, label=label)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("GNN layer (0 = input)")
    axes[0].set_ylabel("NC1 (test graphs, mean, bars ± std)")
    axes[0].set_title(f"{cfg.name}: GNN layers")
    axes[0].legend()
    for method, curve in spectral.items():
        axes[1].plot([r["iteration"] for r in curve], [r["nc1"]["mean"] for r in curve], marker=".", label=method)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("power iteration")
    axes[1].set_ylabel("NC1 of iterate")
    axes[1].set_title("spectral baselines")
    axes[1].legend()
    write_png(fig, out / "nc1_layers.png")
    plt.close(fig)
    written.append("nc1_layers.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot([r["epoch"] for r in log], [r["test_overlap"] for r in log], marker="o", label="GNN (test)")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("overlap")
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].set_title("GNN training")
    axes[0].legend()
    for method, curve in spectral.items():
        axes[1].plot([r["iteration"] for r in curve], [r["overlap"]["mean"] for r in curve], marker=".", label=method)
    axes[1].axhline(layers["test_overlap"]["mean"], color="k", ls="--", label="GNN (final)")
    axes[1].set_xlabel("power iteration")
    axes[1].set_ylabel("overlap")
    axes[1].set_ylim(-0.05, 1.05)
    axes[1].set_title("spectral baselines vs GNN")
    axes[1].legend()
    write_png(fig, out / "overlap.png")
    plt.close(fig)
    written.append("overlap.png")

    if gufm is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind, res in gufm.items():
            hist = res["history"]
            ok = "holds" if res["structural_condition_holds"] else "fails"
            ax.plot([h["epoch"] for h in hist], [max(h["nc1"], 1e-40) for h in hist],
                    label=f"{kind} (condition {ok})")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("NC1(H)")
        ax.set_title(f"gUFM, N={cfg.graph.num_nodes}, C={cfg.graph.num_classes}, p={cfg.graph.p}, q={cfg.graph.q}")
        ax.legend()
        write_png(fig, out / "gufm.png")
        plt.close(fig)
        written.append("gufm.png")
    return written


def _layers_csv(layers: list[dict[str, Any]]) -> str:
    keys = sorted({k for r in layers for k in r if k != "layer"})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["layer"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
    for r in layers:
        writer.writerow([r["layer"]] + [r.get(k, {}).get(s, "") for k in keys for s in ("mean", "std")])
    return buf.getvalue()


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run every stage of ``cfg`` and write the run folder ``out``; return the summary.

    The summary holds the test overlap, NC1 of the first and last layers, the spectral baselines'
    final overlaps and the gUFM's final NC1 on regular and plain SBM graphs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    t0 = time.perf_counter()
    write_json(out / "config.json", dataclasses.asdict(cfg))
    write_json(out / "versions.json", package_versions())
    if (out / "train_log.jsonl").exists():
        (out / "train_log.jsonl").unlink()
    train_set = SBMDataset(cfg.graph, cfg.train_graphs, seed=cfg.seed * 2 + 1)
    test_set = SBMDataset(cfg.graph, cfg.test_graphs, seed=cfg.seed * 2 + 2)
    net = _train(cfg, train_set, test_set, out, progress)
    layers = _evaluate_layers(cfg, net, test_set)
    write_json(out / "layers.json", layers)
    atomic_write_text(out / "layers.csv", _layers_csv(layers["layers"]))
    spectral = _spectral(cfg, test_set)
    write_json(out / "spectral.json", spectral)
    gufm = _gufm(cfg, progress) if cfg.gufm.enabled else None
    if gufm is not None:
        write_json(out / "gufm.json", gufm)
    from nclens.core.io import read_jsonl

    figures = _figures(cfg, out, layers, spectral, gufm, read_jsonl(out / "train_log.jsonl"))
    rows = layers["layers"]
    summary: dict[str, Any] = {
        "name": cfg.name,
        "test_overlap": layers["test_overlap"]["mean"],
        "test_overlap_std": layers["test_overlap"]["std"],
        "nc1_per_layer": [r["nc1"]["mean"] for r in rows],
        "nc1_ha_per_layer": [r["nc1_ha"]["mean"] for r in rows],
        "spectral_final_overlap": {m: c[-1]["overlap"]["mean"] for m, c in spectral.items()},
        "spectral_final_nc1": {m: c[-1]["nc1"]["mean"] for m, c in spectral.items()},
        "figures": figures,
        "wall_s": time.perf_counter() - t0,
    }
    if cfg.graph.kind == "sbm-regular":
        summary["k_in_k_out"] = regular_degrees(cfg.graph.num_nodes, cfg.graph.num_classes, cfg.graph.p, cfg.graph.q)
    if gufm is not None:
        summary["gufm"] = {k: {kk: v[kk] for kk in ("nc1", "nc1_ha", "loss", "structural_condition_holds",
                                                     "structural_condition_gap")} for k, v in gufm.items()}
    if not math.isfinite(summary["test_overlap"]):
        raise FloatingPointError("test overlap is not finite")
    write_json(out / "summary.json", summary)
    return summary
