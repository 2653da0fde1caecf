"""The graph experiments (Kothapalli, Tirer & Bruna, NeurIPS 2023): kinds ``gnn`` and ``gufm``.

Kind ``gnn`` (:class:`GNNExperiment`, config :class:`~nclens.graph.config.GNNRunConfig`) — for every seed s
in ``seeds`` a resumable sub-run ``seed_<s>/``:

1. seeded train / test sets of SBM (or regular-SBM) graphs with N(0, 1) node features; their edge
   counts beside the sampler's stated probabilities (``graphs.json``);
2. a :class:`~nclens.graph.gnn.GraphConvGNN` trained by the one :class:`~nclens.train.Trainer` on
   ``ItemData`` (one graph per step) with a ``step_fn`` computing the permutation-invariant loss;
   the test overlap and loss after every epoch (``history.jsonl``, ``checkpoint.pt``);
3. on the test graphs (and the first ``measure.train_graphs`` training graphs) every layer's node NC
   (:func:`nclens.graph.nc.node_nc`: H and H Â, ETF and OF variants, traces), the head's NC2/NC3 set,
   and every block's Tr Σ_W / Tr Σ_B ratios beside their T_W / T_B predictions and singular-value
   bounds, mean ± std over graphs (``layers.json``);
4. spectral baselines on the first ``spectral.graphs`` test graphs: nclens's projected subspace
   iteration and (C = 2, ``spectral.official``) the official deflated power iteration (``spectral.json``).

Top level: ``layers.csv`` (every seed, split, layer, stage), ``seeds.json`` and the results in
``summary.json``: mean ± sd over seeds of the test overlap and of the per-layer NC1.

Kind ``gufm`` (:class:`GUFMExperiment`, config :class:`~nclens.graph.config.GUFMRunConfig`) — for each graph
family (regular and plain SBM with one N, C, p, q) a resumable sub-run ``<family>/``: the structural
condition (``condition.json``), the solver's log (``history.jsonl``: loss, objective, gradient norm,
NC1 of H and H Â, the head's NC2/NC3 set) and its checkpoint; the results hold the final values and
the ``report_epochs`` table (plateau evidence: NC1 flat while the gradient norm → 0).

Example:
    >>> import tempfile
    >>> from nclens.graph.config import GNNRunConfig
    >>> from nclens.runs.config import replace
    >>> cfg = replace(GNNRunConfig(), graph={"num_nodes": 60, "p": 0.3, "q": 0.02, "feature_dim": 4},
    ...               train_graphs=2, test_graphs=1, model={"hidden": 4, "num_layers": 1},
    ...               train={"epochs": 1, "progress": False}, spectral={"graphs": 0})
    >>> out = run_graph_experiment(cfg, tempfile.mkdtemp() + "/run")
    >>> sorted(p.name for p in (out / "seed_0").iterdir() if not p.name.startswith("."))
    ['checkpoint.pt', 'graphs.json', 'history.jsonl', 'layers.json', 'spectral.json']
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nclens.core.env import resolve_device, seed_everything
from nclens.graph.config import GNNRunConfig, GUFMRunConfig
from nclens.graph.gnn import (
    GNNConfig,
    GraphConvGNN,
    best_permutation,
    graph_items,
    overlap,
    permutation_invariant_loss,
)
from nclens.graph.nc import mean_sd
from nclens.graph.sbm import SBMDataset, SBMSpec, make_graph
from nclens.runs.experiment import Experiment, ReportContent, RunConfig, register_experiment, run
from nclens.runs.folder import RunFolder
from nclens.train import ItemData, Trainer

__all__ = [
    "GNNExperiment",
    "GUFMExperiment",
    "build_gnn",
    "gnn_step",
    "evaluate_graphs",
    "measure_layers",
    "spectral_baselines",
    "run_seed",
    "run_gufm_family",
    "run_graph_experiment",
    "LAYERS",
    "SPECTRAL",
    "GRAPHS",
]

LAYERS = "layers.json"
SPECTRAL = "spectral.json"
GRAPHS = "graphs.json"
GUFM_HISTORY = "history.jsonl"
CONDITION = "condition.json"


def check_regular(spec: SBMSpec) -> None:
    """Refuse a regular SBM that cannot exist (before any file is written)."""
    k_in, k_out = spec.degrees()
    n = spec.block_size
    if (n * k_in) % 2 or k_in > n - 1 or k_out > n:
        raise ValueError(f"no regular SBM with k_in={k_in}, k_out={k_out} on n={n} nodes per block (from graph.p="
                         f"{spec.p}, graph.q={spec.q}, graph.degree_rule={spec.degree_rule!r}): need n·k_in even, "
                         f"k_in <= n − 1, k_out <= n")


def seed_dir(seed: int) -> str:
    """The sub-run folder of one seed."""
    return f"seed_{seed}"


def build_gnn(config: GNNRunConfig) -> GraphConvGNN:
    """The GNN of ``config`` (the caller seeds first)."""
    m = config.model
    return GraphConvGNN(GNNConfig(in_dim=config.graph.feature_dim, hidden=m.hidden, num_layers=m.num_layers,
                                  num_classes=config.graph.num_classes, use_w1=m.use_w1, batch_norm=m.batch_norm,
                                  block_order=m.block_order, projection=m.projection))


def gnn_step(num_classes: int, loss: str) -> Callable[[nn.Module, Any, Any, str], tuple[torch.Tensor, int]]:
    """The Trainer's ``step_fn``: the permutation-invariant ``loss`` of one graph item; counts as one sample."""

    def step(model: nn.Module, item: Any, _y: Any, reduction: str) -> tuple[torch.Tensor, int]:
        x, _ei, y, p, p_t = item
        value = permutation_invariant_loss(model(x, (p, p_t)), y, num_classes, loss=loss)
        return value, 1

    return step


