"""The OOD experiment on the platform: the projector, the official NC4, the hooks, the KoLeo step, the run
folder (done-cells, resume), the correlations, and bad values refused before a folder is created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nclens.core.metrics import compute_metrics
from nclens.core.stats import ClassStats
from nclens.nn.heads import ETFProjector, etf_projector_weight
from nclens.nn.regularizers import koleo_loss
from nclens.ood.analysis import correlations, layer_correlations, summarise
from nclens.ood.config import OODConfig
from nclens.ood.experiment import CELLS, build_model, koleo_step, run_ood
from nclens.ood.networks import ConvEncoder, MLPEncoder, OODNet, feature_layers, forward_features, official_pool
from nclens.runs.config import override_config
from nclens.runs.folder import RunFolder

ENV = dict(os.environ, OMP_NUM_THREADS="1")


# ------------------------------------------------------------------ projector
def test_projector_matrix_by_hand_and_as_the_official_code():
    # d = 2, expansion 2: c = 2 (the projector's output dimension) for BOTH layers, √(c/(c−1)) = √2
    proj = ETFProjector(2, expansion=2)
    r = 2 ** -0.5
    w1 = torch.tensor([[r, -r], [-r, r], [-r, -r], [-r, -r]])  # √2 (I_{4×2} − ½): (4, 2)
    w2 = torch.tensor([[r, -r, -r, -r], [-r, r, -r, -r]])  # √2 (I_{2×4} − ½): (2, 4)
    assert torch.allclose(proj.weight1, w1, atol=1e-7) and torch.allclose(proj.weight2, w2, atol=1e-7)
    # the official construction (resnet/resnet_etf.py): shape, c = weight.shape, output_dim; both layers
    d, hidden = 6, 24
    for w, shape in ((ETFProjector(d).weight1, (hidden, d)), (ETFProjector(d).weight2, (d, hidden))):
        c = d
        official = (c / (c - 1)) ** 0.5 * (torch.eye(*shape) - (1 / c) * torch.ones(*shape))
        assert torch.allclose(w, official, atol=1e-7)
    # the first layer differs from the old per-layer c = out_dim (issue 18: 6.6 % in Frobenius norm at d = 512)
    old = etf_projector_weight(2048, 512)
    new = etf_projector_weight(2048, 512, c=512)
    assert float((new - old).norm() / old.norm()) == pytest.approx(0.066, abs=0.002)


def test_projector_pieces_are_hookable_and_frozen():
    proj = ETFProjector(4)
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    h = np.maximum(x.double().numpy() @ proj.weight1.double().numpy().T, 0.0) @ proj.weight2.double().numpy().T
    np.testing.assert_allclose(proj.fc2(proj.relu(proj.fc1(x))).double().numpy(), h, atol=1e-6)
    np.testing.assert_allclose(proj(x).double().numpy(), h / np.linalg.norm(h, axis=1, keepdims=True), atol=1e-6)
    assert list(proj.parameters()) == [] and set(proj.state_dict()) == {"fc1.weight", "fc2.weight"}
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), proj, torch.nn.Linear(4, 2))
    model(torch.randn(5, 3)).sum().backward()
    assert model[0].weight.grad is not None and proj.fc1.weight.grad is None


# ------------------------------------------------------------- official NC4
def test_nc4_bias_closed_form_and_registry():
    # class means (0,0), (2,0), (1,3): μ_G = (1, 1); W μ_G = (1, 1, 0), b = (1, −1, 0): W μ_G + b = (2, 0, 0) → 2
    x = torch.tensor([[0.0, 0], [0, 0], [2, 0], [2, 0], [1, 3], [1, 3]], dtype=torch.float64)
    x = x + torch.tensor([[0.1, 0], [-0.1, 0]], dtype=torch.float64).repeat(3, 1)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    s = ClassStats(num_classes=3).update(x, y)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]])
    b = torch.tensor([1.0, -1.0, 0.0])
    assert compute_metrics(s, w, bias=b, names=["nc4_bias"])["nc4_bias"] == pytest.approx(2.0)
    # b = −W μ_G (the classifier centred on the global mean of the class means) gives 0
    centred = -(w @ torch.tensor([1.0, 1.0]))
    assert compute_metrics(s, w, bias=centred, names=["nc4_bias"])["nc4_bias"] == pytest.approx(0, abs=1e-6)
    assert "nc4_bias" not in compute_metrics(s, w)  # without b it is left out, not NaN
    with pytest.raises(ValueError, match="bias"):
        compute_metrics(s, w, names=["nc4_bias"])
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        compute_metrics(s, w, bias=torch.zeros(2), names=["nc4_bias"])


# ------------------------------------------------------------------- hooks
def test_official_pool_and_feature_layers():
    maps = torch.randn(3, 5, 6, 6, generator=torch.Generator().manual_seed(1))
    pooled = official_pool(maps.flatten(1), (5, 6, 6))
    quadrants = maps.reshape(3, 5, 2, 3, 2, 3).mean(dim=(3, 5)).flatten(1)  # 2×2 average of 3×3 blocks -> 4C
    assert pooled.shape == (3, 20) and torch.allclose(pooled, quadrants, atol=1e-6)
    assert torch.equal(official_pool(torch.ones(3, 7), (7,)), torch.ones(3, 7))
    torch.manual_seed(0)
    net = OODNet(ConvEncoder(1, (4, 8)), num_classes=3, projector=True).eval()
    rows = feature_layers(net, per_layer=True)
    assert [r[1] for r in rows] == ["encoder.stages.0", "encoder.stages.1", "encoder", "projector.fc1", "projector.fc2",
                                    "projector"]
    x = torch.randn(10, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    feats, logits = forward_features(net, x, rows, 4, torch.device("cpu"))
    with torch.no_grad():
        enc = net.encoder(x)
        pre = net.projector.fc2(net.projector.relu(net.projector.fc1(enc)))
        stage0 = net.encoder.stages[0](x)
    assert feats["encoder.stages.0"].shape == (10, 16)  # 4 channels × 2×2
    pooled0 = torch.nn.functional.adaptive_avg_pool2d(stage0, 2).flatten(1)
    assert torch.allclose(feats["encoder.stages.0"], pooled0, atol=1e-6)
    assert torch.allclose(feats["projector"], pre, atol=1e-6)  # before the L2 normalisation (the paper's point)
    assert torch.allclose(feats["projector_l2"].norm(dim=1), torch.ones(10), atol=1e-5)
    assert torch.allclose(logits, net(x), atol=1e-6)
    mlp = OODNet(MLPEncoder(6, (8, 8), 4), num_classes=3, projector=False)
    assert [r[0] for r in feature_layers(mlp, per_layer=True)] == ["encoder.blocks.0", "encoder.blocks.1", "encoder"]
    assert [r[0] for r in feature_layers(mlp)] == ["encoder"]


def test_koleo_step_is_ce_plus_alpha_koleo_of_the_encoder_feature():
    torch.manual_seed(0)
    net = OODNet(MLPEncoder(5, (8,), 6), num_classes=3, projector=True)
    x, y = torch.randn(12, 5), torch.arange(12) % 3
    loss, n = koleo_step(0.3, 0.1)(net, x, y, "mean")
    ref = torch.nn.functional.cross_entropy(net(x), y, label_smoothing=0.1) + 0.3 * koleo_loss(net.encoder(x))
    assert n == 12 and torch.allclose(loss, ref, atol=1e-6)
    total, _ = koleo_step(0.3, 0.1)(net, x, y, "sum")
    ce_sum = torch.nn.functional.cross_entropy(net(x), y, label_smoothing=0.1, reduction="sum")
    ref_sum = ce_sum + 0.3 * 12 * koleo_loss(net.encoder(x))
    assert torch.allclose(total, ref_sum, atol=1e-5)
    base, _ = koleo_step(0.0, 0.0)(net, x, y, "mean")
    assert torch.allclose(base, torch.nn.functional.cross_entropy(net(x), y), atol=1e-6)


# ------------------------------------------------------------------ analysis
def test_layer_correlations_per_network_and_signs():
    rows = []
    for seed in range(3):
        for depth, nc1 in enumerate([1.0, 0.5, 0.2, 0.1]):  # deeper = more collapse: FPR falls, transfer falls
            rows.append({"variant": "baseline", "alpha": 0.0, "seed": seed, "layer": f"l{depth}", "depth": depth,
                         "nc1": nc1, "fpr95": 0.2 + nc1 + 0.01 * seed, "auroc": 0.9 - 0.1 * nc1,
                         "transfer_acc": 0.5 + 0.3 * nc1})
    out = layer_correlations(rows)
    assert len(out["networks"]) == 3 and all(n["n_layers"] == 4 for n in out["networks"])
    s = out["summary"]
    assert s["fpr95"]["mean_r"] == pytest.approx(1.0) and s["fpr95"]["n_agree"] == 3
    assert s["transfer_err"]["mean_r"] == pytest.approx(-1.0) and s["transfer_err"]["paper_r"] == -0.60
    from scipy.stats import pearsonr

    pooled_r = pearsonr([r["nc1"] for r in rows], [r["fpr95"] for r in rows])[0]
    assert out["pooled"]["fpr95"]["r"] == pytest.approx(pooled_r)
    assert correlations(rows[:2])["fpr95"]["agrees"] is None  # fewer than 3 points
    summary = summarise(rows, ("nc1",))
    assert [e["layer"] for e in summary] == ["l0", "l1", "l2", "l3"] and summary[0]["seeds"] == 3


# ------------------------------------------------------------------ the run
def _tiny(**extra) -> OODConfig:
    items = ["train.epochs=2", "seeds=[0]", "variants=[baseline, both]", "model.hidden=[16]", "model.feature_dim=8",
             "eval.scores=[energy, mahalanobis]", "eval.per_layer=true", "eval.probe=adamw", "eval.adamw.epochs=3",
             "transfer.shots_per_class=3", "transfer.draws=2", "train.progress=false", "name=ood-tiny"]
    return override_config(OODConfig(), items + [f"{k}={v}" for k, v in extra.items()])


def test_run_folder_cells_tables_and_resume_after_a_lost_cell(tmp_path):
    cfg = _tiny()
    out = run_ood(cfg, tmp_path / "run", progress=False)
    run = RunFolder(out)
    cells = run.read_jsonl(CELLS)
    assert [(c["variant"], c["alpha"], c["seed"]) for c in cells] == [("baseline", 0.0, 0), ("both", 0.5, 0)]
    layers = [r["layer"] for r in cells[1]["rows"]]
    assert layers == ["encoder.blocks.0", "encoder", "projector.fc1", "projector", "projector_l2"]
    for r in cells[1]["rows"]:
        assert r["nc1"] > 0 and r["nc4_bias"] >= 0 and 0 <= r["auroc"] <= 1 and 0 <= r["dterr"] <= 0.5 + 1e-12
        assert 0 <= r["auout"] <= 1 and 0 <= r["transfer_acc"] <= 1 and "transfer_acc_best_epoch" in r
    assert (out / "jobs" / "both_a0.5_s0" / "checkpoint.pt").is_file()
    assert run.summary()["complete"] and run.summary()["kind"] == "ood"
    corr = run.read_json("correlations.json")
    assert set(corr) == {"over_variant_layer_means", "over_all_points", "across_layers"}
    before = {name: (out / name).read_bytes() for name in ("results.csv", "detection.csv", "summary.csv")}
    # lose the last done-cell: --resume re-evaluates that job from its finished checkpoint, bit for bit
    text = (out / CELLS).read_text().splitlines(keepends=True)
    (out / CELLS).write_text(text[0])
    (out / "summary.json").unlink()
    run_ood(cfg, out, resume=True, progress=False)
    strip = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in text]
    again = [{k: v for k, v in c.items() if k != "seconds"} for c in RunFolder(out).read_jsonl(CELLS)]
    assert again == strip
    assert {name: (out / name).read_bytes() for name in before} == before
    with pytest.raises(ValueError, match="train.epochs: 2 -> 3"):
        run_ood(override_config(cfg, ["train.epochs=3"]), out, resume=True, progress=False)


def test_figures_and_report_from_the_files(tmp_path):
    from nclens.report import make_report

    out = run_ood(_tiny(**{"variants": "[projector]"}), tmp_path / "run", progress=False)
    html = make_report(out).read_text()
    assert "NC control for OOD" in html and "projector_l2" in html
    assert {p.name for p in (out / "figures").iterdir()} == {"nc1_vs_detection_transfer.png", "variants_bars.png",
                                                            "layers.png"}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nclens", *args], env=ENV, capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize(("override", "message"), [
    ("train.koleo_weight=nan", "train.koleo_weight must be a finite number"),
    ("train.koleo_weight=-0.5", "train.koleo_weight must be >= 0"),
    ("train.batch_size=1", "train.batch_size must be >= 2"),
    ("koleo_weights=[0.0]", "koleo_weights must all be > 0"),
    ("koleo_weights=[inf]", "must be a finite number"),
    ("variants=[]", "variants must not be empty"),
    ("variants=[nope]", "variants ['nope'] unknown"),
    ("optim.lr=nan", "optim.lr must be a finite number"),
    ("eval.adamw.lr=0", "eval.adamw.lr must be > 0"),
    ("eval.detection_score=neco", "must be one of eval.scores"),
    ("data.far_per_class=600", "data.far_per_class must be <= 500"),
    ("data.name=fashion-mnist", "set model.arch=cnn"),
    ("data.id_classes=[0, 5]", "overlap"),
    ("transfer.shots_per_class=1000", "exceeds"),
    ("train.batch_size=675", "last batch of 1"),  # 676 ID training digits
])
def test_bad_values_are_refused_before_a_run_folder_exists(tmp_path, override, message):
    from nclens.runs.experiment import run

    with pytest.raises((ValueError, FileNotFoundError)) as err:
        run("ood_smoke", overrides=[override], out=tmp_path / "run", progress=False, log=lambda s: None)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()


def test_bad_value_on_the_command_line_is_a_plain_error(tmp_path):
    r = _cli("run", "ood_smoke", "--set", "train.koleo_weight=nan", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and "train.koleo_weight must be a finite number" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_divergence_is_reported_by_the_trainer(tmp_path):
    r = _cli("run", "ood_smoke", "--set", "optim.lr=1e12", "--set", "optim.momentum=0", "--out", str(tmp_path / "run"),
             "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "training diverged" in r.stderr and "optim.lr" in r.stderr, r.stderr[-2000:]
    assert "features contain NaN" not in r.stderr


def test_ood_alias_is_thin_and_refuses_other_kinds(tmp_path):
    r = _cli("ood", "intermediate_smoke", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert r.returncode == 2 and "nclens ood runs kind 'ood'" in r.stderr and not (tmp_path / "x").exists()


def test_build_model_per_protocol():
    from nclens.ood.protocols import OODData

    data = OODData(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]), torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]),
                   {})
    cfg = override_config(OODConfig(), ["data.name=fashion-mnist", "model.arch=cnn", "model.channels=[4, 6]"])
    net = build_model(cfg, data, "both")
    assert isinstance(net.encoder, ConvEncoder) and net.projector.dim == 6 and net.classifier.out_features == 3
    with pytest.raises(ValueError, match="unknown variant"):
        build_model(cfg, data, "nope")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir() and not os.environ.get("NCLENS_DATA"),
                    reason="Fashion-MNIST idx files are not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_protocol_sets():
    from nclens.ood.protocols import load_protocol

    cfg = override_config(OODConfig(), ["data.name=fashion-mnist", "model.arch=cnn", "data.per_class=20",
                                        "data.test_per_class=10", "data.far_per_class=5", "data.transforms=[hflip]"])
    d = load_protocol(cfg.data)
    assert d.x_train.shape == (100, 1, 28, 28) and torch.bincount(d.y_train).tolist() == [20] * 5
    assert sorted(d.ood) == ["classes", "hflip", "mnist", "noise"] and d.ood["mnist"].shape == (50, 1, 28, 28)
    assert abs(float(d.x_train.mean())) < 1e-5 and float(d.x_train.std()) == pytest.approx(1.0, abs=1e-4)
    a, ay, b, by = d.transfer["classes"]
    assert torch.bincount(ay).tolist() == [20] * 5 and b.shape == (50, 1, 28, 28)
    assert torch.allclose(d.ood["hflip"], d.x_test.flip(3))


def _feature_files(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny 'network' run over 10-class data by nclens.data.extract (two named layers), and a far-OOD file."""
    from nclens.data.extract import TensorSource, extract_features

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8))
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 10
    x = torch.randn(400, 6, generator=g) + 2.0 * torch.randn(10, 6, generator=g)[y]
    main = extract_features(net, TensorSource(x, y), ["1", "2"], tmp_path / "main.safetensors", default_layer="2",
                            chunk_size=200, batch_size=100)
    far = extract_features(net, TensorSource(torch.randn(30, 6, generator=g) * 4, torch.zeros(30, dtype=torch.long)),
                           ["1", "2"], tmp_path / "far.safetensors", default_layer="2", chunk_size=30, batch_size=30)
    return main, far


