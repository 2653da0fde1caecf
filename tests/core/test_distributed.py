"""Distributed statistics and measurement: R gloo processes on CPU equal one process.

Two local processes (torch.multiprocessing via :func:`nclens.core.distributed.spawn`, which sets the
torchrun environment and calls ``init_from_env``) each stream their exact shard, all-reduce, and
write what they computed; the parent computes the same quantities in one process and compares to
1e-10 relative. Features are float64 so that the comparison tests the reduction itself; float32
features are compared as well, to the float32 GEMM's precision.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nclens.core.distributed import (
    ShardSampler,
    distributed_measure,
    init_from_env,
    shard_loader,
    spawn,
    world_size,
)
from nclens.core.measure import measure
from nclens.core.stats import ClassStats

pytestmark = pytest.mark.distributed

RTOL = 1e-10
BATCH = 32
SET_A = (-7, 3, 2**40)  # labels of even batches
SET_B = (3, 11, 99)  # labels of odd batches: rank 0 and rank 1 see different label sets


# ------------------------------------------------------------------ shared data and computations
def _features(n: int = 403, d: int = 6, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 5, (n,), generator=g)
    centres = 3.0 * torch.randn(5, d, generator=g, dtype=torch.float64)
    x = centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64) + 100.0  # offset: tests centring
    return x.to(dtype), y


def _arbitrary_labels(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    a, b = torch.tensor(SET_A), torch.tensor(SET_B)
    pick = torch.randint(0, 3, (n,), generator=g)
    even = (torch.arange(n) // BATCH) % 2 == 0
    return torch.where(even, a[pick], b[pick])


def _stream(x: torch.Tensor, y: torch.Tensor, rank: int, world: int, **kwargs) -> ClassStats:
    stats = ClassStats(**kwargs)
    for xb, yb in DataLoader(TensorDataset(x, y), batch_size=BATCH, sampler=ShardSampler(len(y), BATCH, rank=rank,
                                                                                          world_size=world)):
        stats.update(xb, yb)
    return stats.all_reduce()


def _stats_tensors(s: ClassStats) -> dict[str, torch.Tensor]:
    out = {"counts": s.counts, "sums": s.sums, "class_sq": s.class_sq, "labels": s.label_values.double()}
    if s.scatter_w is not None:
        out["scatter_w"] = s.scatter_w
    return out


def _cnn(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    ).to(dtype)


def _digits(dtype: torch.dtype) -> TensorDataset:
    from nclens.data import load_digits

    split = load_digits(seed=0)
    return TensorDataset(split.x_train.to(dtype), split.y_train)


def _compute(rank: int, world: int) -> dict:
    """Everything compared, computed on this rank's shard (world=1: the whole data, no process group)."""
    x, y = _features()
    out: dict = {
        "fixed": _stats_tensors(_stream(x, y, rank, world, num_classes=5)),
        "trace": _stats_tensors(_stream(x, y, rank, world, num_classes=5, scatter="trace")),
        "arbitrary": _stats_tensors(_stream(x, _arbitrary_labels(len(y)), rank, world, num_classes=None)),
        "f32": _stats_tensors(_stream(x.float(), y, rank, world, num_classes=5)),
    }
    for name, dtype in (("measure64", torch.float64), ("measure32", torch.float32)):
        report = distributed_measure(_cnn(dtype), _digits(dtype), BATCH * 4, nc4=True, progress=False)
        out[name] = report.metrics
        out[name + "_info"] = {"samples": report.info["samples"], "world": report.info["world_size"]}
    return out


def _worker(rank: int, out_dir: str) -> None:
    assert world_size() == 2
    torch.save(_compute(rank, 2), os.path.join(out_dir, f"rank{rank}.pt"))


# ----------------------------------------------------------------------------------- helpers
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max()) or 1.0
    return float((a - b).abs().max()) / scale


def _metric_rel(a: dict, b: dict) -> float:
    worst = 0.0
    assert a.keys() == b.keys()
    for layer in b:
        assert a[layer].keys() == b[layer].keys()
        for name, ref in b[layer].items():
            assert math.isfinite(ref)
            worst = max(worst, abs(a[layer][name] - ref) / max(abs(ref), 1e-300))
    return worst


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], dict]:
    out = tmp_path_factory.mktemp("dist")
    _spawn_retrying(_worker, (str(out),), outputs=[])
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return ranks, _compute(0, 1)


