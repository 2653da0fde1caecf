"""The intermediate-NC experiment: measured records against independent references, exact resume,
fixed-ETF freezing, run-folder rules, degenerate layers, the demo and `nclens run` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestCentroid
from typer.testing import CliRunner

from nclens.cli import app
from nclens.core.probe import Probe
from nclens.intermediate.config import IntermediateConfig
from nclens.intermediate.data import load_data
from nclens.intermediate.experiment import freeze_last_layers_etf, run_fixed_etf, run_intermediate, train_intermediate
from nclens.models import MLP
from nclens.runs.config import replace
from nclens.runs.folder import RunFolder
from nclens.train import Callback


def tiny(**train) -> IntermediateConfig:
    values = {"epochs": 4, "measure_every": 2, "progress": False}
    values.update(train)
    return replace(
        IntermediateConfig(name="tiny"),
        data={"train_subset": 300, "batch_size": 64},
        model={"depth": 2, "width": 24},
        optim={"lr": 0.05, "weight_decay": 5e-3},
        train=values,
    )


class Crash(Callback):
    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def on_step_end(self, trainer, epoch, step):
        if (epoch, step) == self.at:
            raise KeyboardInterrupt


def fit(cfg, out, **kwargs):
    """Train and return (result, layer records, spectra, {layer: final train record})."""
    result = train_intermediate(cfg, out, **kwargs)
    run = RunFolder(out)
    layers = run.read_jsonl("layers.jsonl")
    train = [r for r in layers if r["split"] == "train"]
    last = max(r["epoch"] for r in train)
    return result, layers, run.read_jsonl("spectra.jsonl"), {r["layer"]: r for r in train if r["epoch"] == last}


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_measured_records_match_independent_references(tmp_path):
    cfg = tiny()
    result, layers, spectra, final = fit(cfg, tmp_path / "run")
    assert sorted({r["epoch"] for r in layers}) == [0, 2, 4]
    assert {r["split"] for r in layers} == {"train", "test"}
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert list(final) == ["fc1", "fc2", "classifier"]
    data = load_data(cfg.data)
    model = result.model.eval()
    with Probe(model, ["fc2", "classifier"], mode="input") as probe, torch.no_grad():
        model(data.x_train)
        feats = {k: v.double() for k, v in probe.features.items()}
    for name, h in feats.items():
        y = data.y_train
        means = torch.stack([h[y == c].mean(0) for c in range(10)])
        tw = ((h - means[y]) ** 2).sum() / h.shape[0]
        tb = ((means - means.mean(0)) ** 2).sum() / 10
        assert final[name]["within_share"] == pytest.approx(float(tw / (tw + tb)), rel=1e-6)
        ncc = NearestCentroid().fit(h.numpy(), y.numpy())
        assert final[name]["ncc_accuracy"] == pytest.approx(ncc.score(h.numpy(), y.numpy()), abs=1e-12)
    from nclens.core.metrics.layers import subspace_alignment

    means_cls = torch.stack([feats["classifier"][data.y_train == c].mean(0) for c in range(10)])  # float64
    expected = subspace_alignment(model.classifier.weight.detach(), means_cls)
    # the record's class means are sums of float32 features in float32 within a batch (ClassStats' default:
    # exact to float32 precision of the within-class spread), the reference's float64 sums: agreement ~1e-9
    assert final["classifier"]["subspace_alignment"] == pytest.approx(expected, rel=1e-7)
    fc2 = [r for r in spectra if r["epoch"] == 4 and r["layer"] == "fc2"]
    assert np.allclose(fc2[0]["singular_values"],
                       np.linalg.svd(model.fc2.weight.detach().double().numpy(), compute_uv=False))


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    cfg = tiny(epochs=5, measure_every=1)
    full, layers_full, spectra_full, _ = fit(cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train_intermediate(cfg, tmp_path / "cut", callbacks=[Crash(4, 2)])
    assert len((tmp_path / "cut" / "history.jsonl").read_text().splitlines()) == 3  # epochs 1–3, epoch 4 lost
    resumed, layers_cut, spectra_cut, _ = fit(cfg, tmp_path / "cut", resume=True)
    assert _strip(resumed.history) == _strip(full.history)
    assert layers_cut == layers_full and spectra_cut == spectra_full
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_drops_records_written_after_the_checkpoint(tmp_path):
    cfg = tiny(epochs=3, measure_every=1, checkpoint_every=2)
    full, layers_full, _, _ = fit(cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        train_intermediate(cfg, tmp_path / "cut", callbacks=[Crash(3, 0)])
    with open(tmp_path / "cut" / "history.jsonl", "a") as fh:  # a record of a later epoch written before a crash
        fh.write(json.dumps({"epoch": 3, "lr": 0.0}) + "\n")
    resumed, layers_cut, _, _ = fit(cfg, tmp_path / "cut", resume=True)
    assert _strip(resumed.history) == _strip(full.history) and layers_cut == layers_full


def test_restart_before_first_checkpoint_starts_clean_logs(tmp_path):
    cfg = tiny(epochs=2, measure_every=1)
    with pytest.raises(KeyboardInterrupt):
        train_intermediate(cfg, tmp_path / "r", callbacks=[Crash(1, 1)])
    assert (tmp_path / "r" / "layers.jsonl").is_file()  # epoch-0 measurement was logged
    again, layers_again, _, _ = fit(cfg, tmp_path / "r")
    full, layers_full, _, _ = fit(cfg, tmp_path / "full")
    assert layers_again == layers_full and _strip(again.history) == _strip(full.history)


def test_ce_adamw_step_schedule_output_mode_and_cnn(tmp_path):
    cfg = replace(tiny(epochs=2, loss="ce", label_smoothing=0.1, mode="output", measure_test=False),
                  optim={"name": "adamw", "lr": 1e-3, "schedule": "step", "milestones": [1], "warmup_epochs": 0.5})
    result = train_intermediate(cfg, None)
    assert [r["epoch"] for r in result.history] == [1, 2] and result.model.training
    cnn = replace(tiny(epochs=1, measure_every=1), model={"arch": "cnn", "depth": 2, "width": 4})
    _, layers, _, _ = fit(cnn, tmp_path / "cnn")
    conv = [r for r in layers if r["layer"] == "conv2" and r["split"] == "train" and r["epoch"] == 1][0]
    assert 0.0 <= conv["subspace_alignment"] <= 1.0 and conv["dim"] == 4


def test_freeze_last_layers_etf_keeps_weights_fixed(tmp_path):
    model = MLP(64, 10, depth=2, width=16)
    frozen = freeze_last_layers_etf(model, 2)
    assert frozen == ["fc2", "classifier"]
    w = model.fc2.weight.detach().double()
    assert torch.allclose(w @ w.T, (torch.eye(16) * (1 + 1 / 15) - 1 / 15).double(), atol=1e-6)
    assert not model.classifier.weight.requires_grad and float(model.classifier.bias.abs().sum()) == 0
    with pytest.raises(ValueError, match="num_fixed"):
        freeze_last_layers_etf(model, 4)
    cfg = replace(tiny(epochs=2), fixed_etf={"num_fixed": [0, 3], "epochs": 1})
    rows = run_fixed_etf(cfg, RunFolder(tmp_path))
    assert [r["num_trained"] for r in rows] == [3, 0]
    assert rows[1]["frozen"] == ["fc1", "fc2", "classifier"]
    assert (tmp_path / "fixed_etf.csv").read_text().startswith("num_fixed,num_trained")


def test_frozen_layers_do_not_change_during_training():
    snapshot = {}

    def prepare(model):
        freeze_last_layers_etf(model, 1)
        snapshot["w"] = model.classifier.weight.detach().clone()

    result = train_intermediate(tiny(epochs=1, measure_epochs=[1]), None, prepare_model=prepare)
    assert torch.equal(result.model.classifier.weight, snapshot["w"])


def test_run_folder_records_config_and_refuses_reuse(tmp_path):
    cfg = tiny(epochs=1, measure_every=1)
    out = run_intermediate(cfg, tmp_path / "r")
    for name in ("config.yaml", "versions.json", "history.jsonl", "layers.jsonl", "checkpoint.pt", "summary.json"):
        assert (out / name).is_file(), name
    assert "torch" in json.loads((out / "versions.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["kind"] == "intermediate" and summary["results"]["epochs"] == 1
    with pytest.raises(FileExistsError, match="--resume"):
        run_intermediate(cfg, out)
    with pytest.raises(ValueError, match=r"model.width: 24 -> 8"):
        run_intermediate(replace(cfg, model={"width": 8}), out, resume=True)
    assert run_intermediate(replace(cfg, train={"progress": True}), out, resume=True) == out


def test_degenerate_layer_is_recorded_not_fatal(tmp_path):
    # fc2 frozen to zero: the classifier's input is the same for every class (identical class means),
    # so cdnv / nc1 are undefined there; training goes on and those metrics are logged as null.
    def prepare(model):
        with torch.no_grad():
            model.fc2.weight.zero_()
            model.fc2.bias.zero_()
        model.fc2.weight.requires_grad_(False)
        model.fc2.bias.requires_grad_(False)

    cfg = replace(tiny(epochs=1, measure_every=1), model={"batchnorm": False})
    _, _, _, final = fit(cfg, tmp_path / "r", prepare_model=prepare)
    assert final["classifier"]["cdnv"] is None and final["fc2"]["cdnv"] is not None
    assert final["classifier"]["ncc_accuracy"] == pytest.approx(0.1, abs=0.02)  # all tied: one class wins


def test_unknown_layer_is_refused_before_a_folder_is_created(tmp_path):
    runner = CliRunner()
    out = tmp_path / "x"
    result = runner.invoke(app, ["run", "intermediate_smoke", "--set", "train.layers=[nope]", "--out", str(out)])
    assert result.exit_code == 2 and "unknown layer name(s) ['nope']" in result.output and "fc1" in result.output
    assert not out.exists()


def test_demo_writes_a_complete_run_folder(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--epochs", "2", "--fixed-epochs", "1",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "within_share" in result.output and "classifier" in result.output and "report:" in result.output
    for name in ("config.yaml", "versions.json", "layers.jsonl", "history.jsonl", "summary.json",
                 "fixed_etf.json", "report.html", "figures/nc1_epochs.png", "figures/within_share_depth.png",
                 "figures/nc_over_epochs.png"):
        assert (out / name).is_file(), name
    config = RunFolder(out).config_record()
    assert config["train"]["epochs"] == 2 and config["data"]["name"] == "digits" and config["kind"] == "intermediate"
    layers = [json.loads(line) for line in (out / "layers.jsonl").read_text().splitlines()]
    assert {r["layer"] for r in layers} == {"fc1", "fc2", "fc3", "fc4", "fc5", "fc6", "classifier"}
    rows = json.loads((out / "fixed_etf.json").read_text())["rows"]
    assert [r["num_trained"] for r in rows] == [7, 6, 5, 4, 3, 2, 1, 0]


def test_run_command_with_overrides_resume_and_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kind: intermediate\nname: cli\ndata: {train_subset: 200}\nmodel: {depth: 1, width: 8}\n"
                   "train: {epochs: 2, measure_every: 1}\n")
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(cfg), "--set", "train.epochs=1", "--out", str(out), "--no-progress",
                                 "--no-report"])
    assert result.exit_code == 0, result.output
    assert RunFolder(out).config_record()["train"]["epochs"] == 1
    again = runner.invoke(app, ["run", str(cfg), "--set", "train.epochs=1", "--out", str(out), "--no-progress",
                                "--resume"])
    assert again.exit_code == 0, again.output
    assert (out / "report.html").is_file()
    bad = runner.invoke(app, ["run", str(cfg), "--set", "train.epoch=3", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "valid keys" in bad.output and "epochs" in bad.output
    exists = runner.invoke(app, ["run", str(cfg), "--set", "train.epochs=1", "--out", str(out)])
    assert exists.exit_code == 2 and "--resume" in exists.output
    changed = runner.invoke(app, ["run", str(cfg), "--set", "train.epochs=2", "--out", str(out), "--resume"])
    assert changed.exit_code == 2 and "train.epochs: 1 -> 2" in changed.output


@pytest.mark.slow
def test_full_default_demo_shows_intermediate_collapse(tmp_path):
    from nclens.core.io import read_jsonl
    from nclens.intermediate.figures import headline

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    head = headline(read_jsonl(out / "layers.jsonl"), read_jsonl(out / "history.jsonl"))
    assert head["within_share_ratio"] >= 10
    final = [r for r in read_jsonl(out / "layers.jsonl") if r["split"] == "train" and r["epoch"] == 100]
    assert final[-1]["subspace_alignment"] >= 0.9 and final[0]["subspace_alignment"] < 0.9
