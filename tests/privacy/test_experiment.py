"""The DP kinds on the platform: run folders, resumable cells, tables, figures, refusals before a folder exists,
the CLI (dp-experiment alias with --set, dp-simulate, dp-feature-shift) and divergence through the trainer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nclens.cli import app
from nclens.data import gaussian_features
from nclens.privacy import experiment as dpx
from nclens.privacy.config import FeaturesConfig, ThresholdConfig
from nclens.privacy.finetune import LOGREG_CS
from nclens.runs.config import build_config
from nclens.runs.experiment import load_run_config, run
from nclens.runs.folder import RunFolder

pytest.importorskip("opacus")

TINY_THRESHOLD = ["model.num_classes=4", "model.samples=40", "model.trials=60", "model.test_per_class=3",
                  "dims=[8, 60]", "betas=[0.0, 1.0]", "seeds=[0, 1]"]


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _interrupt_after(monkeypatch, name, calls):
    original = getattr(dpx, name)
    state = {"n": 0}

    def wrapped(*args, **kwargs):
        if state["n"] == calls:
            raise KeyboardInterrupt("simulated interruption")
        state["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(dpx, name, wrapped)


def test_threshold_run_resumes_cells_exactly(tmp_path, monkeypatch):
    spec = load_run_config("dp_threshold_smoke", TINY_THRESHOLD)
    full = run(spec, out=tmp_path / "full", progress=False, log=lambda s: None)
    with monkeypatch.context() as m:
        _interrupt_after(m, "_simulate_cell", 5)
        with pytest.raises(KeyboardInterrupt):
            run(spec, out=tmp_path / "cut", progress=False, log=lambda s: None)
    cut = RunFolder(tmp_path / "cut")
    assert len(cut.read_jsonl(dpx.RESULTS)) == 5 and cut.summary() is None
    run(spec, out=tmp_path / "cut", resume=True, progress=False, log=lambda s: None)
    a, b = RunFolder(full), cut
    assert _strip(a.read_jsonl(dpx.RESULTS)) == _strip(b.read_jsonl(dpx.RESULTS))
    assert a.file("threshold.csv").read_bytes() == b.file("threshold.csv").read_bytes()
    summary = a.summary()
    assert summary["complete"] and summary["kind"] == "dp-threshold"
    cells = len(spec.config.variants[0].betas or spec.config.betas) * 2 * 2 * len(spec.config.variants)
    assert len(a.read_jsonl(dpx.RESULTS)) == cells
    rows = summary["results"]["rows"]
    exact = [r for r in rows if r["beta"] == 0.0 and r["variant"] == "base"]
    assert all(r["error_closed_form"] is not None for r in exact)
    assert all(r["error_large_p"] is not None for r in rows if r["beta"] > 0 and r["variant"] == "base")
    assert set(summary["results"]["threshold"]) == {"base", "imbalance-4"}


def test_flatness_and_threshold_on_a_hand_made_table():
    def row(beta, p, err, se=0.01):
        return {"variant": "v", "beta": beta, "dim": p, "error": err, "error_se": se}

    table = [row(0.0, 10, 0.30), row(0.0, 1000, 0.31),  # within 3 se·√2
             row(0.5, 10, 0.36), row(0.5, 1000, 0.35),
             row(1.0, 10, 0.60), row(1.0, 1000, 0.45),  # 0.15 apart: not flat
             row(2.0, 10, 0.80), row(2.0, 1000, 0.80)]  # flat again, but above a non-flat β
    flat, thresholds = dpx.flatness(table, 3.0)
    assert {r["beta"]: r["flat"] for r in flat} == {0.0: True, 0.5: True, 1.0: False, 2.0: True}
    assert thresholds == {"v": 0.5}
    assert dpx.flatness([row(0.0, 10, 0.5), row(0.0, 100, 0.1)], 3.0)[1] == {"v": None}


def test_dimension_kind_writes_its_table_and_figure(tmp_path):
    out = run("dp_dimension_smoke", overrides=["model.trials=40", "seeds=[0]"], out=tmp_path / "d", progress=False,
              log=lambda s: None)
    folder = RunFolder(out)
    rows = folder.summary()["results"]["rows"]
    assert {r["arm"] for r in rows} == {"no PCA", "PCA 4"}
    exact = [r for r in rows if r["perturb"] == 0.0 and r["arm"] == "no PCA"]
    assert all(abs(r["accuracy_closed_form"] - exact[0]["accuracy_closed_form"]) < 1e-12 for r in exact)
    from nclens.report import make_report

    make_report(out)
    assert folder.file("figures/accuracy_vs_dim.png").stat().st_size > 1000
    assert "test accuracy of NoisyGD" in folder.file("report.html").read_text()


def _feature_file(tmp_path, name="f.npz", sigma=0.4):
    f = gaussian_features(num_classes=3, dim=12, per_class=60, sigma=sigma, seed=0)
    path = tmp_path / name
    np.savez(path, features=f.features.numpy(), labels=(f.labels.numpy() * 7 + 3))  # arbitrary label values
    return path


def test_features_kind_on_feature_files_resumes_and_tabulates(tmp_path, monkeypatch):
    paths = [_feature_file(tmp_path, "a.npz", 0.2), _feature_file(tmp_path, "b.npz", 0.8)]
    overrides = [
        "pretrain.checkpoints=[]",
        f"files=[{{name: sharp, path: '{paths[0]}'}}, {{name: blurry, path: '{paths[1]}'}}]",
        "heads.epsilons=[1.0, 8.0]", "heads.epochs=15", "heads.seeds=[0]", "heads.algorithms=[noisygd, dpsgd]",
        "heads.dpsgd_epochs=2", "heads.batch_size=40",
        "remedies=[{name: centred}, {name: pca2+normalised, pca: 2, normalise: true}]",
    ]
    spec = load_run_config("dp_features_smoke", overrides)
    full = RunFolder(run(spec, out=tmp_path / "full", progress=False, log=lambda s: None))
    with monkeypatch.context() as m:
        _interrupt_after(m, "_wide", 0)  # interrupted after every cell, before the tables
        with pytest.raises(KeyboardInterrupt):
            run(spec, out=tmp_path / "cut", progress=False, log=lambda s: None)
    run(spec, out=tmp_path / "cut", resume=True, progress=False, log=lambda s: None)
    cut = RunFolder(tmp_path / "cut")
    assert _strip(full.read_jsonl(dpx.RESULTS)) == _strip(cut.read_jsonl(dpx.RESULTS))
    assert full.file("accuracy_table.csv").read_bytes() == cut.file("accuracy_table.csv").read_bytes()
    sets = {f["feature_set"]: f for f in full.read_jsonl(dpx.FEATURES)}
    assert sets["sharp"]["feature_shift"] < sets["blurry"]["feature_shift"]
    assert sets["sharp"]["n_test"] == 36 and sets["sharp"]["remedies"]["pca2+normalised"]["dim"] == 2
    rows = full.summary()["results"]["accuracy"]
    assert len(rows) == 2 * 2 * (2 + 2 * 2)  # sets × remedies × (2 non-private references + 2 algorithms × 2 ε)
    by = {(r["feature_set"], r["remedy"], r["algorithm"], r["epsilon"]): r for r in rows}
    assert by[("sharp", "centred", "nonprivate", None)]["accuracy"] > 0.9
    assert by[("sharp", "centred", "logreg", None)]["accuracy"] > 0.9  # the converged reference
    logreg = [r for r in full.read_jsonl(dpx.RESULTS) if r["algorithm"] == "logreg"]
    assert len(logreg) == 2 * 2 and all(r["logreg_c"] in LOGREG_CS for r in logreg)  # one cell per set × remedy
    assert by[("sharp", "centred", "noisygd", 8.0)]["epsilon_spent"] == pytest.approx(8.0, abs=1e-4)
    assert all(r["seeds"] == 1 for r in rows)


def test_features_pretraining_keeps_checkpoints_through_the_trainer(tmp_path):
    out = RunFolder(run("dp_features_smoke", overrides=["heads.algorithms=[noisygd]", "heads.epochs=5"],
                        out=tmp_path / "p", progress=False, log=lambda s: None))
    history = out.read_jsonl("pretrain/history.jsonl")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and "test_accuracy" in history[-1]
    w0 = out.load_checkpoint("pretrain/weights/epoch_0000.pt")
    w4 = out.load_checkpoint("pretrain/weights/epoch_0004.pt")
    last = out.load_checkpoint("pretrain/checkpoint.pt")
    assert w0["epoch"] == 0 and w4["epoch"] == 4
    assert all(torch.equal(w4["model"][k], last["model"][k]) for k in w4["model"])
    sets = {f["feature_set"]: f for f in out.read_jsonl(dpx.FEATURES)}
    assert sets["epoch_4"]["feature_shift"] < sets["epoch_0"]["feature_shift"]  # training collapses features
    assert sets["epoch_4"]["pretrained_test_accuracy"] > 0.8


def test_configs_refuse_bad_values_before_a_folder_exists(tmp_path):
    cases = [
        ("dp_dimension_smoke", "dims=[]", "dims must not be empty"),
        ("dp_dimension_smoke", "perturbs=[]", "perturbs must not be empty"),
        ("dp_dimension_smoke", "seeds=[]", "seeds must not be empty"),
        ("dp_dimension_smoke", "model.trials=0", "model.trials must be > 0"),
        ("dp_threshold_smoke", "betas=[]", "betas must not be empty"),
        ("dp_threshold_smoke", "betas=[-1.0]", "betas must be finite numbers >= 0"),
        ("dp_threshold_smoke", "variants=[]", "variants must not be empty"),
        ("dp_threshold_smoke", "model.delta=nan", "finite"),
        ("dp_features_smoke", "heads.epsilons=[]", "heads.epsilons must not be empty"),
        ("dp_features_smoke", "remedies=[]", "remedies must not be empty"),
        ("dp_features_smoke", "pretrain.checkpoints=[9]", "pretrain.checkpoints"),
        ("dp_features_smoke", "files=[{name: x, path: /no/such.npz}]", "does not exist"),
    ]
    for name, override, message in cases:
        out = tmp_path / "never"
        r = CliRunner().invoke(app, ["run", name, "--set", override, "--out", str(out), "--no-progress"])
        assert r.exit_code == 2, (override, r.output)
        assert message in r.output, (override, r.output)
        assert not out.exists(), override
    with pytest.raises(ValueError, match="distinct names"):
        build_config(ThresholdConfig, {"variants": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ValueError, match="feature sets"):
        build_config(FeaturesConfig, {"pretrain": {"checkpoints": []}})


def test_divergence_is_reported_through_the_trainer_and_the_heads(tmp_path):
    r = CliRunner().invoke(app, ["run", "dp_features_smoke", "--set", "pretrain.optim.lr=1e6", "--out",
                                 str(tmp_path / "a"), "--no-progress", "--no-report"])
    assert r.exit_code == 2 and "training diverged" in r.output and "pretrain.optim.lr" in r.output, r.output
    r = CliRunner().invoke(app, ["run", "dp_features_smoke", "--set", "heads.lr=1e38", "--set", "pretrain.epochs=1",
                                 "--set", "pretrain.checkpoints=[1]", "--out", str(tmp_path / "b"), "--no-progress",
                                 "--no-report"])
    assert r.exit_code == 2 and "lower heads.lr" in r.output, r.output


def test_dp_experiment_is_an_alias_with_set(tmp_path):
    out = tmp_path / "alias"
    sets = sum((["--set", o] for o in TINY_THRESHOLD), [])
    r = CliRunner().invoke(app, ["dp-experiment", "dp_threshold_smoke", *sets,
                                 "--set", "variants=[{name: base}]", "--out", str(out), "--no-progress", "--no-report"])
    assert r.exit_code == 0, r.output
    assert "threshold β (base)" in r.output
    assert json.loads((out / "summary.json").read_text())["kind"] == "dp-threshold"
    r = CliRunner().invoke(app, ["dp-experiment", "dp_threshold_smoke", "--set", "dimz=[1]", "--out", str(out)])
    assert r.exit_code == 2 and "unknown key 'dimz'" in r.output


def test_dp_simulate_cli_new_options(tmp_path):
    out = tmp_path / "sim.json"
    r = CliRunner().invoke(app, ["dp-simulate", "--classes", "4", "--dim", "500", "--samples", "40", "--shift-norm",
                                 "0.5", "--loss", "mse_sum", "--trials", "100", "--json", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    assert rec["error_large_p"] is not None and rec["config"]["loss"] == "mse_sum" and "p→∞ form" in r.output
    r = CliRunner().invoke(app, ["dp-simulate", "--classes", "4", "--samples", "40", "--imbalance", "3", "--init-norm",
                                 "1", "--trials", "50", "--no-progress", "--quiet"])
    assert r.exit_code == 0, r.output
    for args, message in ((["--loss", "pal"], "loss must be one of"), (["--shift-norm", "nan"], "shift_norm"),
                          (["--perturb", "0.1", "--shift-norm", "1"], "not both"), (["--threads", "0"], "")):
        r = CliRunner().invoke(app, ["dp-simulate", "--trials", "10", *args])
        assert r.exit_code == 2 and message in r.output, (args, r.output)


def test_dp_feature_shift_refuses_to_overwrite_its_input(tmp_path):
    path = _feature_file(tmp_path)
    before = path.read_bytes()
    for target in (str(path), str(tmp_path / "." / "f.npz")):
        r = CliRunner().invoke(app, ["dp-feature-shift", str(path), "--json", target])
        assert r.exit_code == 2 and "input" in r.output, r.output
        assert path.read_bytes() == before
    r = CliRunner().invoke(app, ["dp-feature-shift", str(path), "--json", str(tmp_path / "shift.json")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "shift.json").read_text())
    assert math.isfinite(rec["feature_shift"]) and "nc1" in rec
    r = CliRunner().invoke(app, ["dp-feature-shift", str(tmp_path / "missing.npz")])
    assert r.exit_code == 2 and "not found" in r.output


def test_feature_files_of_different_networks_are_split_into_the_same_images(tmp_path):
    from nclens.privacy.data import common_indices, split_feature_file

    rng = np.random.default_rng(0)
    idx_a = np.arange(180)
    idx_b = rng.permutation(np.arange(30, 180))  # another network, a subset of the images, another order
    for name, idx, dim in (("a.npz", idx_a, 5), ("b.npz", idx_b, 7)):
        feats = rng.normal(size=(idx.size, dim))
        feats[:, 0] = idx  # column 0 names the image
        np.savez(tmp_path / name, features=feats, labels=idx % 3, indices=idx)
    keep = common_indices([tmp_path / "a.npz", tmp_path / "b.npz"])
    assert keep.tolist() == list(range(30, 180))
    parts = [split_feature_file(tmp_path / n, public_fraction=0.3, test_fraction=0.2, seed=1, private_per_class=20,
                                keep=keep) for n in ("a.npz", "b.npz")]
    for pa, pb in zip(*parts):
        assert torch.equal(pa.x[:, 0], pb.x[:, 0]) and torch.equal(pa.y, pb.y)
    assert parts[0][1].x.shape[0] == 60 and parts[0][2].x.shape[0] == 30
    np.savez(tmp_path / "c.npz", features=rng.normal(size=(30, 4)), labels=np.arange(30) % 3)
    assert common_indices([tmp_path / "a.npz", tmp_path / "c.npz"]) is None  # no indices: all samples are used


def test_features_over_several_splits_pool_splits_and_seeds(tmp_path):
    """split.seeds: each split's cells equal a run on that split alone; the tables pool splits × head seeds."""
    paths = [_feature_file(tmp_path, "a.npz", 0.3)]
    common = ["pretrain.checkpoints=[]", f"files=[{{name: a, path: '{paths[0]}'}}]", "heads.epsilons=[2.0]",
              "heads.epochs=10", "heads.seeds=[0, 1]", "remedies=[{name: centred}]"]
    both = RunFolder(run(load_run_config("dp_features_smoke", [*common, "split.seeds=[0, 3]"]), out=tmp_path / "b",
                         progress=False, log=lambda s: None))
    one = RunFolder(run(load_run_config("dp_features_smoke", [*common, "split.seed=3"]), out=tmp_path / "o",
                        progress=False, log=lambda s: None))
    records = _strip(both.read_jsonl(dpx.RESULTS))
    assert {r["split"] for r in records} == {0, 3}
    assert [r for r in records if r["split"] == 3] == _strip(one.read_jsonl(dpx.RESULTS))
    rows = {(r["algorithm"], r["epsilon"]): r for r in both.summary()["results"]["accuracy"]}
    assert rows[("noisygd", 2.0)]["seeds"] == 4 and rows[("logreg", None)]["seeds"] == 2
    accs = [r["accuracy"] for r in records if r["algorithm"] == "noisygd"]
    assert rows[("noisygd", 2.0)]["accuracy"] == pytest.approx(float(np.mean(accs)), abs=1e-12)
    shifts = [f["feature_shift"] for f in both.read_jsonl(dpx.FEATURES)]
    assert len(shifts) == 2 and rows[("noisygd", 2.0)]["feature_shift"] == pytest.approx(float(np.mean(shifts)))
    with pytest.raises(ValueError, match="split.seeds"):
        load_run_config("dp_features_smoke", ["split.seeds=[0, 1]"])  # the smoke config pre-trains checkpoints