# ------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", ["fixed", "trace", "arbitrary"])
def test_all_reduce_equals_one_process(two_ranks, case):
    ranks, single = two_ranks
    for r in range(2):
        assert ranks[r][case].keys() == single[case].keys()
        for key, ref in single[case].items():
            assert ranks[r][case][key].shape == ref.shape, key
            assert _rel(ranks[r][case][key], ref) <= RTOL, (case, key, _rel(ranks[r][case][key], ref))


def test_arbitrary_labels_union(two_ranks):
    ranks, single = two_ranks
    expected = torch.tensor(sorted(set(SET_A) | set(SET_B)), dtype=torch.float64)
    assert torch.equal(single["arbitrary"]["labels"], expected)
    for r in range(2):
        assert torch.equal(ranks[r]["arbitrary"]["labels"], expected)


def test_stats_match_direct_reference(two_ranks):
    """The all-reduced scatter equals the two-pass float64 definition (not only the 1-process code)."""
    ranks, _ = two_ranks
    x, y = _features()
    means = torch.stack([x[y == c].mean(0) for c in range(5)])
    centred = x - means[y]
    assert _rel(ranks[0]["fixed"]["scatter_w"], centred.T @ centred) <= 1e-10
    sq = torch.zeros(5, dtype=torch.float64).index_add_(0, y, centred.square().sum(1))
    assert _rel(ranks[1]["fixed"]["class_sq"], sq) <= 1e-10


def test_measure_equals_one_process(two_ranks):
    ranks, single = two_ranks
    assert "nc4_ncc_mismatch" in single["measure64"]["9"]
    for r in range(2):
        assert ranks[r]["measure64_info"] == {"samples": single["measure64_info"]["samples"], "world": 2}
        assert _metric_rel(ranks[r]["measure64"], single["measure64"]) <= RTOL
        # float32 features: each rank centres a class on its own first batch mean before the float32 GEMM,
        # so the scatter differs by float32 round-off (~1e-7), amplified by ill-conditioned layers
        # (e.g. cdnv ~ 600 in a dead-ReLU layer); class sums and merges are exact float64.
        assert _metric_rel(ranks[r]["measure32"], single["measure32"]) <= 2e-5


def test_measure_equals_plain_measure():
    """distributed_measure outside a process group is measure() over the whole dataset."""
    data = _digits(torch.float64)
    a = distributed_measure(_cnn(torch.float64), data, 100, progress=False)
    b = measure(_cnn(torch.float64), DataLoader(data, batch_size=100), progress=False)
    assert _metric_rel(a.metrics, b.metrics) == 0.0
    assert a.info["world_size"] == 1


@pytest.mark.parametrize("shuffle", [False, True])
def test_shard_sampler_is_exact_partition(shuffle):
    for n in (0, 1, 31, 32, 33, 100):
        for world in (1, 2, 3):
            parts = [list(ShardSampler(n, 8, rank=r, world_size=world, shuffle=shuffle, seed=5)) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))
            assert [len(ShardSampler(n, 8, rank=r, world_size=world)) for r in range(world)] == [len(p) for p in parts]


def test_shard_sampler_deals_whole_batches():
    """Rank r's loader yields exactly the global batches r, r+R, ... of a one-process loader."""
    data = TensorDataset(torch.arange(50))
    single = [b[0] for b in DataLoader(data, batch_size=8)]
    for r in range(3):
        mine = [b[0] for b in shard_loader(data, 8, rank=r, world_size=3)]
        assert len(mine) == len(single[r::3])
        assert all(torch.equal(a, b) for a, b in zip(mine, single[r::3]))


def test_bad_arguments(monkeypatch):
    with pytest.raises(ValueError, match="batch_size"):
        ShardSampler(10, 0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="rank"):
        ShardSampler(10, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="sampler"):
        shard_loader(TensorDataset(torch.arange(4)), 2, sampler=None)
    with pytest.raises(ValueError, match="backend"):
        init_from_env("mpi")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="RANK"):
        init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_from_env()


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_from_env()
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)


