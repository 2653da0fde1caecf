"""The paper's setting: official architectures, layer selection, freezing rule, data preprocessing, configs;
flattened measurement with the exact projected nc1; several seeds with their aggregate."""

from __future__ import annotations

import gzip
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from nclens.core.stats import ClassStats
from nclens.intermediate.config import DataConfig, IntermediateConfig, ModelConfig
from nclens.intermediate.data import load_data
from nclens.intermediate.experiment import (
    _check,
    build_model,
    freeze_last_layers_etf,
    official_etf_weight,
    run_intermediate,
)
from nclens.intermediate.layers import ClassScatters, expand_layers, measure_layers
from nclens.models import MLP, ConvNet, build_resnet
from nclens.runs.config import read_yaml_mapping, replace
from nclens.runs.experiment import find_config, load_run_config, shipped_configs
from nclens.train import eval_batches

PAPER = [c for c in shipped_configs() if c.name.startswith("intermediate_paper_")]
DEBIAN = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def test_convnet_is_the_official_shape():
    net = ConvNet(10, (1, 32, 32), depth=5, width=8)
    assert [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)] == [f"b{i}.conv" for i in range(5)]
    assert net.b0.conv.kernel_size == (2, 2) and net.b0.conv.stride == (2, 2) and net.b0.relu is None
    assert net.b1.conv.kernel_size == (2, 2) and net.b1.relu is not None
    assert net.b2.conv.kernel_size == (3, 3) and net.b2.conv.padding == (1, 1)
    assert all(net.get_submodule(f"b{i}.conv").bias is None for i in range(5)) and net.fc.bias is not None
    assert net.fc.in_features == 8 * 8 * 8  # 32 -> 16 -> 8, flattened, no pooling
    assert expand_layers(net, ["conv", "fc"]) == [f"b{i}.conv" for i in range(5)] + ["fc"]
    with pytest.raises(ValueError, match="depth"):
        ConvNet(10, (1, 32, 32), depth=1)


def test_imagenet_stem_resnets_have_torchvision_names_and_shapes():
    net = build_resnet(18, 10, in_channels=1, stem="imagenet")
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2) and isinstance(net.maxpool, nn.MaxPool2d)
    assert tuple(net(torch.randn(2, 1, 32, 32)).shape) == (2, 10)
    official = expand_layers(net, [".conv1", ".conv2", ".conv3", "^avgpool", "^fc"])
    assert len(official) == 18 and official[0] == "layer1.0.conv1" and official[-2:] == ["avgpool", "fc"]
    assert "conv1" not in official  # ".conv1" is below the top level, as in the official filter
    r50 = build_resnet(50, 10, stem="imagenet")
    assert r50.fc.in_features == 2048 and r50.layer1[0].conv3.out_channels == 256
    assert len(expand_layers(r50, [".conv1", ".conv2", ".conv3", "^avgpool", "^fc"])) == 16 * 3 + 2
    with pytest.raises(ValueError, match="imagenet"):
        build_resnet(50, 10)
    # torchvision's parameter counts (11,689,512 and 25,557,032 with 1,000 classes), with a 10-class fc
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_resnet(18, 1000, stem="imagenet")) == 11_689_512
    assert count(build_resnet(50, 1000, stem="imagenet")) == 25_557_032
    assert count(r50) == 25_557_032 - 2048 * 1000 - 1000 + 2048 * 10 + 10


