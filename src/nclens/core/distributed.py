"""torch.distributed helpers: start from the torchrun environment, shard data, measure across ranks.

One measurement over R processes equals one measurement in one process (ARCHITECTURE.md, "The engine's
numerics"): every rank streams its shard into :class:`~nclens.core.stats.ClassStats`, then
:meth:`ClassStats.all_reduce <nclens.core.stats.ClassStats.all_reduce>` sums counts and sums, and each
rank's scatter re-centred on the global means (Chan, Golub & LeVeque 1979) — two all_reduce calls
of O(K·D + D²) numbers per layer, never an all_gather of the ranks' states.

Sharding for *measurement* must be an exact partition of the data: PyTorch's
``DistributedSampler`` pads the last ranks with repeated samples (so every rank has the same
number of batches, which DDP training needs) and the repeated samples would be counted twice.
:class:`ShardSampler` deals out *whole batches* round-robin instead (global batch j goes to rank
j mod R) without padding, so the R ranks see exactly the batches one process would see. Class sums
are exact float64 and the merges are float64, so float64 features agree with one process to
~1e-13 relative; for float32 features each rank centres on its own first-batch means before the
float32 GEMM, so the agreement is float32 round-off of the within-class scatter (~1e-7).

Backends: ``nccl`` when CUDA is available (each rank on ``cuda:LOCAL_RANK``), else ``gloo`` on CPU.

Example (a file ``m.py`` run with ``torchrun --nproc_per_node=2 m.py``; also runs as one process)::

    import torch, torch.nn as nn
    from torch.utils.data import TensorDataset
    from nclens.core.distributed import init_from_env, distributed_measure, is_main_process, cleanup

    ctx = init_from_env()
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(1000, 8, generator=g), torch.arange(1000) % 4)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)).to(ctx.device)
    report = distributed_measure(net, data, batch_size=100, progress=False)
    if is_main_process():
        print(report)
    cleanup()

A local launcher without torchrun (also what the tests use)::

    >>> from nclens.core.distributed import ShardSampler
    >>> [list(ShardSampler(10, batch_size=3, rank=r, world_size=2)) for r in range(2)]
    [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9]]
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import re
import socket
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from nclens.core.stats import ClassStats

__all__ = [
    "DistContext",
    "init_from_env",
    "context",
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "rank0_only",
    "main_process_first",
    "barrier",
    "cleanup",
    "ShardSampler",
    "shard_loader",
    "all_reduce_stats",
    "distributed_measure",
    "free_port",
    "spawn",
    "GroupInfo",
    "resolve_group",
    "rendezvous",
    "all_reduce_tensor",
    "sync_measurement",
    "RENDEZVOUS_TIMEOUT_S",
]

#: How long ranks wait for each other to join a process group (env ``NCLENS_RENDEZVOUS_TIMEOUT`` overrides).
RENDEZVOUS_TIMEOUT_S = 300.0

_T = TypeVar("_T")
_BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) job.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes R (1 when not distributed).
        local_rank: rank on this machine (selects the CUDA device).
        backend: ``"gloo"``, ``"nccl"`` or ``None`` when not distributed.
        device: the device this rank should compute on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """Whether a process group with more than one rank is in use."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0 (the one that writes files and prints)."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from exc


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank (0 outside a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


_current_rank, _current_world_size = rank, world_size


def is_main_process() -> bool:
    """Rank 0, or the only process."""
    return rank() == 0


def context() -> DistContext:
    """The current :class:`DistContext` (a single-process one outside a process group)."""
    import torch.distributed as dist

    local = _env_int("LOCAL_RANK", 0) or 0
    if not is_distributed():
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        return DistContext(device=device)
    backend = str(dist.get_backend())
    device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), local, backend, device)


