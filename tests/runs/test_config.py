"""The config machinery: YAML load, typed overrides, finite numbers, duplicate keys, shipped configs."""

from __future__ import annotations

import pytest

from nclens.intermediate.config import IntermediateConfig
from nclens.runs.config import (
    build_config,
    config_as_dict,
    config_to_yaml,
    dotted_keys,
    load_yaml_config,
    override_config,
    replace,
)
from nclens.runs.experiment import find_config, load_run_config, shipped_configs, validate_run_name


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = load_run_config("intermediate_digits").config
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_yaml_config(IntermediateConfig, path) == cfg
    assert build_config(IntermediateConfig, config_as_dict(cfg)) == cfg
    assert build_config(IntermediateConfig, {}) == IntermediateConfig()


def test_overrides_are_coerced_to_field_types():
    cfg = override_config(IntermediateConfig(), [
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
        override_config(IntermediateConfig(), ["train.epochz=3"])
    with pytest.raises(ValueError, match=r"unknown key 'trian.epochs'; valid keys: .*train\.epochs"):
        override_config(IntermediateConfig(), ["trian.epochs=3"])
    path = tmp_path / "bad.yaml"
    path.write_text("model: {arch: mlp, widht: 3}\n")
    with pytest.raises(ValueError, match=r"unknown key 'widht' in section 'model'; valid keys: .*width"):
        load_yaml_config(IntermediateConfig, path)
    path.write_text("modle: {arch: mlp}\n")
    with pytest.raises(ValueError, match="unknown top-level key 'modle'"):
        load_yaml_config(IntermediateConfig, path)
    keys = dotted_keys(IntermediateConfig)
    assert "train.epochs" in keys and "fixed_etf.num_fixed" in keys


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("train.epochs=abc", TypeError, "train.epochs must be an integer, got 'abc'"),
        ("train.epochs=2.5", TypeError, "train.epochs must be an integer"),
        ("model.batchnorm=maybe", TypeError, "model.batchnorm must be a boolean"),
        ("optim.lr=fast", TypeError, "optim.lr must be a number"),
        ("optim.lr=nan", ValueError, "optim.lr must be a finite number, got nan"),
        ("optim.weight_decay=inf", ValueError, "optim.weight_decay must be a finite number, got inf"),
        ("optim.warmup_epochs=.nan", ValueError, "optim.warmup_epochs must be a finite number"),
        ("optim.gamma=-.inf", ValueError, "optim.gamma must be a finite number"),
        ("train.loss=hinge", ValueError, r"train.loss must be one of \['ce', 'mse', 'mse_sum', 'mse_half'\]"),
        ("model.arch=vgg", ValueError, "model.arch must be one of"),
        ("train.epochs=0", ValueError, "train.epochs must be > 0"),
        ("optim.lr=-1", ValueError, "optim.lr must be > 0"),
        ("data.name=cifar10", ValueError, "set data.root"),
        ("train.measure_epochs=[0, 999]", ValueError, "measure_epochs must lie in"),
        ("train.epochs", ValueError, "must look like section.key=value"),
        ("fixed_etf.enabled=true", ValueError, "exceeds the MLP"),
    ],
)
def test_bad_values_are_clear_errors(override, error, match):
    base = replace(IntermediateConfig(), fixed_etf={"num_fixed": [0, 99]})
    with pytest.raises(error, match=match):
        override_config(base, [override])


def test_yaml_files_empty_duplicate_keys_missing_and_non_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_yaml_config(IntermediateConfig, tmp_path / "nope.yaml")
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_yaml_config(IntermediateConfig, path)
    path.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_yaml_config(IntermediateConfig, path)
    path.write_text("name: a\ntrain:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ValueError, match=r"duplicate key 'epochs' at line 4 \(first at line 3\)"):
        load_yaml_config(IntermediateConfig, path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_yaml_config(IntermediateConfig, path)


@pytest.mark.parametrize("name", ["/tmp/abs", "../up", "a/b", "", ".hidden", "x..y", "a b"])
def test_run_names_stay_inside_runs(name):
    with pytest.raises(ValueError, match="plain folder name"):
        validate_run_name(name)
    assert validate_run_name("intermediate-digits_2.1") == "intermediate-digits_2.1"


def test_measured_epochs():
    cfg = replace(IntermediateConfig(), train={"epochs": 12, "measure_every": 5})
    assert cfg.train.measured_epochs() == [0, 5, 10, 12]
    cfg = replace(cfg, train={"measure_epochs": [12, 3, 3]})
    assert cfg.train.measured_epochs() == [3, 12]


def test_shipped_configs_are_valid_and_found_by_name(tmp_path):
    configs = shipped_configs()
    assert {"intermediate_digits", "intermediate_smoke"} <= {c.name for c in configs}
    for c in configs:
        spec = load_run_config(c.name)
        assert spec.experiment.kind == c.kind and c.description and c.cpu_time
    assert find_config("intermediate_digits") == find_config("intermediate_digits.yaml")
    with pytest.raises(FileNotFoundError, match="neither a file nor a shipped config; shipped: .*intermediate_smoke"):
        find_config("no_such_config")
    (tmp_path / "k.yaml").write_text("name: x\n")
    with pytest.raises(ValueError, match="has no 'kind:'"):
        load_run_config(tmp_path / "k.yaml")
    (tmp_path / "k.yaml").write_text("kind: nope\nname: x\n")
    with pytest.raises(ValueError, match="unknown experiment kind 'nope'; known kinds: .*intermediate"):
        load_run_config(tmp_path / "k.yaml")
