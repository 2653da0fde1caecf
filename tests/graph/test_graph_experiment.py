"""The graph kinds end to end: run folders through `nclens gnn` / `nclens gufm` (thin aliases of the runner), the
Trainer port (one graph per step) against a hand-written loop, and the issue-21 bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from nclens.cli import app
from nclens.core.env import seed_everything
from nclens.graph.config import GNNRunConfig
from nclens.graph.experiment import build_gnn, run_graph_experiment
from nclens.graph.gnn import graph_items, permutation_invariant_loss
from nclens.graph.sbm import SBMDataset
from nclens.runs.config import replace
from nclens.train.batches import epoch_order

TINY = (
    "kind: gnn\nname: tiny\nseeds: [0, 3]\n"
    "graph: {num_nodes: 100, num_classes: 2, p: 0.15, q: 0.01, feature_dim: 4, symmetrize: max}\n"
    "train_graphs: 3\ntest_graphs: 2\nmodel: {hidden: 6, num_layers: 2}\ntrain: {epochs: 2}\n"
    "measure: {train_graphs: 1}\n"
    "spectral: {iterations: 4, every: 2, graphs: 1, official: true, official_iterations: 4}\n"
)


def _tiny_config() -> GNNRunConfig:
    return replace(GNNRunConfig(), graph={"num_nodes": 80, "p": 0.2, "q": 0.02, "feature_dim": 3}, train_graphs=3,
                   test_graphs=1, model={"hidden": 5, "num_layers": 2}, train={"epochs": 2, "progress": False},
                   spectral={"graphs": 0})


def test_gnn_alias_writes_a_run_folder_and_refuses_to_overwrite_it(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["gnn", str(cfg), "--out", str(run), "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["kind"] == "gnn" and summary["results"]["seeds"] == [0, 3]
    for seed in (0, 3):
        for name in ("history.jsonl", "checkpoint.pt", "layers.json", "spectral.json", "graphs.json"):
            assert (run / f"seed_{seed}" / name).is_file(), (seed, name)
    layers = json.loads((run / "seed_0" / "layers.json").read_text())
    outs = [r for r in layers["records"] if r["stage"] == "out" and r["split"] == "test"]
    assert [r["layer"] for r in outs] == [0, 1, 2] and "nc3_of_yhat" in outs[-1] and "tw_upper" in outs[1]
    assert {r["split"] for r in layers["records"]} == {"test", "train"}
    spectral = json.loads((run / "seed_0" / "spectral.json").read_text())
    assert set(spectral["official"]) == {"bethe", "laplacian"} and spectral["nclens"]["bethe"][-1]["iteration"] == 4
    assert (run / "layers.csv").is_file() and (run / "report.html").is_file()
    assert {p.name for p in (run / "figures").iterdir()} == {"nc1_layers.png", "overlap.png", "trace_ratios.png"}
    before = (run / "summary.json").read_bytes()
    again = runner.invoke(app, ["gnn", str(cfg), "--out", str(run), "--no-progress", "--set", "train.epochs=3"])
    assert again.exit_code == 2 and "already holds a run" in again.output  # nclens 0.1 overwrote it silently
    assert (run / "summary.json").read_bytes() == before


@pytest.mark.parametrize("override,message", [("train_graphs=0", "train_graphs must be > 0"),
                                              ("model.num_layers=0", "model.num_layers must be > 0"),
                                              ("train.loss=mse_mean", "train.loss must be one of")])
def test_bad_values_are_refused_before_a_folder_is_created(tmp_path, override, message):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["gnn", str(cfg), "--out", str(run), "--set", override])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not run.exists()


def test_divergence_stops_with_the_trainers_error(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    res = CliRunner().invoke(app, ["gnn", str(cfg), "--out", str(tmp_path / "run"), "--no-progress",
                                   "--set", "optim.lr=1e6", "--set", "seeds=[0]"])
    assert res.exit_code == 2, res.output
    assert "training diverged" in res.output and "optim.lr" in res.output


def test_training_is_the_one_trainer_one_graph_per_step(tmp_path):
    """The kind's training equals a hand-written loop: Adam, one graph per step, in epoch_order(seed, epoch)."""
    cfg = _tiny_config()
    out = run_graph_experiment(cfg, tmp_path / "run")
    trained = torch.load(out / "seed_0" / "checkpoint.pt", weights_only=True)["model"]
    items = graph_items(SBMDataset(cfg.graph, cfg.train_graphs, seed=1).graphs)
    seed_everything(0)
    model = build_gnn(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    for epoch in (1, 2):
        for i in epoch_order(len(items), 0, epoch).tolist():
            x, _ei, y, p, p_t = items[i]
            loss = permutation_invariant_loss(model(x, (p, p_t)), y, 2, loss="mse")
            opt.zero_grad()
            loss.backward()
            opt.step()
    for key, value in model.state_dict().items():
        assert torch.allclose(value, trained[key], atol=1e-6), key


def test_gufm_alias_regular_vs_plain(tmp_path):
    run = tmp_path / "gufm"
    res = CliRunner().invoke(app, ["gufm", "--nodes", "100", "--p", "0.1", "--q", "0.02", "--graphs", "1", "--epochs",
                                   "60", "--dim", "4", "--out", str(run), "--no-progress", "--no-report"])
    assert res.exit_code == 0, res.output
    results = json.loads((run / "summary.json").read_text())["results"]
    assert results["sbm-regular"]["structural_condition_holds"] is True
    assert results["sbm"]["structural_condition_holds"] is False
    cond = json.loads((run / "sbm-regular" / "condition.json").read_text())
    assert (cond["k_in"], cond["k_out"]) == (5, 1) and cond["gap"] == 0.0
    history = [json.loads(line) for line in (run / "sbm" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history][:3] == [0, 1, 2] and history[-1]["epoch"] == 60
    res = CliRunner().invoke(app, ["gufm", "--graph", "sbm-regular", "--nodes", "32", "--p", "1.0", "--q", "0.0",
                                   "--set", "graph.degree_rule=ceil", "--out", str(tmp_path / "dense")])
    assert res.exit_code == 2 and "no regular SBM with k_in=16" in res.output and not (tmp_path / "dense").exists()
