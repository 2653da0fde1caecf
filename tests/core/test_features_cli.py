"""Feature files and `nclens measure`: formats, label conventions, provenance, output formats, and the
bad-input cases of issue 21 (each a regression test: clear error, exit code 2, nothing written)."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import struct
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nclens
from nclens.cli import app
from nclens.core.features import (
    load_feature_file,
    measure_feature_file,
    measure_features,
    read_feature_file,
    read_headers,
    save_feature_file,
)
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


def _json(path):
    return json.loads(path.read_text())["results"]


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pt"])
def test_cli_json_keys_values_and_provenance(tmp_path, feats, suffix):
    x, y, w, b = feats
    path = save_feature_file(tmp_path / f"f{suffix}", x, y, w, b, metadata={"model": "toy"})
    out = tmp_path / "m.json"
    result = runner.invoke(app, ["measure", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    (got,) = _json(out)
    # every registered default metric a feature file can give (layer and NCC-accuracy metrics need a model)
    expected = [n for n in MULTICLASS_METRIC_NAMES if n not in ("ncc_accuracy", "subspace_alignment",
                                                                 "assoc_memory_alignment")]
    assert list(got["metrics"]) == expected
    ref = reference_metrics(x, y, w, b)
    for name, value in ref.items():
        assert math.isclose(got["metrics"][name], value, rel_tol=1e-8, abs_tol=1e-12), name
    assert (got["n"], got["d"], got["k"], got["dtype"]) == (160, 10, 4, "float64")
    assert got["nclens"] == nclens.__version__ and got["layer"] is None
    assert got["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    if suffix != ".npz":
        assert got["metadata"] == {"model": "toy"}


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


def test_several_files_and_layers_in_one_table(tmp_path, feats):
    x, y, w, b = feats
    rng = np.random.default_rng(3)
    other = x @ rng.normal(size=(10, 6))
    save_feature_file(tmp_path / "multi.safetensors", x, y, layers={"block1": other, "head": x})
    np.savez(tmp_path / "plain.npz", features=other, labels=y)
    out = tmp_path / "all.json"
    result = runner.invoke(app, ["measure", str(tmp_path / "multi.safetensors"), str(tmp_path / "plain.npz"),
                                 "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = _json(out)
    assert [(os.path.basename(r["file"]), r["layer"]) for r in rows] == [
        ("multi.safetensors", None), ("multi.safetensors", "block1"), ("multi.safetensors", "head"),
        ("plain.npz", None)]
    assert rows[1]["d"] == 6 and rows[1]["metrics"] == pytest.approx(rows[3]["metrics"], rel=1e-12)
    assert rows[2]["metrics"] == pytest.approx(rows[0]["metrics"], rel=1e-12)
    assert math.isclose(rows[1]["metrics"]["nc1"], reference_metrics(other, y)["nc1"], rel_tol=1e-8)
    only = runner.invoke(app, ["measure", str(tmp_path / "multi.safetensors"), "--layer", "block1", "-f", "json"])
    assert only.exit_code == 0 and [r["layer"] for r in json.loads(only.output)["results"]] == ["block1"]
    bad = runner.invoke(app, ["measure", str(tmp_path / "multi.safetensors"), "--layer", "nope"])
    assert bad.exit_code == 2 and "has no layer(s) ['nope']" in bad.output


def test_output_formats_agree(tmp_path, feats):
    x, y, w, b = feats
    path = save_feature_file(tmp_path / "f.npz", x, y, w, b)
    js = json.loads(runner.invoke(app, ["measure", str(path), "-f", "json"]).output)["results"][0]["metrics"]
    text = runner.invoke(app, ["measure", str(path), "-f", "csv"]).output
    (row,) = list(csv.DictReader(io.StringIO(text)))
    assert row["features"] == "f.npz"
    for name, value in js.items():
        assert float(row[name]) == value, name
    md = runner.invoke(app, ["measure", str(path), "-f", "markdown"]).output.splitlines()
    assert md[0].startswith("| features | `nc1` |") and md[1].startswith("|---|") and md[2].startswith("| f.npz |")
    tex = runner.invoke(app, ["measure", str(path), "-f", "latex", "--out", str(tmp_path / "t.tex")])
    assert tex.exit_code == 0
    body = (tmp_path / "t.tex").read_text()
    assert body.startswith(r"\begin{tabular}") and r"nc1\_trace" in body and r"f.npz &" in body
    assert runner.invoke(app, ["measure", str(path), "-f", "xml"]).exit_code == 2


def _invoke_bad(tmp_path, arrays, match, name="bad.npz", args=()):
    path = tmp_path / name
    if arrays is not None:
        np.savez(path, **arrays)
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["measure", str(path), "--json", str(out), *args])
    assert result.exit_code == 2, result.output
    assert match in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    assert not out.exists()  # nothing partial written
    return result


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
    _invoke_bad(tmp_path, {"features": np.array([{"a": 1}], dtype=object), "labels": np.array([0])}, "need pickle")
    result = runner.invoke(app, ["measure", str(tmp_path / "missing.npz")])
    assert result.exit_code == 2 and "not found" in result.output
    (tmp_path / "f.csv").write_text("1,2\n")
    result = runner.invoke(app, ["measure", str(tmp_path / "f.csv")])
    assert result.exit_code == 2 and ".npz, .safetensors or .pt" in " ".join(result.output.split())


# ----------------------------------------------------------------- issue 21: feature files
def test_empty_npz_zero_byte_text_truncated_and_corrupt_files(tmp_path, feats):
    x, y, _, _ = feats
    np.savez(tmp_path / "empty.npz")
    _invoke_bad(tmp_path, None, "holds no arrays (an empty .npz)", name="empty.npz")
    (tmp_path / "zero.npz").write_bytes(b"")
    _invoke_bad(tmp_path, None, "is empty (0 bytes)", name="zero.npz")
    (tmp_path / "text.npz").write_text("features,labels\n1,2\n")
    r = _invoke_bad(tmp_path, None, "is not a .npz archive (not a zip file", name="text.npz")
    assert "pickle" not in r.output
    np.savez(tmp_path / "good.npz", features=x, labels=y)
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    _invoke_bad(tmp_path, None, "trunc.npz", name="trunc.npz")
    corrupt = bytearray(data)
    start = data.index(b"\x93NUMPY")  # inside the first member: break its .npy header
    corrupt[start: start + 6] = b"XXXXXX"
    (tmp_path / "corrupt.npz").write_bytes(bytes(corrupt))
    _invoke_bad(tmp_path, None, "corrupt.npz", name="corrupt.npz")
    (tmp_path / "zero.safetensors").write_bytes(b"")
    _invoke_bad(tmp_path, None, "is empty (0 bytes)", name="zero.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    _invoke_bad(tmp_path, None, "cannot read", name="junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    r = _invoke_bad(tmp_path, None, "is not a .pt file saved by torch.save", name="junk.pt")
    assert "weights_only=False" not in r.output


def test_pt_files_load_weights_only(tmp_path, feats):
    x, y, _, _ = feats

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"features": torch.from_numpy(x), "labels": torch.from_numpy(y), "x": Evil()}, tmp_path / "evil.pt")
    r = _invoke_bad(tmp_path, None, "weights-only load refuses", name="evil.pt")
    assert "weights_only=False" not in r.output and "pwned" not in r.output
    torch.save([1, 2], tmp_path / "list.pt")
    _invoke_bad(tmp_path, None, "must hold a dict of tensors", name="list.pt")


def test_n_by_1_labels_are_not_multilabel(tmp_path, feats):
    x, y, _, _ = feats
    r = _invoke_bad(tmp_path, {"features": x, "labels": (y % 2)[:, None]}, "one column is not a multi-label set")
    assert "squeeze" in r.output


def _fake_npz(path, shape, dtype="<f8", body=b""):
    """A .npz whose member header claims ``shape`` (no data needed: the check must come first)."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text) + pad + 1) + text + b" " * pad + b"\n" + body
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("features.npy", npy)
        archive.writestr("labels.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) +
                         repr({"descr": "<i8", "fortran_order": False, "shape": (shape[0],)}).encode().ljust(117)
                         + b"\n")