def _spawn_retrying(fn, args: tuple, outputs: list) -> None:
    """spawn on 2 gloo ranks; once more (outputs cleared) if a rank died by a signal in gloo's C++ layer.

    A rank killed by a signal (not a Python exception, which fails at once) is an environment fault
    seen under heavy machine load; the retry runs the identical, deterministic job again.
    """
    import shutil

    from torch.multiprocessing import ProcessExitedException

    try:
        spawn(fn, 2, args, backend="gloo")
    except ProcessExitedException:
        for path in outputs:
            shutil.rmtree(path, ignore_errors=True)
        spawn(fn, 2, args, backend="gloo")


# --------------------------------------------------------------- issue 13/21: explicit distributed, timeouts
def _checks_worker(rank: int, out_dir: str) -> None:
    """Unsharded loader (warning), distributed='off' / a process group, and measure on rank 0 only (timeout)."""
    import time
    import warnings

    import torch.distributed as dist

    x, y = _features(n=96)
    net = nn.Sequential(nn.Linear(6, 5)).double()
    result: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = measure(net, DataLoader(TensorDataset(x, y), batch_size=32), progress=False)  # not sharded
    result["unsharded_warning"] = any("not seem to be sharded" in str(w.message) for w in caught)
    result["unsharded_samples"] = report.info["samples"]
    shard = DataLoader(TensorDataset(x, y), batch_size=32, sampler=ShardSampler(96, 32))
    result["off_samples"] = measure(net, shard, distributed="off", progress=False).info["samples"]
    group = dist.new_group(ranks=[0, 1])
    result["group_samples"] = measure(net, shard, distributed=group, progress=False).info["samples"]
    if rank == 0:
        try:
            measure(net, shard, timeout_s=3.0, progress=False)
            result["timeout_error"] = None
        except RuntimeError as exc:
            result["timeout_error"] = str(exc)
    else:
        time.sleep(6.0)  # never calls measure: rank 0 must fail, naming this rank, instead of waiting
    torch.save(result, os.path.join(out_dir, f"checks{rank}.pt"))


def test_unsharded_warning_explicit_groups_and_missing_rank(tmp_path):
    _spawn_retrying(_checks_worker, (str(tmp_path),), outputs=[])
    ranks = [torch.load(tmp_path / f"checks{r}.pt", weights_only=True) for r in range(2)]
    for r in range(2):
        assert ranks[r]["unsharded_warning"] and ranks[r]["unsharded_samples"] == 192  # counted twice: warned
        assert ranks[r]["off_samples"] in (64, 32)  # this rank's shard only
        assert ranks[r]["group_samples"] == 96
    message = ranks[0]["timeout_error"]
    assert message and "measure must be called on every rank: rank(s) [1] did not reach it within 3 s" in message


def test_rendezvous_names_the_missing_rank(monkeypatch):
    import time

    from nclens.core.distributed import free_port, init_from_env

    port = free_port()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("NCLENS_RENDEZVOUS_TIMEOUT", "1.5")
    monkeypatch.setenv("RANK", "0")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[1\] of WORLD_SIZE=2 never joined"):
        init_from_env("gloo")
    assert time.monotonic() - started < 30
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(RuntimeError, match="rank 1 could not reach rank 0"):
        init_from_env("gloo")
    monkeypatch.setenv("NCLENS_RENDEZVOUS_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="NCLENS_RENDEZVOUS_TIMEOUT must be a number"):
        init_from_env("gloo")


def test_distributed_option_outside_a_group():
    x, y = _features(n=64)
    net = nn.Sequential(nn.Linear(6, 5)).double()
    a = measure(net, [(x, y)], distributed="off", progress=False)
    b = measure(net, [(x, y)], distributed="auto", progress=False)
    assert a.metrics == b.metrics and a.info["world_size"] == 1
    with pytest.raises(ValueError, match="distributed must be 'auto', 'off' or a process group"):
        measure(net, [(x, y)], distributed="on", progress=False)
    with pytest.raises(ValueError, match="not initialised"):
        measure(net, [(x, y)], distributed=object(), progress=False)
