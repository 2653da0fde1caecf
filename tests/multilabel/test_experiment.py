"""The MLab experiment runner: scores against scikit-learn / hand values, parameter counts, files, resume."""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from nclens.multilabel.experiment import (
    NC_KEYS,
    MLabConfig,
    batch_bounds,
    build_model,
    count_trainable,
    load_config,
    multilabel_scores,
    run_mlab,
)


def test_scores_against_sklearn_and_hand_values():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.45, 0.45, 0.1], [0.05, 0.35, 0.6]]))
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]])
    s = multilabel_scores(logits, y, f1_ratio=0.5)
    probs = torch.softmax(logits.double(), 1)
    assert s["test_map"] == pytest.approx(average_precision_score(y.numpy(), probs.numpy(), average="macro"))
    # IoU: softmax mass on the true set: 0.7, 0.9, 0.95
    assert s["test_iou"] == pytest.approx((0.7 + 0.9 + 0.95) / 3, rel=1e-6)
    # predicted sets {0}, {0,1}, {1,2} (p ≥ max/2): all exact, F1 = 1
    assert s["test_f1"] == pytest.approx(1.0)
    s2 = multilabel_scores(logits, torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1]]), f1_ratio=0.5)
    assert s2["test_f1"] == pytest.approx((0.0 + 2 / 3 + 2 / 3) / 3)


def test_trainable_parameter_counts_of_the_three_heads():
    cfg = MLabConfig(hidden=32, feature_dim=24, channels=(4, 8))
    k = cfg.num_tags
    learned, fixed, dimk = (count_trainable(build_model(v, cfg)) for v in cfg.variants)
    assert learned - fixed == k * 24  # the frozen ETF removes exactly the K×D head weight
    assert fixed - dimk == (32 + 1) * (24 - k)  # the last block shrinks from D to K outputs
    model = build_model("fixed_etf_dimk", cfg)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, k)
    # BatchNorm after both convs and the hidden layer: 2·(c1 + c2 + hidden) more trainable parameters, same gaps
    bn = MLabConfig(hidden=32, feature_dim=24, channels=(4, 8), batch_norm=True)
    bn_counts = [count_trainable(build_model(v, bn)) for v in bn.variants]
    assert [b - p for b, p in zip(bn_counts, (learned, fixed, dimk))] == [2 * (4 + 8 + 32)] * 3


def test_batch_bounds_cover_every_sample_once():
    for n, size, min_size in [(10, 4, 1), (9, 4, 2), (9, 4, 1), (5, 0, 2), (5, 7, 2), (1, 0, 2), (64, 64, 2)]:
        bounds = batch_bounds(n, size, min_size=min_size)
        assert torch.cat([torch.arange(s, e) for s, e in bounds]).tolist() == list(range(n))
        assert all(e - s >= min(min_size, n) for s, e in bounds)
        assert all(e - s <= (n if size == 0 else size + min_size - 1) for s, e in bounds)
    assert batch_bounds(9, 4, min_size=2) == [(0, 4), (4, 9)]  # a lone trailing sample joins the last batch
    assert batch_bounds(9, 4) == [(0, 4), (4, 8), (8, 9)]
    with pytest.raises(ValueError, match="batch_size"):
        batch_bounds(5, -1)
    with pytest.raises(ValueError, match="full batch"):
        MLabConfig(batch_size=-1)


def test_run_writes_results_and_resumes(tmp_path):
    cfg = MLabConfig(name="tiny", per_set=(6, 1), test_per_set=(2, 1), classes=(0, 1, 2, 3), channels=(4, 8),
                     hidden=32, feature_dim=16, epochs=2, eval_every=1, batch_size=0, batch_norm=True)
    out = tmp_path / "run"
    summary = run_mlab(cfg, out, progress=False)
    assert [r["variant"] for r in summary["variants"]] == ["learned", "fixed_etf", "fixed_etf_dimk"]
    for name in ("config.json", "summary.json", "summary.csv", "report.md", "mlab_nc.png", "tagwise_scale.png"):
        assert (out / name).stat().st_size > 0, name
    hist = [json.loads(line) for line in (out / "learned" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in hist] == [0, 1, 2]
    assert "tagwise_scale_m2" in hist[-1] and 0.0 <= hist[-1]["test_map"] <= 1.0
    row = summary["variants"][0]
    for key in NC_KEYS:  # start = epoch 0 (initialisation), fall = start / end
        assert row[f"{key}_start"] == pytest.approx(hist[0][key])
        assert row[f"{key}_fall"] == pytest.approx(hist[0][key] / hist[-1][key])
    falls = {k: row[f"{k}_fall"] for k in NC_KEYS}
    assert row["min_fall_metric"] == min(falls, key=falls.__getitem__) and row["min_fall"] == min(falls.values())
    assert "every MLab NC metric fell ≥ 10×" in (out / "report.md").read_text(encoding="utf-8")
    stamp = (out / "fixed_etf" / "result.json").stat().st_mtime_ns
    again = run_mlab(cfg, out, progress=False, figures=False)  # finished variants are reused, not retrained
    assert (out / "fixed_etf" / "result.json").stat().st_mtime_ns == stamp
    assert again["variants"] == json.loads((out / "summary.json").read_text())["variants"]
    # an interrupted variant continues from its checkpoint with the same result as an uninterrupted one
    (out / "learned" / "result.json").unlink()
    hist_lines = (out / "learned" / "history.jsonl").read_text().splitlines()
    state = torch.load(out / "learned" / "checkpoint.pt", weights_only=True)
    assert int(state["epoch"]) == 2
    resumed = run_mlab(cfg, out, progress=False, figures=False)
    assert resumed["variants"][0]["test_map"] == pytest.approx(summary["variants"][0]["test_map"])
    assert (out / "learned" / "history.jsonl").read_text().splitlines() == hist_lines
    with pytest.raises(ValueError, match="different config"):
        run_mlab(MLabConfig(**{**cfg.__dict__, "epochs": 3}), out, progress=False, figures=False)


def test_config_loading_and_cli(tmp_path):
    path = tmp_path / "mlab_x.yaml"
    path.write_text("per_set: [4, 1]\ntest_per_set: [1, 1]\nclasses: [0, 1, 2]\nchannels: [2, 4]\nhidden: 8\n"
                    "feature_dim: 6\nepochs: 1\nvariants: [fixed_etf_dimk]\n")
    cfg = load_config(path)
    assert cfg.name == "mlab_x" and cfg.variants == ("fixed_etf_dimk",) and cfg.num_tags == 3
    (tmp_path / "bad.yaml").write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="unknown key 'epoch'; valid keys: .*epochs"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="variants"):
        MLabConfig(variants=("mlp",))
    from nclens.cli import app

    res = CliRunner().invoke(app, ["mlab", str(path), "--out", str(tmp_path / "cli"), "--no-progress",
                                   "--no-figures"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "fixed_etf_dimk" / "result.json").exists()
