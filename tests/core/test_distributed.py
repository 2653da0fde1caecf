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


# ------------------------------------------ trainer: DDP training (torchrun -m nclens run) equals one process
# 1009 = 16·63 + 1 training samples in global batches of 63: every step splits 32/31 between the two ranks and
# the last batch (1 sample) leaves rank 1 an empty share, so the test covers weighted gradients of unequal shares.
# eval_batch_size 200 gives every rank whole evaluation batches of both splits (1009 → 6, 450 → 3 batches).
TINY_CONFIG = """\
name: tiny-ddp
kind: train
data: {name: digits, test_fraction: 0.25, train_subset: 1009, batch_size: 63, eval_batch_size: 200}
model: {arch: mlp, depth: 2, width: 32, batchnorm: false, bias: true, activation: relu}
optim: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005, schedule: cosine, warmup_epochs: 0.5}
train: {epochs: 2, loss: ce, label_smoothing: 0.1, measure_every: 2, mode: input, pool: avg, seed: 0}
"""
# BatchNorm after each hidden layer, one-hot MSE; 1009 = 15·64 + 49 (the last batch splits 25/24).
BN_CONFIG = TINY_CONFIG.replace("tiny-ddp", "tiny-ddp-bn").replace("batchnorm: false", "batchnorm: true") \
    .replace("batch_size: 63", "batch_size: 64").replace("loss: ce, label_smoothing: 0.1", "loss: mse")
TRAIN_RTOL = 1e-6  # float32 training without BatchNorm (measured 1.5e-7 on the weights)
BN_RTOL = 1e-4  # one-process BatchNorm: native float32 kernels; GlobalBatchNorm: float64 (measured 7e-7 to 1.4e-5)


def _config(text: str, root):
    from nclens.runs.config import load_config

    path = root / "config.yaml"
    path.write_text(text)
    return load_config(path)


def _one_process(cfg, out) -> None:
    from nclens.intermediate.experiment import run_experiment

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_experiment(cfg, out)
    finally:
        torch.set_num_threads(threads)


def _bn_shares(rank: int, world: int) -> dict[str, torch.Tensor]:
    """GlobalBatchNorm on this rank's share of a float64 batch: outputs and gradients (2-d and 4-d inputs)."""
    from nclens.train.distributed import GlobalBatchNorm, share_bounds

    out: dict[str, torch.Tensor] = {}
    for tag, shape in (("1d", (9, 3)), ("2d", (7, 3, 2, 2))):
        g = torch.Generator().manual_seed(4)
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3.0 + 1.0)
        upstream = torch.randn(shape, generator=g, dtype=torch.float64)
        lo, hi = share_bounds(shape[0], rank, world)
        bn = GlobalBatchNorm(3).double()
        with torch.no_grad():
            bn.weight.copy_(torch.randn(3, generator=g, dtype=torch.float64))
            bn.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
        xs = x[lo:hi].clone().requires_grad_(True)
        y = bn(xs)
        (y * upstream[lo:hi]).sum().backward()
        got = {"y": y.detach(), "dx": xs.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
               "rm": bn.running_mean.clone(), "rv": bn.running_var.clone()}
        out.update({f"{tag}_{k}": v for k, v in got.items()})
    return out