def init_from_env(
    backend: str | None = None, *, timeout_s: float = 1800.0, rendezvous_timeout_s: float | None = None
) -> DistContext:
    """Join the process group described by torchrun's environment, or run as one process.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (set by
    ``torchrun`` / ``python -m torch.distributed.run``). Without ``WORLD_SIZE`` (or with
    ``WORLD_SIZE=1``) nothing is initialised and a single-process context is returned, so the same
    script runs with and without torchrun. Calling it again inside an initialised group returns the
    current context.

    The rendezvous is explicit: rank 0 opens a TCP store at ``MASTER_ADDR:MASTER_PORT``, every rank
    registers in it, and every rank waits at most ``rendezvous_timeout_s`` for all ``WORLD_SIZE``
    ranks; a peer that never starts makes the others fail with an error naming the missing ranks
    (rather than rank 0 waiting silently for the collective timeout).

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default ``nccl`` when CUDA is available, else ``gloo``.
        timeout_s: collective timeout of the process group.
        rendezvous_timeout_s: how long to wait for every rank to join (default
            :data:`RENDEZVOUS_TIMEOUT_S`, or the env variable ``NCLENS_RENDEZVOUS_TIMEOUT``).

    Returns:
        The :class:`DistContext`; on CUDA the current device is set to ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: unknown backend, ``nccl`` without CUDA, inconsistent rank variables, a bad timeout.
        RuntimeError: the rendezvous timed out (the message names the ranks that never joined).
    """
    import torch.distributed as dist

    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS} or None, got {backend!r}")
    if is_distributed():
        return context()
    world = _env_int("WORLD_SIZE", 1) or 1
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {world}")
    if world == 1:
        return context()
    rank_ = _env_int("RANK")
    if rank_ is None or not 0 <= rank_ < world:
        raise ValueError(f"RANK must be set to an integer in [0, {world - 1}] when WORLD_SIZE={world}, got {rank_}")
    local = _env_int("LOCAL_RANK", rank_) or 0
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"{name} must be set for a distributed run (torchrun sets it)")
    port = _env_int("MASTER_PORT")
    if rendezvous_timeout_s is None:
        raw = os.environ.get("NCLENS_RENDEZVOUS_TIMEOUT", "")
        try:
            rendezvous_timeout_s = float(raw) if raw else RENDEZVOUS_TIMEOUT_S
        except ValueError as exc:
            raise ValueError(f"NCLENS_RENDEZVOUS_TIMEOUT must be a number of seconds, got {raw!r}") from exc
    for label, value in (("timeout_s", timeout_s), ("rendezvous_timeout_s", rendezvous_timeout_s)):
        if not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of PyTorch")
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if chosen == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA; use 'gloo' on CPU")
        torch.cuda.set_device(local)
    store = _rendezvous_store(os.environ["MASTER_ADDR"], int(port), rank_, world, float(rendezvous_timeout_s))
    dist.init_process_group(
        backend=chosen,
        store=store,
        rank=rank_,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return context()


def _rendezvous_store(addr: str, port: int, rank_: int, world: int, timeout_s: float):
    """A TCP store every rank has registered in, or an error naming the ranks that never joined."""
    import torch.distributed as dist

    where = f"MASTER_ADDR={addr} MASTER_PORT={port}"
    try:
        store = dist.TCPStore(addr, port, world, is_master=rank_ == 0,
                              timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
    except Exception as exc:  # noqa: BLE001 - DistStoreError / RuntimeError / OSError, re-raised with context
        if rank_ == 0:
            raise RuntimeError(f"rank 0 could not open the rendezvous at {where}: {exc}") from exc
        raise RuntimeError(
            f"rank {rank_} could not reach rank 0 at {where} within {timeout_s:g} s: rank 0 never started or "
            f"listens elsewhere ({exc})"
        ) from exc
    store.set(f"nclens/joined/{rank_}", "1")
    deadline = time.monotonic() + timeout_s
    keys = [f"nclens/joined/{r}" for r in range(world)]
    while True:
        missing = [r for r, key in enumerate(keys) if not store.check([key])]
        if not missing:
            return store
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"rendezvous timed out after {timeout_s:g} s: rank(s) {missing} of WORLD_SIZE={world} never joined "
                f"{where} (this is rank {rank_}); start every rank (torchrun --nproc_per_node={world} ...) or set "
                f"WORLD_SIZE to the number of processes started"
            )
        time.sleep(0.05)


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    import torch.distributed as dist

    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group if one is initialised."""
    import torch.distributed as dist

    if is_distributed():
        dist.destroy_process_group()


def rank0_only(fn: Callable[..., _T]) -> Callable[..., _T | None]:
    """Decorator: run ``fn`` on rank 0 only (other ranks get ``None``); e.g. writing files, printing."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T | None:
        return fn(*args, **kwargs) if is_main_process() else None

    return wrapper


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. preparing a cache), the others after it has finished."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