def test_flatness_pairs_seeds():
    """A per-seed offset shared by every p (the seed's W₀) cancels in the paired gap; MC noise sets its floor."""
    records = []
    for seed, offset in enumerate((0.0, 0.2, 0.4)):  # seed-to-seed spread 0.2 ≫ the p effect
        for p, effect in ((10, 0.03), (1000, 0.0)):
            records.append({"variant": "v", "beta": 1.0, "dim": p, "seed": seed, "error": 0.3 + offset + effect,
                            "error_stderr": 0.004, "error_nonprivate": 0.0, "feature_shift": 0.0, "epsilon": 1.0})
    table = dpx.threshold_table(records)
    low = next(r for r in table if r["dim"] == 10)
    assert low["gap"] == pytest.approx(0.03) and low["gap_se"] == pytest.approx(math.sqrt(2 * 0.004**2 / 3))
    assert low["error_se"] > 0.1  # unpaired, the 0.03 would hide in the seed spread ...
    flat, _ = dpx.flatness(table, 3.0)
    assert flat[0]["flat"] is False  # ... paired, it is 9.2 standard errors


def test_feature_perturbations_make_perturbed_copies_of_each_set(tmp_path):
    from nclens.privacy.data import Part, perturb_parts, split_feature_file

    path = _feature_file(tmp_path, "a.npz", 0.2)
    common = ["pretrain.checkpoints=[]", f"files=[{{name: a, path: '{path}'}}]", "heads.epsilons=[2.0]",
              "heads.epochs=10", "heads.seeds=[0]", "remedies=[{name: centred}]", "split.seeds=[0, 1]"]
    out = RunFolder(run(load_run_config("dp_features_smoke", [*common, "perturbations=[{name: b1, shift_norm: 1.0}]"]),
                        out=tmp_path / "p", progress=False, log=lambda s: None))
    sets = {(f["feature_set"], f["split"]): f for f in out.read_jsonl(dpx.FEATURES)}
    assert set(sets) == {("a", 0), ("a~b1", 0), ("a", 1), ("a~b1", 1)}
    for split in (0, 1):
        assert sets[("a~b1", split)]["feature_shift"] > sets[("a", split)]["feature_shift"] + 0.3
        assert sets[("a~b1", split)]["perturbation_shift_norm"] == 1.0
    # the perturbed copy is perturb_parts of the split, seeded by (split, set, perturbation): rebuild it here
    import zlib

    public, private, test = split_feature_file(path, public_fraction=0.5, test_fraction=0.2, seed=1)
    parts = perturb_parts((public, private, test), 1.0, [1, zlib.crc32(b"a"), zlib.crc32(b"b1")])
    r = float((private.x.double() - private.x.double().mean(0)).square().sum(1).mean().sqrt())
    noise = (parts[1].x - private.x.double()).square().sum(1).mean().sqrt()
    assert float(noise) / r == pytest.approx(1.0, rel=0.15)  # E‖δ‖² = β² r²
    from nclens.privacy.config import RemedyConfig
    from nclens.privacy.finetune import feature_set_record

    again = feature_set_record("a~b1", *parts, [RemedyConfig("centred")])
    assert again["feature_shift"] == pytest.approx(sets[("a~b1", 1)]["feature_shift"], rel=1e-12)
    assert all(isinstance(q, Part) and q.x.dtype == torch.float64 for q in parts)
    with pytest.raises(ValueError, match="shift_norm"):
        load_run_config("dp_features_smoke", ["perturbations=[{name: z, shift_norm: 0.0}]"])
    with pytest.raises(ValueError, match="distinct names"):
        load_run_config("dp_features_smoke", ["perturbations=[{name: z, shift_norm: 1.0}, {name: z, shift_norm: 2.0}]"])
