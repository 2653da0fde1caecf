"""Feature files and `nclens measure`: formats, label conventions, errors that write nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nclens.cli import app
from nclens.core.features import load_feature_file, measure_features, save_feature_file
from nclens.core.metrics import MULTICLASS_METRIC_NAMES
from nclens.data import gaussian_features
from reference import reference_metrics

runner = CliRunner()


@pytest.fixture()
def feats():
    data = gaussian_features(4, 10, 40, radius=2.0, sigma=0.5, seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    w = data.weight + 0.1 * torch.randn(4, 10, generator=g, dtype=torch.float64)
    return data.features.numpy(), data.labels.numpy(), w.numpy(), np.zeros(4)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_cli_json_keys_and_values(tmp_path, feats, suffix):
    x, y, w, b = feats
    path = save_feature_file(tmp_path / f"f{suffix}", x, y, w, b)
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["measure", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    # every registered metric a feature file can give (the layer and NCC-accuracy metrics need a model)
    expected = [n for n in MULTICLASS_METRIC_NAMES if n not in ("ncc_accuracy", "subspace_alignment",
                                                                 "assoc_memory_alignment")]
    assert list(got) == expected
    ref = reference_metrics(x, y, w, b)
    for name, value in ref.items():
        assert math.isclose(got[name], value, rel_tol=1e-8, abs_tol=1e-12), name


def test_without_weight_any_integer_labels(tmp_path, feats):
    x, y, _, _ = feats
    relabelled = np.array([3, 7, 42, -5])[y]
    np.savez(tmp_path / "a.npz", features=x, labels=relabelled)
    np.savez(tmp_path / "b.npz", features=x, labels=y)
    a = measure_features(load_feature_file(tmp_path / "a.npz"))
    b = measure_features(load_feature_file(tmp_path / "b.npz"))
    assert set(a) == {"nc1", "nc1_trace", "within_share", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_etf",
                      "effective_rank"}
    for name in a:
        assert math.isclose(a[name], b[name], rel_tol=1e-12)


def _invoke_bad(tmp_path, arrays, match, name="bad.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["measure", str(path), "--json", str(out)])
    assert result.exit_code == 2, result.output
    assert match in " ".join(result.output.split()), result.output
    assert not out.exists()  # nothing partial written


def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path, feats):
    x, y, w, _ = feats
    xn = x.copy()
    xn[3, 2] = np.nan
    _invoke_bad(tmp_path, {"features": xn, "labels": y}, "NaN or Inf")
    xi = x.copy()
    xi[0, 0] = np.inf
    _invoke_bad(tmp_path, {"features": xi, "labels": y}, "NaN or Inf")
    _invoke_bad(tmp_path, {"features": x, "labels": y + 0.5}, "non-integer")
    _invoke_bad(tmp_path, {"features": x, "labels": y[:-1]}, "has 159 entries but features have 160 rows")
    _invoke_bad(tmp_path, {"features": x, "labels": np.zeros_like(y)}, "at least 2 classes")
    _invoke_bad(tmp_path, {"features": x, "labels": y, "weight": w[:, :3]}, "weight must be K×D with D=10")
    _invoke_bad(tmp_path, {"features": x, "labels": y + 1, "weight": w}, "labels must lie in [0, 3]")
    _invoke_bad(tmp_path, {"feats": x}, "lacks ['features', 'labels']")
    _invoke_bad(tmp_path, {"features": np.array([{"a": 1}], dtype=object), "labels": np.array([0])}, "pickle")
    result = runner.invoke(app, ["measure", str(tmp_path / "missing.npz")])
    assert result.exit_code == 2 and "not found" in result.output
    (tmp_path / "f.csv").write_text("1,2\n")
    result = runner.invoke(app, ["measure", str(tmp_path / "f.csv")])
    assert result.exit_code == 2 and ".npz or .safetensors" in " ".join(result.output.split())


def test_single_sample_class_leaves_only_cdnv_undefined(tmp_path, feats):
    x, y, _, _ = feats
    single = np.arange(160) % 3
    single[0] = 3  # class 3 has one sample: its variance, hence cdnv, is undefined; nothing else is
    np.savez(tmp_path / "s.npz", features=x, labels=single)
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["measure", str(tmp_path / "s.npz"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    assert got["cdnv"] is None
    ref = reference_metrics(x, single)
    for name in ("nc1", "nc1_trace", "within_share", "nc2_etf"):
        assert math.isclose(got[name], ref[name], rel_tol=1e-8), name


def test_version_flag():
    import nclens

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == nclens.__version__
