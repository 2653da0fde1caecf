"""The experiment contract, for every kind: each shipped ``*smoke`` config runs, resumes exactly after a
SIGKILL, refuses a second writer, and renders its report — all through the ``nclens`` command."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nclens.runs.experiment import KIND_MODULES, experiment_kinds, get_experiment, shipped_configs

SMOKES = [c for c in shipped_configs() if c.name.endswith("smoke")]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
_RUN_FILES = {"config.yaml", "versions.json", ".lock"}


def _nclens(*args: str) -> list[str]:
    return [sys.executable, "-m", "nclens", *args]


def _start(name: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen(_nclens("run", name, "--out", str(out), "--no-report", "--no-progress", "--threads", "1"),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _strip(value, timing: tuple[str, ...]):
    if isinstance(value, dict):
        return {k: _strip(v, timing) for k, v in value.items() if k not in timing}
    if isinstance(value, list):
        return [_strip(v, timing) for v in value]
    return value


def _results(run: Path, timing: tuple[str, ...]) -> dict[str, object]:
    """Every result file of a run folder, parsed, timing fields removed (checkpoints as tensors)."""
    out: dict[str, object] = {}
    for path in sorted(run.rglob("*")):
        rel = str(path.relative_to(run))
        if not path.is_file() or path.name == ".lock" or path.name.endswith(".tmp") or rel == "versions.json":
            continue
        if path.suffix == ".json":
            out[rel] = _strip(json.loads(path.read_text()), timing)
        elif path.suffix == ".jsonl":
            out[rel] = [_strip(json.loads(line), timing) for line in path.read_text().splitlines() if line]
        elif path.suffix == ".pt":
            out[rel] = {k: v for k, v in torch.load(path, weights_only=True).items() if k in ("model", "epoch")}
        elif path.suffix == ".png":
            continue  # figures are drawn by `nclens report`, not compared byte for byte
        else:
            out[rel] = path.read_bytes()
    return out


def _equal(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_every_kind_ships_a_smoke_config_and_resolves():
    kinds = {c.kind for c in SMOKES}
    assert set(experiment_kinds()) <= kinds, f"kinds without a *smoke config: {set(experiment_kinds()) - kinds}"
    names = [c.name for c in shipped_configs()]
    assert len(names) == len(set(names)), "shipped config names must be unique across systems"
    for kind in KIND_MODULES:
        assert get_experiment(kind).kind == kind


@pytest.mark.parametrize("smoke", SMOKES, ids=[c.name for c in SMOKES])
def test_smoke_contract(smoke, tmp_path):
    timing = get_experiment(smoke.kind).timing_fields
    # 1. runs, and a second writer is refused at once while it runs (the first completes unharmed)
    full = tmp_path / "full"
    first = _start(smoke.name, full)
    _wait_for(lambda: (full / "config.yaml").is_file(), first, "the run folder was opened")
    second = subprocess.run(_nclens("run", smoke.name, "--out", str(full), "--no-report", "--no-progress"),
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0 and ("in use" in second.stderr or "already holds" in second.stderr), second.stderr
    log, _ = first.communicate(timeout=600)
    assert first.returncode == 0, log[-3000:]
    summary = json.loads((full / "summary.json").read_text())
    assert summary["complete"] is True and summary["kind"] == smoke.kind
    # 2. killed with SIGKILL after its first result file, then resumed: the same result files
    cut = tmp_path / "cut"
    victim = _start(smoke.name, cut)
    _wait_for(lambda: cut.is_dir() and any(p.name not in _RUN_FILES and not p.name.startswith(".")
                                           for p in cut.iterdir()), victim,
              "the first result file")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert not (cut / "summary.json").exists(), "the smoke run finished before it could be killed"
    resumed = subprocess.run(_nclens("run", smoke.name, "--out", str(cut), "--resume", "--no-report", "--no-progress",
                                     "--threads", "1"), env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    a, b = _results(full, timing), _results(cut, timing)
    assert a.keys() == b.keys()
    for key in a:
        assert _equal(a[key], b[key]), f"{key} differs after kill + resume"
    # 3. the report renders from the folder's files
    report = subprocess.run(_nclens("report", str(full)), env=ENV, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (full / "report.html").stat().st_size > 1000