def _train_worker(rank: int, out_dir: str) -> None:
    """Under spawn (2 gloo ranks): BatchNorm exactness, a BN run, and the same run interrupted then resumed."""
    from pathlib import Path

    from nclens.train import Trainer

    torch.set_num_threads(1)
    out = Path(out_dir)
    torch.save(_bn_shares(rank, 2), out / f"bn_rank{rank}.pt")
    cfg = _config(BN_CONFIG, out / f"cfg{rank}")
    Trainer(cfg, out / "bn_full").fit()

    def crash(epoch: int, step: int) -> None:
        if epoch == 2 and step == 3:
            raise KeyboardInterrupt

    try:
        Trainer(cfg, out / "bn_cut", step_hook=crash).fit()
    except KeyboardInterrupt:
        pass
    Trainer(cfg, out / "bn_cut").fit(resume=True)


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory) -> dict:
    """One-process runs in this process; the same configs on 2 gloo ranks (torchrun CLI, and spawn)."""
    import subprocess
    import sys

    from nclens.core.distributed import free_port

    root = tmp_path_factory.mktemp("ddp")
    for name in ("cfg0", "cfg1"):
        (root / name).mkdir()
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "nclens", "run", str(root / "tiny.yaml"), "--no-report", "--no-progress", "--threads", "1",
           "--out", str(root / "two")]
    torchrun = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _one_process(_config(TINY_CONFIG, root / "cfg0"), root / "one")
        _one_process(_config(BN_CONFIG, root / "cfg1"), root / "bn_one")
    finally:
        log, _ = torchrun.communicate(timeout=600)  # one 2-rank job at a time on a 2-core machine
    assert torchrun.returncode == 0, log[-3000:]
    _spawn_retrying(_train_worker, (str(root),), outputs=[root / "bn_full", root / "bn_cut"])
    return {"root": root, "torchrun_log": log}


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


def _layers(run) -> dict:
    from nclens.core.io import read_jsonl

    return {(r["epoch"], r["split"], r["layer"]): r for r in read_jsonl(run / "layers.jsonl")}


def _history(run) -> list[dict]:
    from nclens.core.io import read_jsonl

    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run / "history.jsonl")]


def _weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def _records_rel(a: dict, b: dict, epoch: int) -> float:
    worst = 0.0
    for key, ref in b.items():
        if key[0] != epoch:
            continue
        for name, value in ref.items():
            if isinstance(value, float) and math.isfinite(value):
                worst = max(worst, abs(a[key][name] - value) / max(abs(value), 1e-300))
    return worst


def _history_rel(a: list[dict], b: list[dict]) -> float:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    return max(abs(x[k] - y[k]) / max(abs(y[k]), 1e-300) for x, y in zip(a, b) for k in y)


def _weights_rel(a: dict, b: dict) -> float:
    """max over tensors of max|a − b| / max|b| (float64)."""
    assert a.keys() == b.keys()
    return max(_rel(a[k].double(), b[k].double()) for k in b)


def test_torchrun_run_measures_initialisation_like_one_process(trainer_runs):
    """Epoch 0 (before any step): the 2-rank measurement equals the 1-process one (float32 features)."""
    root = trainer_runs["root"]
    one, two = _layers(root / "one"), _layers(root / "two")
    assert one.keys() == two.keys()
    assert _records_rel(two, one, 0) <= 1e-6


def test_torchrun_run_equals_one_process(trainer_runs):
    """Same global batches, weighted shares, exact sharded measurement: metrics, losses and weights agree."""
    root = trainer_runs["root"]
    one, two = _layers(root / "one"), _layers(root / "two")
    assert one.keys() == two.keys() and {k[0] for k in one} == {0, 2}
    assert _records_rel(two, one, 2) <= TRAIN_RTOL
    h1, h2 = _history(root / "one"), _history(root / "two")
    assert [r["train_accuracy"] for r in h2] == [r["train_accuracy"] for r in h1]  # exact counts
    assert _history_rel(h2, h1) <= TRAIN_RTOL
    w1, w2 = _weights(root / "one"), _weights(root / "two")
    assert _weights_rel(w2, w1) <= TRAIN_RTOL
    # training moved the weights far beyond the tolerance (the agreement is not that of two initialisations)
    from nclens.train import build_model, seed_everything

    seed_everything(0)
    init = build_model(_config(TINY_CONFIG, root / "cfg0").model, (1, 8, 8), 10).state_dict()
    assert _weights_rel(w1, init) > 1e3 * TRAIN_RTOL and h1[-1]["train_accuracy"] > 0.3


