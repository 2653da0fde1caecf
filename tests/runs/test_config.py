"""Config: defaults, YAML load, typed overrides, clear errors naming the bad key/value."""

from __future__ import annotations

from pathlib import Path

import pytest

from nclens.runs.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    replace,
    valid_keys,
)
from nclens.intermediate.experiment import default_config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = default_config()
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict({}) == ExperimentConfig()


def test_overrides_are_coerced_to_field_types():
    cfg = apply_overrides(ExperimentConfig(), [
        "train.epochs=7", "optim.lr=1e-3", "model.batchnorm=false", "optim.milestones=[3, 5]",
        "train.layers=fc1", "data.train_subset=null", "data.train_subset=200", "train.loss=ce", "name=x",
        "optim.warmup_epochs=2",
    ])
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.lr == pytest.approx(1e-3) and cfg.model.batchnorm is False
    assert cfg.optim.milestones == (3, 5) and cfg.train.layers == ("fc1",)
    assert cfg.data.train_subset == 200 and cfg.train.loss == "ce" and cfg.name == "x"
    assert isinstance(cfg.optim.warmup_epochs, float)
    assert replace(cfg, train={"epochs": 3}).train.epochs == 3


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key 'epochz' in section 'train'; valid keys: .*epochs"):
        apply_overrides(ExperimentConfig(), ["train.epochz=3"])
    with pytest.raises(ValueError, match=r"unknown key 'trian.epochs'; valid keys: .*train\.epochs"):
        apply_overrides(ExperimentConfig(), ["trian.epochs=3"])
    path = tmp_path / "bad.yaml"
    path.write_text("model: {arch: mlp, widht: 3}\n")
    with pytest.raises(ValueError, match=r"unknown key 'widht' in section 'model'; valid keys: .*width"):
        load_config(path)
    path.write_text("modle: {arch: mlp}\n")
    with pytest.raises(ValueError, match="unknown top-level key 'modle'"):
        load_config(path)
    assert "train.epochs" in valid_keys() and "fixed_etf.num_fixed" in valid_keys()


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("train.epochs=abc", TypeError, "train.epochs must be an integer, got 'abc'"),
        ("train.epochs=2.5", TypeError, "train.epochs must be an integer"),
        ("model.batchnorm=maybe", TypeError, "model.batchnorm must be a boolean"),
        ("optim.lr=fast", TypeError, "optim.lr must be a number"),
        ("train.loss=hinge", ValueError, r"train.loss must be one of \['ce', 'mse'\], got 'hinge'"),
        ("model.arch=vgg", ValueError, "model.arch must be one of"),
        ("train.epochs=0", ValueError, "train.epochs must be > 0"),
        ("optim.lr=-1", ValueError, "optim.lr must be > 0"),
        ("data.name=cifar10", ValueError, "set data.root"),
        ("train.measure_epochs=[0, 999]", ValueError, "measure_epochs must lie in"),
        ("train.epochs", ValueError, "must look like section.key=value"),
        ("kind=fixed_etf", ValueError, None),
    ],
)
def test_bad_values_are_clear_errors(override, error, match):
    base = replace(ExperimentConfig(), fixed_etf={"num_fixed": [0, 99]})
    with pytest.raises(error, match=match or "exceeds the MLP"):
        apply_overrides(base, [override])


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(path)


def test_measured_epochs():
    cfg = replace(ExperimentConfig(), train={"epochs": 12, "measure_every": 5})
    assert cfg.train.measured_epochs() == [0, 5, 10, 12]
    cfg = replace(cfg, train={"measure_epochs": [12, 3, 3]})
    assert cfg.train.measured_epochs() == [3, 12]


def test_shipped_experiment_configs_are_valid():
    files = sorted(EXPERIMENTS.glob("intermediate_*.yaml"))
    assert len(files) >= 6
    for path in files:
        cfg = load_config(path)
        assert cfg.name.startswith("intermediate")
    paper = load_config(EXPERIMENTS / "intermediate_resnet18_cifar10.yaml")
    assert (paper.model.arch, paper.train.loss, paper.optim.name, paper.optim.weight_decay) == (
        "resnet18", "mse", "sgd", 5e-4
    )
    # the shipped digits config is the demo's default experiment
    shipped = load_config(EXPERIMENTS / "intermediate_digits.yaml")
    assert replace(shipped, name=default_config().name) == default_config()