def test_compressed_npz_is_checked_from_headers_before_loading(tmp_path, monkeypatch):
    import nclens.core.features as features_module

    path = tmp_path / "big.npz"
    _fake_npz(path, (32768, 8192), body=b"\x00" * 2**20)  # claims 2 GiB, stores ~1 KiB compressed
    assert path.stat().st_size < 2 * 2**20
    heads = read_headers(path)
    assert heads["features"].shape == (32768, 8192) and heads["features"].nbytes == 2 * 2**30

    def no_load(*args, **kwargs):
        raise AssertionError("np.load was called before the memory check")

    monkeypatch.setattr(features_module.np, "load", no_load)
    r = _invoke_bad(tmp_path, None, "needs about", name="big.npz", args=("--max-memory", "1"))
    assert "nothing was loaded" in " ".join(r.output.split()) and "D×D statistics" in r.output
    with pytest.raises(MemoryError, match="over the limit of 1.00 GiB"):
        read_feature_file(path, max_bytes=2**30)
    monkeypatch.setenv("NCLENS_MAX_BYTES", str(2**30))
    _invoke_bad(tmp_path, None, "over the limit of 1.00 GiB", name="big.npz")


def test_real_compressed_npz_refused_before_expanding(tmp_path):
    np.savez_compressed(tmp_path / "zeros.npz", features=np.zeros((4096, 2048)), labels=np.arange(4096) % 2)
    assert (tmp_path / "zeros.npz").stat().st_size < 2**20  # 64 MiB of zeros
    _invoke_bad(tmp_path, None, "needs about", name="zeros.npz", args=("--max-memory", "0.05"))