@torch.no_grad()
def evaluate_graphs(model: nn.Module, items: Sequence[Any], num_classes: int, loss: str) -> dict[str, float]:
    """Mean permutation-invariant loss and mean overlap over graph items (the Trainer's ``eval_fn``)."""
    was = model.training
    model.eval()
    try:
        losses, overlaps = [], []
        for x, _ei, y, p, p_t in items:
            out = model(x, (p, p_t))
            losses.append(float(permutation_invariant_loss(out, y, num_classes, loss=loss)))
            overlaps.append(overlap(out.argmax(1).cpu(), y.cpu(), num_classes))
    finally:
        model.train(was)
    return {"loss": sum(losses) / len(losses), "overlap": sum(overlaps) / len(overlaps)}


@torch.no_grad()
def measure_layers(model: GraphConvGNN, items: Sequence[Any], spec: SBMSpec, *, split: str,
                   stages: Sequence[str] = ("conv",)) -> tuple[list[dict[str, Any]], list[float]]:
    """Per-layer node NC of ``items`` (graph tuples), summarised over the graphs; and each graph's overlap.

    Returns records ``{"split", "layer", "stage", <metric>: {"mean", "std", "n"}}``: stage ``"out"`` is
    the block output (layer 0 = the input features, the last layer = the head's input, with the head's
    NC2/NC3 set; the head's rows are put in class order by each graph's best permutation of the
    outputs, :func:`~nclens.graph.gnn.best_permutation`), the other stages the block's intermediate
    features; stage ``"out"`` of layer l ≥ 1 also
    holds the trace ratios of block l's GraphConv (input: the output of layer l − 1).
    """
    from nclens.graph.nc import node_nc, summarize, trace_ratios

    c = spec.num_classes
    p_eff, q_eff = spec.effective_pq()
    n = spec.block_size
    weights = model.layer_weights()
    head_w1, head_w2 = weights[-1]
    blocks = len(weights) - 1
    per: dict[tuple[int, str], list[dict[str, float]]] = {}
    overlaps = []
    was = model.training
    model.eval()
    try:
        for x, ei, y, p, p_t in items:
            out, feats, stage_feats = model(x, (p, p_t), return_features=True)
            pred = out.argmax(1).cpu()
            overlaps.append(overlap(pred, y.cpu(), c))
            perm = best_permutation(pred, y.cpu(), c).to(head_w2.device)  # head row perm[c] ↔ class c
            hw1 = head_w1[perm] if head_w1 is not None else None
            for layer, h in enumerate(feats):
                last = layer == blocks
                rec = node_nc(h, ei, y, c, w1=hw1 if last else None, w2=head_w2[perm] if last else None)
                if layer >= 1:
                    w1, w2 = weights[layer - 1]
                    rec.update(trace_ratios(feats[layer - 1], stage_feats[layer - 1]["conv"], y, c, w1, w2,
                                            p_eff, q_eff, n))
                    for stage in stages:
                        if stage in stage_feats[layer - 1]:
                            per.setdefault((layer, stage), []).append(
                                node_nc(stage_feats[layer - 1][stage], ei, y, c))
                per.setdefault((layer, "out"), []).append(rec)
    finally:
        model.train(was)
    order = {"out": 0, "conv": 1, "bn": 2, "relu": 3}
    records = [{"split": split, "layer": layer, "stage": stage, **summarize(recs)}
               for (layer, stage), recs in sorted(per.items(), key=lambda kv: (kv[0][0], order[kv[0][1]]))]
    return records, overlaps


