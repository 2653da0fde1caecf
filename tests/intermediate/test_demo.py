"""``nclens demo`` and ``nclens run`` end to end on a few epochs (the full demo is marked slow)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from nclens.cli import app


def test_demo_writes_a_complete_run_folder(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--epochs", "2", "--fixed-epochs", "1",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "within_share" in result.output and "classifier" in result.output and "report:" in result.output
    for name in ("config.yaml", "config.json", "versions.json", "layers.jsonl", "history.jsonl",
                 "fixed_etf.json", "report.html", "figures/nc1_epochs.png", "figures/within_share_depth.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["data"]["name"] == "digits"
    layers = [json.loads(line) for line in (out / "layers.jsonl").read_text().splitlines()]
    assert {r["layer"] for r in layers} == {"fc1", "fc2", "fc3", "fc4", "fc5", "fc6", "classifier"}
    rows = json.loads((out / "fixed_etf.json").read_text())["rows"]
    assert [r["num_trained"] for r in rows] == [7, 6, 5, 4, 3, 2, 1, 0]


def test_run_command_with_overrides_resume_and_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: cli\ndata: {train_subset: 200}\nmodel: {depth: 1, width: 8}\n"
                   "train: {epochs: 2, measure_every: 1}\n")
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(cfg), "--set", "train.epochs=1", "--out", str(out), "--no-progress",
                                 "--no-report"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 1
    again = runner.invoke(app, ["run", str(cfg), "--set", "train.epochs=1", "--out", str(out), "--no-progress",
                                "--resume"])
    assert again.exit_code == 0, again.output and (out / "report.html").is_file()
    bad = runner.invoke(app, ["run", str(cfg), "--set", "train.epoch=3", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "valid keys" in bad.output and "epochs" in bad.output
    exists = runner.invoke(app, ["run", str(cfg), "--set", "train.epochs=1", "--out", str(out)])
    assert exists.exit_code == 2 and "--resume" in exists.output


@pytest.mark.slow
def test_full_default_demo_shows_intermediate_collapse(tmp_path):
    from nclens.core.io import read_jsonl
    from nclens.report.html import headline

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    head = headline(read_jsonl(out / "layers.jsonl"), read_jsonl(out / "history.jsonl"))
    assert head["within_share_ratio"] >= 10
    final = [r for r in read_jsonl(out / "layers.jsonl") if r["split"] == "train" and r["epoch"] == 100]
    assert final[-1]["subspace_alignment"] >= 0.9 and final[0]["subspace_alignment"] < 0.9
