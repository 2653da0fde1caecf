"""Lightning NeuralCollapseCallback: 1 process and 2-process DDP (CPU, gloo) log the values that a
one-process measure() gives on the same weights; the job must finish (a timeout guards deadlocks)."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pytest.importorskip("pytorch_lightning" if not __import__("importlib").util.find_spec("lightning") else "lightning")

from nclens.core.measure import measure  # noqa: E402

JOB = Path(__file__).with_name("lightning_ddp_job.py")


def _run(out: Path, devices: int) -> dict[str, float]:
    if devices == 1:  # in this process
        _job().main(str(out), 1)
    else:  # DDP in a subprocess, under a timeout: a deadlock fails the test instead of hanging it
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, str(JOB), str(out), str(devices)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
    rows = list(csv.DictReader(open(out / "csv" / "version_0" / "metrics.csv")))
    logged = [r for r in rows if any(k.startswith("nc/") and r[k] for k in r)]
    assert [int(r["epoch"]) for r in logged] == [0, 1]  # every epoch, logged once (rank 0)
    return {k: float(v) for k, v in logged[-1].items() if k.startswith("nc/") and v != ""}


def _job():
    if str(JOB.parent) not in sys.path:
        sys.path.insert(0, str(JOB.parent))
    import lightning_ddp_job

    return lightning_ddp_job


def _expected(out: Path) -> dict[str, float]:
    job = _job()
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    net.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    report = measure(net, DataLoader(job.data(), batch_size=30), layers=["0", "2"], nc4=True, progress=False)
    return {f"nc/net.{layer}/{metric}": value for layer, row in report.metrics.items() for metric, value in row.items()}


def _compare(out: Path, logged: dict[str, float], expected: dict[str, float]) -> None:
    assert logged.keys() == expected.keys()
    for key, value in expected.items():  # Lightning's loggers store float32
        assert math.isclose(logged[key], value, rel_tol=1e-6, abs_tol=1e-9), key
    history = torch.load(out / "history.pt", weights_only=True)  # the callback's own float64 records
    last = {f"nc/{r['layer']}/{r['metric']}": r["value"] for r in history if r["epoch"] == 2}
    assert {r["epoch"] for r in history} == {1, 2} and last.keys() == expected.keys()
    for key, value in expected.items():
        assert math.isclose(last[key], value, rel_tol=1e-10, abs_tol=1e-12), key


def test_one_process_logs_measure_of_the_final_weights(tmp_path):
    logged = _run(tmp_path, 1)
    _compare(tmp_path, logged, _expected(tmp_path))


@pytest.mark.distributed
def test_two_process_ddp_logs_the_one_process_values(tmp_path):
    logged = _run(tmp_path, 2)
    _compare(tmp_path, logged, _expected(tmp_path))


def test_options_are_checked():
    from nclens.integrations.lightning import NeuralCollapseCallback

    with pytest.raises(ValueError, match="every_n_epochs must be a positive integer"):
        NeuralCollapseCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match="dataloader must be 'train', 'val' or a callable"):
        NeuralCollapseCallback(dataloader="test")
    with pytest.raises(ValueError, match="sets 'distributed' itself"):
        NeuralCollapseCallback(distributed="off")