def spectral_baselines(config: GNNRunConfig, test: SBMDataset, seed: int) -> dict[str, Any]:
    """nclens's subspace iteration per method and (C = 2, ``spectral.official``) the official power iteration,
    on the first ``spectral.graphs`` test graphs, summarised per iteration (mean ± std over graphs)."""
    from nclens.graph.nc import summarize
    from nclens.graph.spectral import official_power_iteration, power_iteration

    s = config.spectral
    graphs = test.graphs[: s.graphs]
    out: dict[str, Any] = {"graphs": len(graphs), "nclens": {}, "official": {}}
    if not graphs:
        return out
    homophilic = config.graph.p >= config.graph.q

    def curve_summary(curves: list[list[dict[str, float]]]) -> list[dict[str, Any]]:
        rows = []
        for step in range(len(curves[0])):
            summary = summarize([{k: v for k, v in c[step].items() if k != "iteration"} for c in curves])
            rows.append({"iteration": curves[0][step]["iteration"], **summary})
        return rows

    for method in s.methods:
        curves = [power_iteration(g.edge_index, g.y, config.graph.num_classes, method=method, iterations=s.iterations,
                                  homophilic=homophilic, seed=seed * 1000 + i, every=s.every)
                  for i, g in enumerate(graphs)]
        out["nclens"][method] = curve_summary(curves)
        if s.official:
            curves = [official_power_iteration(g.edge_index, g.y, 2, method=method, iterations=s.official_iterations,
                                               seed=seed * 1000 + i, every=max(1, s.official_iterations // 32))
                      for i, g in enumerate(graphs)]
            out["official"][method] = curve_summary(curves)
    return out


def _items(dataset: SBMDataset, count: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    return graph_items(dataset.graphs[:count] if count is not None else dataset.graphs)


def run_seed(config: GNNRunConfig, seed: int, sub: RunFolder, *, resume: bool, progress: bool,
             log: Callable[[str], None]) -> dict[str, Any]:
    """One seed of the ``gnn`` kind in the sub-run ``sub`` (see the module docstring); returns its result row."""
    c = config.graph.num_classes
    train = SBMDataset(config.graph, config.train_graphs, seed=2 * seed + 1)
    test = SBMDataset(config.graph, config.test_graphs, seed=2 * seed + 2)
    if not sub.exists(GRAPHS):
        sub.write_json(GRAPHS, {"train": train.edge_statistics(), "test": test.edge_statistics()})
    train_items, test_items = _items(train), _items(test)
    seed_everything(seed)
    model = build_gnn(config)
    loss = config.train.loss
    trainer = Trainer(
        model, ItemData(train_items), step_fn=gnn_step(c, loss), optim=config.optim, epochs=config.train.epochs,
        seed=seed, run=sub, evaluate={"test": test_items}, eval_fn=lambda m, items: evaluate_graphs(m, items, c, loss),
        device=config.train.device, checkpoint_every=config.train.checkpoint_every,
        progress=progress and config.train.progress, name=f"training {config.name} (seed {seed})",
    )
    result = trainer.fit(resume=resume and sub.has_checkpoint())
    model = result.model
    dev = trainer.device
    if not sub.exists(LAYERS):
        records, overlaps = measure_layers(model, ItemData(test_items).to(dev).items, config.graph, split="test",
                                           stages=config.measure.stages)
        train_overlaps: list[float] = []
        if config.measure.train_graphs:
            more, train_overlaps = measure_layers(model, ItemData(train_items[: config.measure.train_graphs]).to(dev)
                                                  .items, config.graph, split="train", stages=config.measure.stages)
            records += more
        sub.write_json(LAYERS, {"records": records, "test_overlap": overlaps, "train_overlap": train_overlaps})
    if not sub.exists(SPECTRAL):
        sub.write_json(SPECTRAL, spectral_baselines(config, test, seed))
    layers = sub.read_json(LAYERS) if sub.writer else {"records": [], "test_overlap": []}
    spectral = sub.read_json(SPECTRAL) if sub.writer else {}
    row = _seed_row(seed, layers, spectral, result.history)
    if sub.writer:
        log(f"seed {seed}: test overlap {row['test_overlap']:.4f} ± {row['test_overlap_std']:.4f} over "
            f"{len(layers['test_overlap'])} test graphs; NC1 last layer {row['nc1_last']:.4g}")
    return row


def _std(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _seed_row(seed: int, layers: dict[str, Any], spectral: dict[str, Any], history: list[dict[str, Any]]) -> dict:
    test = [r for r in layers["records"] if r["split"] == "test" and r["stage"] == "out"]
    ov = layers["test_overlap"]
    row: dict[str, Any] = {
        "seed": seed,
        "test_overlap": sum(ov) / len(ov) if ov else math.nan,
        "test_overlap_std": _std(ov),
        "final_train_loss": history[-1].get("train_loss_running") if history else None,
        "nc1_per_layer": [r["nc1"]["mean"] for r in test],
        "nc1_ha_per_layer": [r["nc1_ha"]["mean"] for r in test],
        "nc1_last": test[-1]["nc1"]["mean"] if test else math.nan,
    }
    train_ov = layers.get("train_overlap") or []
    if train_ov:
        row["train_overlap"] = sum(train_ov) / len(train_ov)
    for family in ("nclens", "official"):
        for method, curve in (spectral.get(family) or {}).items():
            row[f"spectral_{family}_{method}_overlap"] = curve[-1]["overlap"]["mean"]
            row[f"spectral_{family}_{method}_nc1"] = curve[-1]["nc1"]["mean"]
    return row


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sd (sample sd, n − 1) over seeds of every per-seed number."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in rows]}
    for key in rows[0]:
        if key == "seed":
            continue
        if isinstance(rows[0][key], list):
            depth = len(rows[0][key])
            out[key] = [mean_sd([r[key][i] for r in rows]) for i in range(depth)]
        elif isinstance(rows[0][key], (int, float)) or rows[0][key] is None:
            out[key] = mean_sd([r.get(key) for r in rows])
    return out


def _flat_rows(seed: int, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row: dict[str, Any] = {"seed": seed, "split": r["split"], "layer": r["layer"], "stage": r["stage"]}
        for key, value in r.items():
            if isinstance(value, dict):
                row[f"{key}_mean"], row[f"{key}_std"] = value["mean"], value["std"]
        rows.append(row)
    return rows


@register_experiment
class GNNExperiment(Experiment):
    """Train GraphConv GNNs on SBM graphs; per-layer node NC, trace ratios, spectral baselines, per seed."""

    kind = "gnn"
    config_class = GNNRunConfig
    description = "GraphConv GNN on SBM graphs: node NC per layer, spectral baselines (Kothapalli et al. 2023)"
    resume_ignores = ("train.progress", "train.device")
    timing_fields = ("seconds",)

    def check(self, config: GNNRunConfig) -> None:
        resolve_device(config.train.device)
        if config.graph.kind == "sbm-regular":
            check_regular(config.graph)

    def run(self, config: GNNRunConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        rows, flat = [], []
        for seed in config.seeds:
            sub = run.subfolder(seed_dir(seed))
            rows.append(run_seed(config, seed, sub, resume=resume, progress=progress, log=log))
            if run.writer:
                flat += _flat_rows(seed, sub.read_json(LAYERS)["records"])
        run.write_json("seeds.json", rows)
        run.write_csv("layers.csv", flat)
        results = _aggregate(rows)
        results["graphs"] = run.subfolder(seed_dir(config.seeds[0])).read_json(GRAPHS) if run.writer else {}
        return results

    def figures(self, run: RunFolder) -> dict[str, Path]:
        from nclens.graph.figures import gnn_figures

        return gnn_figures(run)

    def report(self, run: RunFolder) -> ReportContent:
        from nclens.graph.figures import gnn_report

        return gnn_report(run)

    def summary_text(self, run: RunFolder) -> str:
        from nclens.graph.figures import gnn_summary_text

        return gnn_summary_text(run)


# ---------------------------------------------------------------------------------------------- gUFM
def family_spec(config: GUFMRunConfig, family: str) -> SBMSpec:
    """``config.graph`` with ``kind`` = ``family``."""
    return dataclasses.replace(config.graph, kind=family)


def family_graphs(config: GUFMRunConfig, family: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``config.graphs`` graphs (edge_index, labels) of one family; graph i from seed solver.seed·1,000,003 + i."""
    spec = family_spec(config, family)
    return [make_graph(spec, config.solver.seed * 1_000_003 + i)[1:] for i in range(config.graphs)]


def run_gufm_family(config: GUFMRunConfig, family: str, sub: RunFolder, *, resume: bool, progress: bool) -> dict:
    """Solve the gUFM on one family's graphs in the sub-run ``sub`` (resumable; see the module docstring)."""
    from nclens.core.console import progress_bar
    from nclens.graph.gufm import GUFMSolver, structural_condition

    graphs = family_graphs(config, family)
    n_nodes = config.graph.num_nodes
    if not sub.exists(CONDITION):
        union = torch.cat([ei + i * n_nodes for i, (ei, _) in enumerate(graphs)], dim=1)
        cond = structural_condition(union, torch.cat([y for _, y in graphs]), config.graph.num_classes)
        info = {"holds": cond.holds, "gap": cond.gap, "fractions": cond.fractions.tolist(), "isolated": cond.isolated}
        if family == "sbm-regular":
            info["k_in"], info["k_out"] = family_spec(config, family).degrees()
        sub.write_json(CONDITION, info)
    solver = GUFMSolver(graphs, config.graph.num_classes, config.solver)
    s = config.solver
    if resume and sub.has_checkpoint():
        solver.load_state_dict(sub.load_checkpoint())
        sub.keep_jsonl(GUFM_HISTORY, lambda r: r.get("epoch", 0) <= solver.epoch)
    else:
        sub.keep_jsonl(GUFM_HISTORY, lambda r: False)
        sub.append_jsonl(GUFM_HISTORY, [solver.record()])
    started = time.perf_counter()
    with progress_bar(progress and config.progress, f"gUFM {family}", s.epochs - solver.epoch) as advance:
        while solver.epoch < s.epochs:
            solver.run_epoch()
            if solver.epoch % s.log_every == 0 or solver.epoch == s.epochs:
                sub.append_jsonl(GUFM_HISTORY, [solver.record()])
            if solver.epoch % config.checkpoint_every == 0 or solver.epoch == s.epochs:
                sub.save_checkpoint({"format": "nclens-gufm-1", **solver.state_dict()})
            advance()
    history = sub.read_jsonl(GUFM_HISTORY) if sub.writer else [solver.record()]
    by_epoch = {r["epoch"]: r for r in history}
    keys = ("epoch", "loss", "objective", "grad_norm", "nc1", "nc1_ha", "nc1_graph_mean")
    condition = sub.read_json(CONDITION) if sub.writer else {}
    return {
        "structural_condition_holds": condition.get("holds"),
        "structural_condition_gap": condition.get("gap"),
        "final": {k: history[-1].get(k) for k in (*keys, "nc2_etf_w1", "nc2_of_w1", "nc2_etf_w2", "nc2_of_w2",
                                                  "nc3_w1", "nc3_w2", "nc3_etf_yhat", "nc3_of_yhat")},
        "report_epochs": [{k: by_epoch[e].get(k) for k in keys} for e in config.report_epochs if e in by_epoch],
        "seconds": time.perf_counter() - started,
    }


@register_experiment
class GUFMExperiment(Experiment):
    """Solve the graph unconstrained feature model on regular vs plain SBM graphs; NC1, gradient norm, condition."""

    kind = "gufm"
    config_class = GUFMRunConfig
    description = "gUFM on regular vs plain SBM: NC1 and gradient norm over epochs, structural condition"
    resume_ignores = ("progress",)
    timing_fields = ("seconds",)

    def check(self, config: GUFMRunConfig) -> None:
        if "sbm-regular" in config.families:
            check_regular(config.graph)

    def run(self, config: GUFMRunConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for family in config.families:
            res = run_gufm_family(config, family, run.subfolder(family), resume=resume, progress=progress)
            out[family] = res
            fin = res["final"]
            log(f"gUFM {family}: nc1(H) {fin['nc1']:.3e}, nc1(HÂ) {fin['nc1_ha']:.3e}, gradient norm "
                f"{fin['grad_norm']:.3e} at epoch {fin['epoch']}; structural condition "
                f"{'holds' if res['structural_condition_holds'] else 'fails'} "
                f"(gap {res['structural_condition_gap']:.3g})")
        return out

    def figures(self, run: RunFolder) -> dict[str, Path]:
        from nclens.graph.figures import gufm_figures

        return gufm_figures(run)

    def report(self, run: RunFolder) -> ReportContent:
        from nclens.graph.figures import gufm_report

        return gufm_report(run)


def run_graph_experiment(
    config: GNNRunConfig | GUFMRunConfig, out: str | os.PathLike[str] | None = None, *, resume: bool = False,
    progress: bool = False,
) -> Path:
    """Run a ``gnn`` or ``gufm`` config through the one runner (run-folder rules, summary.json); returns the folder."""
    from nclens.runs.experiment import get_experiment

    kind = "gufm" if isinstance(config, GUFMRunConfig) else "gnn"
    spec = RunConfig(get_experiment(kind), config, Path("<python>"), {})
    return run(spec, out=out, resume=resume, progress=progress, log=lambda s: None)
