"""ClassStats one pass vs the GEMM floor, a two-pass implementation and store-all; peak memory vs N.

Run (2 cores here; ratios are measured side by side, methods interleaved, median of repeats)::

    python benchmarks/bench_stats.py                 # N=50,000, D=512, K=100 float32, batch 1024
    python benchmarks/bench_stats.py --n 20000 --repeats 3 --out runs/bench_stats

Methods, all over the same list of float32 batches held in memory:

* ``gemm_floor``: one XᵀX per batch (float32 GEMM) added to a float64 D×D accumulator — the least
  any one-pass second-moment method can do;
* ``classstats``: :meth:`nclens.core.stats.ClassStats.update` per batch (class-centred GEMM, exact float64
  class sums); ``cs_fast``: the same with ``exact_sums=False`` (within-batch float32 sums);
* ``two_pass``: pass 1 class sums (float64), pass 2 features centred on the global class means,
  float32 GEMM, float64 accumulation (needs the data twice: a second forward pass in real use);
* ``store_all``: concatenate every batch, then means and one centred GEMM (memory O(N·D)).

Peak memory is the rise of the process's peak resident set (VmHWM, reset through
``/proc/self/clear_refs``) while streaming N samples generated batch by batch, so it measures what
the method keeps, not the benchmark's own data. Targets (issue #2): classstats within 1.2× of the
GEMM floor; memory flat in N.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from nclens.core.stats import ClassStats

Batches = list[tuple[Tensor, Tensor]]


# ----------------------------------------------------------------------------- shared helpers
def set_threads(threads: int) -> None:
    """Use the same number of intra-op threads for every method (and inter-op 1)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc), so earlier work does not hide a later peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is then an upper bound on reuse
        pass


def peak_rss_gib() -> float:
    """The process's peak resident set since start (or the last reset), GiB."""
    return _status_kib("VmHWM") / 2**20


def peak_rss_rise(fn: Callable[[], object]) -> tuple[float, object]:
    """(MiB by which the peak resident set rises above the current one while ``fn`` runs, fn's result).

    Resets the kernel's high-water mark with ``echo 5 > /proc/self/clear_refs`` (Linux ≥ 4.0); on a
    system without it, raises RuntimeError rather than report a wrong number.
    """
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError as exc:
        raise RuntimeError("peak-memory measurement needs a writable /proc/self/clear_refs (Linux)") from exc
    base = _status_kib("VmRSS")
    result = fn()
    return (_status_kib("VmHWM") - base) / 1024.0, result