def test_feature_file_protocol_and_the_frozen_variant(tmp_path):
    from nclens.ood.protocols import feature_protocol

    main, far = _feature_files(tmp_path)
    cfg = _tiny(**{"data.name": "features", "data.features": str(main), "data.far_features": str(far),
                   "data.layer": "2", "data.transforms": "[]", "data.noise": "false", "data.test_fraction": 0.25,
                   "variants": "[frozen, baseline]"})
    per_layer = feature_protocol(cfg.data, None, seed=0)
    assert list(per_layer) == ["1", "2"]
    d = per_layer["1"]
    assert d.x_train.shape == (150, 12) and d.x_test.shape == (50, 12) and sorted(d.ood) == ["classes", "far"]
    assert torch.bincount(d.y_train).tolist() == [30] * 5 and d.ood["far"].shape == (30, 12)
    assert not torch.equal(feature_protocol(cfg.data, ["1"], seed=1)["1"].x_test, d.x_test)  # the seed moves the split
    out = run_ood(cfg, tmp_path / "run", progress=False)
    cells = RunFolder(out).read_jsonl(CELLS)
    assert [c["variant"] for c in cells] == ["frozen", "baseline"]
    assert [r["layer"] for r in cells[0]["rows"]] == ["1", "2"] and "id_head_acc" not in cells[0]["rows"][0]
    assert not (out / "jobs" / "frozen_a0_s0").exists()  # nothing trained
    with pytest.raises(ValueError, match="variant 'frozen' evaluates the layers of a feature file"):
        override_config(OODConfig(), ["variants=[frozen]"])
    with pytest.raises(FileNotFoundError, match="nclens extract"):
        feature_protocol(override_config(cfg, ["data.features=/nonexistent.safetensors"]).data)