def test_global_batchnorm_equals_batchnorm_on_the_whole_batch(trainer_runs):
    """Two uneven float64 shares through GlobalBatchNorm = nn.BatchNorm on the concatenated batch, to 1e-12."""
    ranks = [torch.load(trainer_runs["root"] / f"bn_rank{r}.pt", weights_only=True) for r in range(2)]
    for tag, shape, cls in (("1d", (9, 3), nn.BatchNorm1d), ("2d", (7, 3, 2, 2), nn.BatchNorm2d)):
        g = torch.Generator().manual_seed(4)
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3.0 + 1.0).requires_grad_(True)
        upstream = torch.randn(shape, generator=g, dtype=torch.float64)
        bn = cls(3).double()
        with torch.no_grad():
            bn.weight.copy_(torch.randn(3, generator=g, dtype=torch.float64))
            bn.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
        y = bn(x)
        (y * upstream).sum().backward()
        assert [r[f"{tag}_y"].shape[0] for r in ranks] == [(shape[0] + 1) // 2, shape[0] // 2]
        assert _rel(torch.cat([r[f"{tag}_y"] for r in ranks]), y.detach()) <= 1e-12
        assert _rel(torch.cat([r[f"{tag}_dx"] for r in ranks]), x.grad) <= 1e-12
        # each rank holds its share's parameter gradient; DDP sums them
        assert _rel(ranks[0][f"{tag}_dw"] + ranks[1][f"{tag}_dw"], bn.weight.grad) <= 1e-12
        assert _rel(ranks[0][f"{tag}_db"] + ranks[1][f"{tag}_db"], bn.bias.grad) <= 1e-12
        for r in ranks:
            assert _rel(r[f"{tag}_rm"], bn.running_mean) <= 1e-12
            assert _rel(r[f"{tag}_rv"], bn.running_var) <= 1e-12


def test_ddp_batchnorm_run_close_to_one_process(trainer_runs):
    """BatchNorm model: synchronised statistics make 2 ranks the 1-process run up to float32 BatchNorm round-off."""
    root = trainer_runs["root"]
    one, two = _layers(root / "bn_one"), _layers(root / "bn_full")
    assert one.keys() == two.keys()
    assert _records_rel(two, one, 2) <= BN_RTOL
    assert _history_rel(_history(root / "bn_full"), _history(root / "bn_one")) <= BN_RTOL
    w1, w2 = _weights(root / "bn_one"), _weights(root / "bn_full")
    assert "bn1.running_var" in w2 and int(w2["bn1.num_batches_tracked"]) == int(w1["bn1.num_batches_tracked"])
    assert _weights_rel(w2, w1) <= BN_RTOL


def test_ddp_interrupted_then_resumed_equals_uninterrupted(trainer_runs):
    """Rank 0 checkpoints, every rank resumes: the resumed 2-rank run equals the uninterrupted one bit for bit."""
    root = trainer_runs["root"]
    assert _layers(root / "bn_cut") == _layers(root / "bn_full")
    assert _history(root / "bn_cut") == _history(root / "bn_full")
    a, b = _weights(root / "bn_cut"), _weights(root / "bn_full")
    assert all(torch.equal(a[k], b[k]) for k in b)


# --------------------------------------------------------------- exact-DDP building blocks, in process
def test_share_bounds_partition():
    from nclens.train.distributed import share_bounds

    for n in (0, 1, 5, 63, 64):
        for world in (1, 2, 3, 5):
            bounds = [share_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="rank"):
        share_bounds(4, 2, 2)
    with pytest.raises(ValueError, match="n must be"):
        share_bounds(-1, 0, 2)


def test_batch_shares_concatenate_to_the_global_batches():
    """Ranks' shares of each step, concatenated, are the one-process batch — augmentation included."""
    from nclens.train import BatchShares, TensorBatches

    x, y = torch.randn(23, 2, 3, 3, generator=torch.Generator().manual_seed(0)), torch.arange(23)
    order = torch.randperm(23, generator=torch.Generator().manual_seed(1))

    def noisy(xb: torch.Tensor) -> torch.Tensor:  # consumes the global RNG per sample, like augment_batch
        return xb + torch.rand(xb.shape[0])[:, None, None, None]

    torch.manual_seed(7)
    single = list(TensorBatches(x, y, 7, order, noisy))
    per_rank = []
    for r in range(3):
        torch.manual_seed(7)
        per_rank.append(list(BatchShares(x, y, 7, order, rank=r, world_size=3, transform=noisy)))
    assert all(len(p) == len(single) == 4 for p in per_rank)
    for step, (xb, yb) in enumerate(single):
        assert all(p[step][2] == yb.shape[0] for p in per_rank)
        assert torch.equal(torch.cat([p[step][0] for p in per_rank]), xb)
        assert torch.equal(torch.cat([p[step][1] for p in per_rank]), yb)
    assert [p[-1][1].numel() for p in per_rank] == [1, 1, 0]  # last batch of 2: rank 2's share is empty


@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_weighted_share_gradients_equal_the_global_mean_gradient(kind):
    """(1/R) Σ_r ∇[(R/B) Σ_{i∈share r} ℓ_i] = ∇[(1/B) Σ_i ℓ_i] for unequal and empty shares (float64)."""
    from nclens.train import classification_loss
    from nclens.train.distributed import share_bounds

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    for n, world in ((11, 3), (2, 3)):
        x, y = torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)
        (ref,) = torch.autograd.grad(classification_loss(x @ w.T, y, kind, 0.1), w)
        total = torch.zeros_like(w)
        for r in range(world):
            lo, hi = share_bounds(n, r, world)
            share = classification_loss(x[lo:hi] @ w.T, y[lo:hi], kind, 0.1, reduction="sum") * (world / n)
            total += torch.autograd.grad(share, w)[0]
        assert _rel(total / world, ref) <= 1e-14
    with pytest.raises(ValueError, match="reduction"):
        classification_loss(x @ w.T, y, kind, reduction="none")