# ------------------------------------------------------------------ sharding
class ShardSampler(Sampler[int]):
    """Exact partition of ``range(n)`` into whole batches dealt round-robin to ranks, without padding.

    Global batch j (indices ``order[j·B : (j+1)·B]``) goes to rank ``j mod R``; a DataLoader with the
    same ``batch_size`` then yields, on each rank, exactly the batches one process would see.

    Args:
        num_samples: n, the dataset length.
        batch_size: B, the loader's batch size.
        rank: this rank (default: from the process group).
        world_size: R (default: from the process group).
        shuffle: permute the samples first (the same seeded permutation on every rank).
        seed: permutation seed; :meth:`set_epoch` varies it per epoch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.world_size = _current_world_size() if world_size is None else int(world_size)
        self.rank = _current_rank() if rank is None else int(rank)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must lie in [0, {self.world_size - 1}], got rank={self.rank}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use a different (but rank-consistent) permutation for each epoch."""
        self.epoch = int(epoch)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[int]:
        order = self._order()
        for j in range(self.rank, -(-self.num_samples // self.batch_size), self.world_size):
            yield from order[j * self.batch_size : (j + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        n_batches = -(-self.num_samples // self.batch_size)
        mine = range(self.rank, n_batches, self.world_size)
        count = len(mine) * self.batch_size
        if len(mine) and mine[-1] == n_batches - 1:  # the last, possibly partial, batch is ours
            count -= n_batches * self.batch_size - self.num_samples
        return count


def shard_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    **loader_kwargs: Any,
) -> DataLoader:
    """A DataLoader over this rank's exact shard (:class:`ShardSampler`) — for measurement.

    Every sample is seen by exactly one rank; outside a process group it is the whole dataset.
    ``loader_kwargs`` go to :class:`~torch.utils.data.DataLoader` (``num_workers``, ``pin_memory`` …).
    """
    for bad in ("sampler", "batch_sampler", "drop_last"):
        if bad in loader_kwargs:
            raise ValueError(f"shard_loader sets {bad!r} itself (an exact partition); do not pass it")
    sampler = ShardSampler(len(dataset), batch_size, rank=rank, world_size=world_size, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False, **loader_kwargs)


def all_reduce_stats(stats: Mapping[str, ClassStats]) -> Mapping[str, ClassStats]:
    """All-reduce every layer's :class:`ClassStats` in place (sums only; see ClassStats.all_reduce).

    Every rank must call it with the same layer names in the same order; empty statistics on some
    rank are an error (each rank must have seen at least one sample, which :func:`distributed_measure`
    checks up front).
    """
    for name in stats:
        if not stats[name].initialized:
            raise ValueError(f"statistics of layer {name!r} are empty on rank {rank()}: every rank needs data")
        stats[name].all_reduce()
    return stats


def distributed_measure(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    layers: Sequence[str] | None = None,
    *,
    num_workers: int = 0,
    shuffle: bool = False,
    seed: int = 0,
    **measure_kwargs: Any,
):  # -> CollapseReport
    """:func:`~nclens.core.measure.measure` over this rank's exact shard; every rank gets the global metrics.

    Inside a process group the statistics are all-reduced by ``measure`` before the metrics, so the
    result equals a one-process ``measure`` over the whole ``dataset`` with the same ``batch_size``.
    Outside a process group it is ``measure`` on the whole dataset. ``model`` may be DDP-wrapped
    (its ``.module`` is measured). Progress bars are shown on rank 0 only.

    Raises:
        ValueError: fewer batches than ranks (a rank would have no data).
    """
    from nclens.core.measure import measure

    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    n_batches = -(-len(dataset) // batch_size) if batch_size > 0 else 0
    if n_batches < world_size():
        raise ValueError(
            f"{len(dataset)} samples in batches of {batch_size} give {n_batches} batches for "
            f"{world_size()} ranks; every rank needs at least one batch (use a smaller batch_size)"
        )
    loader = shard_loader(dataset, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers)
    measure_kwargs.setdefault("progress", True)
    measure_kwargs["progress"] = bool(measure_kwargs["progress"]) and is_main_process()
    report = measure(model, loader, layers, **measure_kwargs)
    report.info["world_size"] = world_size()
    return report


# ------------------------------------------------------------ measurement across ranks
@dataclass(frozen=True)
class GroupInfo:
    """The process group a measurement reduces over (``group=None``: the default group)."""

    group: Any
    rank: int
    world_size: int
    backend: str

    @property
    def device(self) -> torch.device:
        """Where this group's collectives take tensors (CUDA for NCCL)."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def resolve_group(distributed: Any = "auto") -> GroupInfo | None:
    """The group to all-reduce over: ``"auto"`` (the default group when one with > 1 rank is
    initialised), ``"off"`` (none), or a ``torch.distributed`` process group.

    Raises:
        ValueError: a process group given while torch.distributed is not initialised, an unknown value.
    """
    import torch.distributed as dist

    if distributed == "off" or distributed is None or distributed is False:
        return None
    if distributed == "auto" or distributed is True:
        if not is_distributed() or dist.get_world_size() == 1:
            if distributed is True:
                raise ValueError("distributed=True but no torch.distributed process group is initialised")
            return None
        return GroupInfo(None, dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))
    if isinstance(distributed, str):
        raise ValueError(f"distributed must be 'auto', 'off' or a process group, got {distributed!r}")
    if not is_distributed():
        raise ValueError("a process group was given but torch.distributed is not initialised")
    try:
        return GroupInfo(distributed, dist.get_rank(distributed), dist.get_world_size(distributed),
                         str(dist.get_backend(distributed)))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"distributed must be 'auto', 'off' or a process group, got {distributed!r}") from exc


def _missing_ranks(message: str) -> list[int]:
    found = re.findall(r"[Rr]anks?\s+([\d,\s]+?)\s+failed", message)
    ranks: list[int] = []
    for chunk in found:
        ranks += [int(r) for r in re.findall(r"\d+", chunk)]
    return sorted(set(ranks))


def rendezvous(info: GroupInfo, timeout_s: float, what: str = "measure") -> None:
    """Wait until every rank of ``info`` reached this point, at most ``timeout_s`` seconds.

    On gloo a monitored barrier names the ranks that did not arrive; on other backends a timed
    all_reduce says that not every rank arrived. Either way the error says that ``what`` must be
    called on every rank.
    """
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=float(timeout_s))
    try:
        if info.backend == "gloo":
            dist.monitored_barrier(group=info.group, timeout=timeout, wait_all_ranks=True)
        else:
            flag = torch.ones(1, device=info.device)
            dist.all_reduce(flag, group=info.group, async_op=True).wait(timeout=timeout)
    except RuntimeError as exc:
        missing = _missing_ranks(str(exc))
        who = (f"rank(s) {missing} did not reach it" if missing and info.rank == 0 else
               "rank 0 did not reach it" if info.rank != 0 else "not every rank reached it")
        raise RuntimeError(
            f"{what} must be called on every rank: {who} within {float(timeout_s):g} s (this is rank {info.rank} of "
            f"{info.world_size}); call it from every process, e.g. not under `if rank == 0:`"
        ) from exc


def all_reduce_tensor(tensor: torch.Tensor, info: GroupInfo, timeout_s: float, what: str = "measure") -> torch.Tensor:
    """Sum ``tensor`` over the ranks of ``info`` in place, failing after ``timeout_s`` with a clear message."""
    import torch.distributed as dist

    moved = tensor.to(info.device)
    try:
        work = dist.all_reduce(moved, group=info.group, async_op=True)
        work.wait(timeout=datetime.timedelta(seconds=float(timeout_s)))
    except RuntimeError as exc:
        raise RuntimeError(
            f"{what} must be called on every rank: the all-reduce did not complete within {float(timeout_s):g} s "
            f"(this is rank {info.rank} of {info.world_size})"
        ) from exc
    if moved is not tensor:
        tensor.copy_(moved)
    return tensor


def _all_gather_rows(row: torch.Tensor, info: GroupInfo, timeout_s: float, what: str) -> torch.Tensor:
    import torch.distributed as dist

    row = row.to(info.device)
    out = [torch.empty_like(row) for _ in range(info.world_size)]
    try:
        dist.all_gather(out, row, group=info.group, async_op=True).wait(timeout=datetime.timedelta(seconds=timeout_s))
    except RuntimeError as exc:
        raise RuntimeError(f"{what} must be called on every rank: the gather did not complete within {timeout_s:g} s") \
            from exc
    return torch.stack(out).cpu()


def sync_measurement(
    stats: Mapping[str, ClassStats],
    samples: dict[str, int],
    fingerprint: Sequence[float] | None,
    names: Sequence[str],
    info: GroupInfo,
    timeout_s: float,
    what: str = "measure",
) -> None:
    """All-reduce a measurement's per-layer statistics across the ranks of ``info``, with checks.

    1. :func:`rendezvous` (every rank must arrive within ``timeout_s``);
    2. one all_gather of (samples per layer, the first batch's fingerprint, a hash of the layer
       names): ranks measuring different layers, or a rank without samples for a layer, are an error
       on every rank (before any rank starts a reduction the others would not join); identical
       first batches on every rank give a warning that the loader is not sharded;
    3. :meth:`ClassStats.all_reduce` of every layer; ``samples`` is updated to the global counts.
    """
    rendezvous(info, timeout_s, what)
    layer_hash = float(zlib.crc32("\x00".join(names).encode()))
    fp = list(fingerprint) if fingerprint is not None else [float("nan")] * 3
    row = torch.tensor([float(samples[n]) for n in names] + fp + [layer_hash], dtype=torch.float64)
    table = _all_gather_rows(row, info, timeout_s, what)  # (R, L + 4)
    if bool((table[:, -1] != table[0, -1]).any()):
        raise ValueError(f"{what}: the ranks measure different layers (this rank: {list(names)}); every rank must "
                         f"pass the same layers")
    counts = table[:, : len(names)]
    empty = sorted({int(r) for r in (counts == 0).nonzero()[:, 0].tolist()})
    if empty:
        raise ValueError(
            f"{what}: rank(s) {empty} saw no samples for some layers; every rank needs data (shard the loader so that "
            f"each of the {info.world_size} ranks gets at least one batch, e.g. nclens.core.distributed.shard_loader)"
        )
    prints = table[:, len(names): len(names) + 3]
    if info.world_size > 1 and bool(torch.isfinite(prints).all()) and bool((prints == prints[0]).all()):
        warnings.warn(
            f"{what}: every one of the {info.world_size} ranks saw the same first batch: the loader does not seem to "
            f"be sharded across ranks, so every sample is counted {info.world_size} times. Use "
            f"nclens.core.distributed.shard_loader(dataset, batch_size) (an exact partition) or a DistributedSampler",
            stacklevel=3,
        )
    for name in names:
        stats[name].all_reduce(info.group)
        samples[name] = int(stats[name].total)


# ------------------------------------------------------------ local launcher
def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (for MASTER_PORT of a local job)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _spawn_entry(local: int, fn: Callable[..., Any], world: int, port: int, backend: str, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local),
        LOCAL_RANK=str(local),
        WORLD_SIZE=str(world),
    )
    init_from_env(backend)
    try:
        fn(local, *args)
    finally:
        cleanup()


def spawn(fn: Callable[..., Any], world_size: int, args: tuple = (), *, backend: str = "gloo") -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` local processes joined in one process group.

    The environment is set as torchrun sets it and each process calls :func:`init_from_env`, so the
    code path is torchrun's. ``fn`` must be importable (defined at module level).
    """
    import torch.multiprocessing as mp

    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    mp.spawn(_spawn_entry, args=(fn, world_size, free_port(), backend, tuple(args)), nprocs=world_size, join=True)