# ----------------------------------------------------------------- issue 21: output files
def test_output_path_equal_to_an_input_is_refused(tmp_path, feats):
    x, y, _, _ = feats
    path = save_feature_file(tmp_path / "f.npz", x, y)
    before = path.read_bytes()
    for option in ("--json", "--out"):
        for spelled in (str(path), str(tmp_path / "." / "f.npz")):
            r = runner.invoke(app, ["measure", str(path), option, spelled])
            assert r.exit_code == 2 and "is also an input" in r.output, r.output
    assert path.read_bytes() == before
    assert load_feature_file(path).features.shape == (160, 10)


def test_overwriting_json_keeps_permissions(tmp_path, feats):
    x, y, _, _ = feats
    path = save_feature_file(tmp_path / "f.npz", x, y)
    out = tmp_path / "m.json"
    out.write_text("{}")
    os.chmod(out, 0o640)
    assert runner.invoke(app, ["measure", str(path), "--json", str(out), "-q"]).exit_code == 0
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o640) and _json(out)[0]["n"] == 160
    fresh = tmp_path / "new.json"
    assert runner.invoke(app, ["measure", str(path), "--json", str(fresh), "-q"]).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(fresh).st_mode & 0o777 == 0o666 & ~umask


def test_write_failures_are_clear_errors(tmp_path, feats, monkeypatch):
    import nclens.core.io as io_module

    x, y, _, _ = feats
    path = save_feature_file(tmp_path / "f.npz", x, y)
    (tmp_path / "adir").mkdir()
    r = runner.invoke(app, ["measure", str(path), "--json", str(tmp_path / "adir")])
    assert r.exit_code == 2 and "is a directory" in r.output and "Traceback" not in r.output
    old = tmp_path / "old.json"
    old.write_text('{"kept": true}')

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    with monkeypatch.context() as m:  # a read-only folder (the tests may run as root, which ignores modes)
        m.setattr(io_module.tempfile, "mkstemp", read_only)
        r = runner.invoke(app, ["measure", str(path), "--json", str(old)])
    assert r.exit_code == 2 and "cannot write" in r.output and "old.json" in r.output
    assert "Permission denied" in r.output

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(io_module.os, "fsync", full_disk)
        r = runner.invoke(app, ["measure", str(path), "--json", str(old)])
    assert r.exit_code == 2 and "No space left on device" in r.output and "old.json" in r.output
    assert json.loads(old.read_text()) == {"kept": True}  # the previous version is intact
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temporary left


# ----------------------------------------------------------------- rare classes
def test_single_sample_class_is_excluded_from_cdnv_only(tmp_path, feats):
    x, y, _, _ = feats
    single = np.arange(160) % 3
    single[0] = 3  # class 3 has one sample: no variance, so cdnv is taken over classes 0-2; the rest over 0-3
    np.savez(tmp_path / "s.npz", features=x, labels=single)
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["measure", str(tmp_path / "s.npz"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    (got,) = _json(out)
    assert got["excluded"] == {"cdnv": [3]}
    ref = reference_metrics(x, single)
    for name in ("nc1", "nc1_trace", "within_share", "nc2_etf"):
        assert math.isclose(got["metrics"][name], ref[name], rel_tol=1e-8), name
    keep = single != 3
    assert math.isclose(got["metrics"]["cdnv"], reference_metrics(x[keep], single[keep])["cdnv"], rel_tol=1e-10)


def test_min_class_count_excludes_rare_classes_everywhere(tmp_path, feats):
    x, y, _, _ = feats
    labels = y.copy()
    labels[:3] = 9  # class 9: 3 samples
    np.savez(tmp_path / "r.npz", features=x, labels=labels)
    out = tmp_path / "r.json"
    r = runner.invoke(app, ["measure", str(tmp_path / "r.npz"), "--min-class-count", "4", "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    (got,) = _json(out)
    assert got["excluded"] == {"all": [9]}
    keep = labels != 9
    ref = reference_metrics(x[keep], labels[keep])
    for name in ("nc1_trace", "within_share", "cdnv", "nc2_etf", "nc2_equinorm"):
        assert math.isclose(got["metrics"][name], ref[name], rel_tol=1e-9), name
    # the pooled D×D scatter cannot drop a 3-sample class: nc1/effective_rank are left out, with a note
    assert "nc1" not in got["metrics"] and any("left out" in note for note in got["notes"])
    values, info = measure_feature_file(load_feature_file(tmp_path / "r.npz"), min_class_count=2)
    assert "nc1" in values and info["excluded"] == {}


def test_extra_metrics_by_name(tmp_path, feats):
    x, y, w, b = feats
    path = save_feature_file(tmp_path / "f.npz", x, y, w, b)
    r = runner.invoke(app, ["measure", str(path), "--metrics", "gnc2_log,unc3_uniform_duality,cdnv_max", "-f", "json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)["results"][0]["metrics"]
    assert set(got) == {"gnc2_log", "unc3_uniform_duality", "cdnv_max", "nc4_ncc_mismatch"}
    r = runner.invoke(app, ["measure", str(path), "--metrics", "nope"])
    assert r.exit_code == 2 and "unknown metric 'nope'" in r.output


def test_version_flag():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == nclens.__version__
