"""Exact DDP training: torchrun -m nclens run (2 gloo ranks) equals one process; global-batch BatchNorm;
weighted shares; a 2-rank run interrupted then resumed equals the uninterrupted one."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from nclens.core.distributed import spawn

pytestmark = pytest.mark.distributed


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ------------------------------------------ trainer: DDP training (torchrun -m nclens run) equals one process
# 1009 = 16·63 + 1 training samples in global batches of 63: every step splits 32/31 between the two ranks and
# the last batch (1 sample) leaves rank 1 an empty share, so the test covers weighted gradients of unequal shares.
# eval_batch_size 200 gives every rank whole evaluation batches of both splits (1009 → 6, 450 → 3 batches).
TINY_CONFIG = """\
name: tiny-ddp
kind: intermediate
data: {name: digits, test_fraction: 0.25, train_subset: 1009, batch_size: 63, eval_batch_size: 200}
model: {arch: mlp, depth: 2, width: 32, batchnorm: false, bias: true, activation: relu}
optim: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0005, schedule: cosine, warmup_epochs: 0.5}
train: {epochs: 2, loss: ce, label_smoothing: 0.1, measure_every: 2, mode: input, pool: avg, seed: 0}
"""
# BatchNorm after each hidden layer, one-hot MSE; 1009 = 15·64 + 49 (the last batch splits 25/24).
BN_CONFIG = TINY_CONFIG.replace("tiny-ddp", "tiny-ddp-bn").replace("batchnorm: false", "batchnorm: true") \
    .replace("batch_size: 63", "batch_size: 64").replace("loss: ce, label_smoothing: 0.1", "loss: mse_sum")
TRAIN_RTOL = 1e-6  # float32 training without BatchNorm (measured 1.5e-7 on the weights)
BN_RTOL = 1e-4  # one-process BatchNorm: native float32 kernels; GlobalBatchNorm: float64 (measured 7e-7 to 1.4e-5)


def _config(text: str, root):
    from nclens.runs.experiment import load_run_config

    path = root / "config.yaml"
    path.write_text(text)
    return load_run_config(path).config


def _one_process(cfg, out) -> None:
    from nclens.intermediate.experiment import run_intermediate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_intermediate(cfg, out, progress=False)
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

    from nclens.intermediate.experiment import train_intermediate
    from nclens.train import Callback

    class Crash(Callback):
        def on_step_end(self, trainer, epoch, step):
            if (epoch, step) == (2, 3):
                raise KeyboardInterrupt

    torch.set_num_threads(1)
    out = Path(out_dir)
    torch.save(_bn_shares(rank, 2), out / f"bn_rank{rank}.pt")
    cfg = _config(BN_CONFIG, out / f"cfg{rank}")
    train_intermediate(cfg, out / "bn_full", progress=False)
    try:
        train_intermediate(cfg, out / "bn_cut", callbacks=[Crash()], progress=False)
    except KeyboardInterrupt:
        pass
    train_intermediate(cfg, out / "bn_cut", resume=True, progress=False)


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
    from nclens.core.env import seed_everything
    from nclens.intermediate.experiment import build_model

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


@pytest.mark.parametrize("kind", ["ce", "mse", "mse_sum"])
def test_weighted_share_gradients_equal_the_global_mean_gradient(kind):
    """(1/R) Σ_r ∇[(R/B) Σ_{i∈share r} ℓ_i] = ∇[(1/B) Σ_i ℓ_i] for unequal and empty shares (float64)."""
    from nclens.nn.losses import get_loss
    from nclens.train.distributed import share_bounds

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    for n, world in ((11, 3), (2, 3)):
        x, y = torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)
        loss = get_loss(kind)
        (ref,) = torch.autograd.grad(loss(x @ w.T, y, label_smoothing=0.1), w)
        total = torch.zeros_like(w)
        for r in range(world):
            lo, hi = share_bounds(n, r, world)
            share = loss(x[lo:hi] @ w.T, y[lo:hi], reduction="sum", label_smoothing=0.1) * (world / n)
            total += torch.autograd.grad(share, w)[0]
        assert _rel(total / world, ref) <= 1e-14
    with pytest.raises(ValueError, match="reduction"):
        loss(x @ w.T, y, reduction="all")


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