def test_imagenet_stem_resnets_equal_torchvision_when_it_loads():
    try:
        import torchvision as tv
    except Exception as exc:  # noqa: BLE001 - absent, or built for another torch (its ops fail to load)
        pytest.skip(f"torchvision unavailable: {exc}")
    for depth in (18, 50):
        ref = getattr(tv.models, f"resnet{depth}")(weights=None, num_classes=10)
        own = build_resnet(depth, 10, stem="imagenet")
        assert {k: v.shape for k, v in own.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
        own.load_state_dict(ref.state_dict())
        x = torch.randn(2, 3, 64, 64)
        assert torch.allclose(own.eval()(x), ref.eval()(x), atol=1e-5)


def test_official_fixed_etf_rule():
    w = official_etf_weight(10, 256)
    etf = (torch.eye(10, dtype=torch.float64) - 0.1) * (10 / 9) ** 0.5
    assert torch.allclose(w[:, :10], etf) and float(w[:, 10:].abs().max()) == 0.0  # ETF_K ⊕ 0
    model = MLP(64, 10, depth=4, width=16, bias=False)
    frozen = freeze_last_layers_etf(model, 4, rule="official")
    assert frozen == ["fc2", "fc3", "fc4", "classifier"] and model.fc1.weight.requires_grad  # block 0 trains
    assert model.bn4.weight.requires_grad  # only the Linear weights are frozen
    assert torch.allclose(model.fc3.weight.double(), official_etf_weight(16, 16).to(model.fc3.weight.dtype).double())
    with pytest.raises(ValueError, match="after the first"):
        freeze_last_layers_etf(MLP(64, 10, depth=4, width=16), 5, rule="official")
    with pytest.raises(ValueError, match="keeps the first"):
        replace(IntermediateConfig(), model={"depth": 4}, fixed_etf={"enabled": True, "rule": "official",
                                                                      "num_fixed": [5]})


def _idx_root(tmp_path, n=20):
    rng = np.random.default_rng(0)
    for split, stem in (("train", "train"), ("test", "t10k")):
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        with gzip.open(tmp_path / f"{stem}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28) + pixels.tobytes())
        with gzip.open(tmp_path / f"{stem}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">BBBBI", 0, 0, 8, 1, n) + labels.tobytes())
        if split == "train":
            train_pixels = pixels
    return train_pixels


def test_fashion_mnist_preprocessing_is_the_official_transform(tmp_path):
    pixels = _idx_root(tmp_path)
    data = load_data(DataConfig(name="fashion-mnist", root=str(tmp_path), pad=2))
    assert data.input_shape == (1, 32, 32) and data.x_train.dtype == torch.float32
    # transforms.ToTensor(), Normalize(0.2860, 0.3530), Pad(2): normalised first, then zeros around
    expected = np.pad((pixels.astype(np.float32) / 255.0 - 0.2860) / 0.3530, ((0, 0), (2, 2), (2, 2)))
    assert np.allclose(data.x_train[:, 0].numpy(), expected, atol=1e-6)
    sub = load_data(DataConfig(name="fashionmnist", root=str(tmp_path), per_class=1, test_per_class=1))
    assert sub.x_train.shape == (10, 1, 28, 28) and sorted(sub.y_train.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="per_class"):
        DataConfig(name="digits", per_class=3)


def test_paper_configs_are_the_papers_and_cite_the_official_file():
    assert {c.name for c in PAPER} >= {
        "intermediate_paper_resnet18_mnist", "intermediate_paper_mlp_fashionmnist",
        "intermediate_paper_convnet_fashionmnist", "intermediate_paper_fixed_etf_fashionmnist"}
    for entry in PAPER:
        text = entry.path.read_text()
        assert "mariuslindegaard/Intermediate_Neural_Collapse@ICML2023" in text and "the paper's" in text
        raw = read_yaml_mapping(entry.path)
        cfg = load_run_config(entry.path, ["model.impl=own"] if "resnet" in entry.name else []).config
        assert cfg.train.loss == "mse" and cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9
        assert cfg.train.pool == "flatten" and cfg.optim.schedule == "step" and cfg.data.batch_size == 128
        assert raw["kind"].startswith("intermediate") and "GPU" in raw["cpu_time"]
        if cfg.model.arch.startswith("resnet"):
            assert cfg.model.stem == "imagenet" and cfg.train.epochs == 350 and cfg.optim.milestones == (175,)
    for own in ("intermediate_digits", "intermediate_smoke", "intermediate_resnet18_small_mnist"):
        path = find_config(own)
        assert re.search(r"(?<!not )the paper's setting", path.read_text(), re.IGNORECASE) is None, own
        assert load_run_config(path).config.train.loss == "mse_sum"


@pytest.mark.skipif(not DEBIAN.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_paper_config_checks_pass_before_any_file_is_written():
    cfg = load_run_config("intermediate_paper_convnet_fashionmnist").config
    _check(cfg)  # model builds for (1, 32, 32), layer patterns resolve, the files are there


def digits_convnet():
    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits"))
    model = build_model(ModelConfig(arch="convnet", depth=3, width=8, bias=False), data.input_shape, 10)
    return data, model


def test_flattened_measurement_projected_nc1_equals_full_and_direct_reference():
    data, model = digits_convnet()
    x64 = data.x_train.double()
    model = model.double()
    batches = eval_batches(x64, data.y_train, 256, 0, 1)
    dev = torch.device("cpu")
    full, _ = measure_layers(model, batches, None, layers=["conv", "fc"], pool="flatten", num_classes=10,
                             device=dev, scatter="full")
    proj, _ = measure_layers(model, batches, None, layers=["conv", "fc"], pool="flatten", num_classes=10,
                             device=dev, scatter="projected")
    assert [r["dim"] for r in full] == [64, 8 * 4 * 4, 8 * 2 * 2, 8 * 2 * 2]  # C·H·W, not C
    for a, b in zip(full, proj):
        assert a["scatter"] == "full" and b["scatter"] == "projected"
        assert b["nc1"] == pytest.approx(a["nc1"], rel=1e-10)
        assert b["nc1_official"] == pytest.approx(a["nc1_official"], rel=1e-10)
        assert b["within_share"] == pytest.approx(a["within_share"], rel=1e-12)
    # independent float64 reference at b1.conv: features by a hook, Σ_W and Σ_B⁺ directly
    feats = {}

    def keep(module, args, output):
        feats["h"] = args[0].flatten(1)  # returns None: the output is left alone

    handle = model.b1.conv.register_forward_hook(keep)
    with torch.no_grad():
        model.eval()(x64)
    handle.remove()
    h, y = feats["h"], data.y_train
    means = torch.stack([h[y == c].mean(0) for c in range(10)])
    sw = sum((h[y == c] - means[c]).T @ (h[y == c] - means[c]) for c in range(10)) / h.shape[0]
    mb = means - means.mean(0)
    sb = mb.T @ mb / 10
    expected = float(torch.trace(sw @ torch.linalg.pinv(sb, hermitian=True, rtol=1e-10)) / 10)
    assert proj[1]["nc1"] == pytest.approx(expected, rel=1e-8)


def test_class_scatters_against_direct_sums():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 30, generator=g, dtype=torch.float64), torch.arange(200) % 4
    x = x + 3 * torch.randn(4, 30, generator=g, dtype=torch.float64)[y]
    stats = ClassStats(4).update(x, y)
    cs = ClassScatters(stats.means)
    for rows in (slice(0, 77), slice(77, 200)):  # two batches, unequal class counts in each
        cs.update(x[rows], y[rows])
    for c in range(4):
        a = x[y == c] - x[y == c].mean(0)
        assert torch.allclose(cs.scatter[c], a.T @ a, atol=1e-10)
    assert cs.counts.tolist() == [50.0] * 4


def test_seeds_run_aggregates_its_sub_runs(tmp_path):
    cfg = replace(IntermediateConfig(name="seeds"), seeds=[0, 1], data={"train_subset": 300},
                  model={"depth": 2, "width": 16},
                  train={"epochs": 2, "measure_every": 2, "progress": False, "loss": "mse"},
                  fixed_etf={"enabled": True, "num_fixed": [0, 2], "epochs": 1, "rule": "official"})
    out = run_intermediate(cfg, tmp_path / "run")
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and (out / "seed0" / "layers.jsonl").is_file()
    finals = []
    for s in (0, 1):
        recs = [json.loads(line) for line in (out / f"seed{s}" / "layers.jsonl").read_text().splitlines()]
        finals.append({r["layer"]: r for r in recs if r["split"] == "train" and r["epoch"] == 2})
        rho = spearmanr([r["index"] for r in finals[-1].values()], [r["within_share"] for r in finals[-1].values()])
        trend = [t for t in summary["trend"] if t["seed"] == s and t["metric"] == "within_share"][0]
        assert trend["rho"] == pytest.approx(rho.statistic)
    row = summary["layers"]["train"][1]
    values = [f[row["layer"]]["within_share"] for f in finals]
    assert row["within_share_mean"] == pytest.approx(np.mean(values))
    assert row["within_share_sd"] == pytest.approx(np.std(values))
    fixed = summary["fixed_etf"]
    assert [r["num_fixed"] for r in fixed] == [0, 2] and fixed[0]["n_seeds"] == 2
    assert (out / "seeds_layers.csv").is_file() and (out / "seeds_fixed_etf.csv").is_file()
    assert json.loads((out / "summary.json").read_text())["results"]["seeds"] == [0, 1]


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN.exists(), reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize("config", ["intermediate_fashionmnist_mlp", "intermediate_fashionmnist_convnet",
                                    "intermediate_fashionmnist_fixed_etf"])
def test_cpu_scale_fashion_mnist_reproduction(config, tmp_path):
    """The CPU-scale reproduction (3 seeds; ~15–40 CPU-minutes per config, see each config's cpu_time): the
    claims that hold at this scale (README, "Intermediate neural collapse")."""
    from typer.testing import CliRunner

    from nclens.cli import app

    out = tmp_path / config
    result = CliRunner().invoke(app, ["run", config, "--out", str(out), "--no-progress", "--threads", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    if config.endswith("fixed_etf"):
        rows = {r["num_fixed"]: r for r in summary["fixed_etf"]}
        # measured: fixing the top 2 layers costs < 0.03 test accuracy; fixing 5 or more costs much more at
        # this scale (30 epochs), so the paper's claim is not asserted beyond L = 2
        assert rows[2]["test_accuracy_mean"] >= rows[0]["test_accuracy_mean"] - 0.03
        return
    table = summary["layers"]["train"]
    assert summary["accuracy"]["train_accuracy_mean"] >= 0.97
    if config.endswith("convnet"):
        # flattened conv inputs (C·H·W); b1's 8,192-dim input takes the exact projected scatter. The paper's
        # depth trend does not appear at this scale (README): only the measurement is asserted here.
        first = [json.loads(line) for line in (out / "seed0" / "layers.jsonl").read_text().splitlines()][:7]
        assert [r["dim"] for r in first] == [1024, 8192, 2048, 2048, 2048, 2048, 2048]
        assert first[1]["scatter"] == "projected" and first[0]["scatter"] == "full"
        assert all(r["nc1_mean"] > 0 for r in table)
        return
    for trend in summary["trend"]:  # the MLP: the within-class share falls with depth at the end, in every seed
        assert trend["rho"] < -0.8 and trend["p"] < 0.01
    assert table[0]["nc1_mean"] / table[-1]["nc1_mean"] >= 5  # nc1 falls from the first to the last layer
    top = table[-1]  # the classifier's input: its weights align with the class means above chance
    assert top["subspace_alignment_mean"] > 2 * top["subspace_alignment_random_mean"]
    assert top["ncc_accuracy_mean"] > table[0]["ncc_accuracy_mean"]