def synthetic_batches(
    n: int, d: int, k: int, batch: int, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Iterator[tuple[Tensor, Tensor]]:
    """Seeded Gaussian-mixture batches (class means N(0, 0.25 I), unit noise), generated lazily."""
    g = torch.Generator().manual_seed(seed)
    centres = 0.5 * torch.randn(k, d, generator=g)
    for start in range(0, n, batch):
        b = min(batch, n - start)
        y = torch.randint(0, k, (b,), generator=g)
        yield (centres[y] + torch.randn(b, d, generator=g)).to(dtype), y


def time_interleaved(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per method; methods run round-robin so machine load hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ----------------------------------------------------------------------------------- methods
def gemm_floor(batches: Batches, d: int) -> Tensor:
    acc = torch.zeros(d, d, dtype=torch.float64)
    for x, _ in batches:
        acc += (x.T @ x).to(torch.float64)
    return acc


def one_pass(batches: Batches, k: int, exact_sums: bool = True) -> ClassStats:
    stats = ClassStats(num_classes=k, exact_sums=exact_sums)
    for x, y in batches:
        stats.update(x, y)
    return stats


def two_pass(batches: Batches, k: int, d: int) -> tuple[Tensor, Tensor, Tensor]:
    counts = torch.zeros(k, dtype=torch.float64)
    sums = torch.zeros(k, d, dtype=torch.float64)
    for x, y in batches:  # pass 1: class means
        counts.index_add_(0, y, torch.ones(y.shape[0], dtype=torch.float64))
        sums.index_add_(0, y, x.to(torch.float64))
    means = sums / counts.clamp_min(1)[:, None]
    scatter = torch.zeros(d, d, dtype=torch.float64)
    for x, y in batches:  # pass 2: scatter around the global class means
        centred = (x.to(torch.float64) - means[y]).to(x.dtype)  # (B, D)
        scatter += (centred.T @ centred).to(torch.float64)
    return counts, means, scatter


def store_all(batches: Batches, k: int, d: int) -> tuple[Tensor, Tensor, Tensor]:
    x = torch.cat([b[0] for b in batches])  # (N, D): every feature kept
    y = torch.cat([b[1] for b in batches])
    x64 = x.to(torch.float64)
    counts = torch.zeros(k, dtype=torch.float64).index_add_(0, y, torch.ones(y.shape[0], dtype=torch.float64))
    means = torch.zeros(k, d, dtype=torch.float64).index_add_(0, y, x64) / counts.clamp_min(1)[:, None]
    centred = (x64 - means[y]).to(x.dtype)
    return counts, means, (centred.T @ centred).to(torch.float64)


def streamed_peak(method: str, n: int, d: int, k: int, batch: int) -> float:
    """Peak-RSS rise (MiB) of ``method`` over n samples generated batch by batch."""

    def run() -> object:
        if method == "classstats":
            stats = ClassStats(num_classes=k)
            for x, y in synthetic_batches(n, d, k, batch):
                stats.update(x, y)
            return stats.counts.sum()
        if method == "store_all":
            return store_all(list(synthetic_batches(n, d, k, batch)), k, d)[0].sum()
        raise ValueError(f"unknown method {method!r}")

    return peak_rss_rise(run)[0]


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-ns", default="12500,25000,50000,100000", help="N values for peak memory")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    n, d, k = args.n, args.d, args.k
    batches = list(synthetic_batches(n, d, k, args.batch))
    print(f"N={n} D={d} K={k} batch={args.batch} float32, threads={torch.get_num_threads()}, "
          f"torch {torch.__version__}, median of {args.repeats}")

    # correctness first: every method gives the same scatter
    ref = store_all(batches, k, d)[2]
    checks = (
        ("classstats", one_pass(batches, k).scatter_w),
        ("cs_fast", one_pass(batches, k, exact_sums=False).scatter_w),
        ("two_pass", two_pass(batches, k, d)[2]),
    )
    for name, value in checks:
        rel = float((value - ref).abs().max() / ref.abs().max())
        print(f"  check {name:<10s} scatter vs store_all: max rel diff {rel:.1e}")
    times = time_interleaved(
        {
            "gemm_floor": lambda: gemm_floor(batches, d),
            "classstats": lambda: one_pass(batches, k),
            "cs_fast": lambda: one_pass(batches, k, exact_sums=False),
            "two_pass": lambda: two_pass(batches, k, d),
            "store_all": lambda: store_all(batches, k, d),
        },
        args.repeats,
    )
    feat_gb = n * d * 4 / 1e9
    print(f"{'method':<12s}{'seconds':>10s}{'GB/s feats':>12s}{'vs classstats':>15s}")
    for name, t in times.items():
        print(f"{name:<12s}{t:>10.3f}{feat_gb / t:>12.2f}{t / times['classstats']:>15.2f}")
    ratios = {
        "classstats_over_gemm_floor": times["classstats"] / times["gemm_floor"],
        "classstats_fast_over_gemm_floor": times["cs_fast"] / times["gemm_floor"],
        "two_pass_over_classstats": times["two_pass"] / times["classstats"],
        "store_all_over_classstats": times["store_all"] / times["classstats"],
    }
    print("ratios: " + ", ".join(f"{key} = {value:.2f}" for key, value in ratios.items()))
    for key in ("classstats_over_gemm_floor", "classstats_fast_over_gemm_floor"):
        print(f"target {key} <= 1.2: {'met' if ratios[key] <= 1.2 else 'MISSED'}")

    memory: dict[str, dict[int, float]] = {"classstats": {}, "store_all": {}}
    batches.clear()  # free the timing data before measuring memory
    print(f"peak RSS rise (MiB) while streaming N samples (D={d}, K={k}):")
    print(f"{'N':>8s}{'classstats':>12s}{'store_all':>12s}{'features MiB':>14s}")
    for m in (int(v) for v in args.memory_ns.split(",")):
        for method in memory:
            memory[method][m] = streamed_peak(method, m, d, k, args.batch)
        print(f"{m:>8d}{memory['classstats'][m]:>12.1f}{memory['store_all'][m]:>12.1f}{m * d * 4 / 2**20:>14.1f}")
    ns = sorted(memory["classstats"])
    spread = memory["classstats"][ns[-1]] - memory["classstats"][ns[0]]
    print(f"classstats memory change from N={ns[0]} to N={ns[-1]}: {spread:+.1f} MiB "
          f"(state {ClassStats(k, d).memory_bytes() / 2**20:.1f} MiB)")
    result = {"config": vars(args) | {"out": str(args.out)}, "seconds": times, "ratios": ratios, "peak_mib": memory}
    if args.out is not None:
        from nclens.core.io import write_json

        write_json(args.out / "bench_stats.json", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