def test_eval_batches_deal_whole_batches_and_shrink_when_needed():
    from nclens.train import TensorBatches, eval_batches

    x, y = torch.arange(50.0)[:, None], torch.arange(50)
    single = [yb for _, yb in TensorBatches(x, y, 8, torch.arange(50))]
    for r in range(3):
        mine = [yb for _, yb in eval_batches(x, y, 8, r, 3)]
        assert all(torch.equal(a, b) for a, b in zip(mine, single[r::3], strict=True))
    with pytest.warns(UserWarning, match="eval_batch_size=64"):
        shrunk = [[yb for _, yb in eval_batches(x, y, 64, r, 3)] for r in range(3)]
    assert all(len(s) >= 1 for s in shrunk)
    assert sorted(torch.cat([b for s in shrunk for b in s]).tolist()) == list(range(50))
    with pytest.raises(ValueError, match="2 samples"):
        eval_batches(x[:2], y[:2], 8, 0, 3)


def test_global_batchnorm_outside_a_process_group_is_batchnorm():
    from nclens.models import CNN, MLP
    from nclens.train.distributed import GlobalBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm

    torch.manual_seed(0)
    for model, x in ((MLP(8, 3, depth=2, width=6), torch.randn(10, 8)),
                     (CNN(3, (1, 6, 6), depth=2, width=4), torch.randn(10, 1, 6, 6))):
        ref = {k: v.clone() for k, v in model.state_dict().items()}
        params = list(model.parameters())
        plain = [type(m) for m in model.modules()]
        torch.manual_seed(1)
        expected = model(x)
        after_plain = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(ref)
        converted = convert_sync_batchnorm(model)
        assert any(isinstance(m, GlobalBatchNorm) for m in converted.modules())
        assert list(converted.parameters()) == params and converted.state_dict().keys() == ref.keys()
        torch.manual_seed(1)
        assert torch.equal(converted(x), expected)
        assert all(torch.equal(converted.state_dict()[k], after_plain[k]) for k in ref)
        back = revert_sync_batchnorm(converted)
        assert [type(m) for m in back.modules()] == plain and list(back.parameters()) == params


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
