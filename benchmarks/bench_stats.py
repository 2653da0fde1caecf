"""ClassStats one pass vs the GEMM and SYRK floors, its fully exact mode and a two-pass implementation.

Run (2 cores here; ratios are measured side by side, methods interleaved, median of repeats)::

    python benchmarks/bench_stats.py                 # N=50,000, D=512, K=100 float32, batch 1024, 1 and 2 threads
    python benchmarks/bench_stats.py --threads 1 --repeats 3 --memory-ns "" --out runs/bench_stats

Methods, all over the same list of float32 batches held in memory, timed round-robin:

* ``gemm_floor``: one XᵀX per batch (torch float32 GEMM) added to a float64 D×D accumulator — the
  least a one-pass second-moment method does with a general matrix product;
* ``syrk_floor``: the same with the symmetric rank-k update (SciPy BLAS ``ssyrk`` on the batch's
  memory, one triangle, half the flops), added to the float64 accumulator;
* ``default``: :meth:`nclens.core.stats.ClassStats.update` per batch (float32 centring on the
  float32 shifts, float32 batch sums, ``ssyrk``; means, variances and S_W exact to float32
  precision of the within-class spread, float64 across batches), plus reading ``scatter_w`` once;
* ``exact``: ``ClassStats(exact_sums=True)``, the fully exact mode (float64 centring and class sums);
* ``two_pass``: the two-pass scheme of rhubarbwu/neural-collapse (``neural_collapse/accumulate.py``:
  MeanAccumulator, then CovarAccumulator and VarNormAccumulator over the data again), re-implemented
  here from its description: pass 1 one-hot (K×B) @ X class sums, pass 2 X − M[Y], (X − M[Y])ᵀ(X − M[Y])
  and one-hot @ (X − M[Y])², all in float32 (its default dtype). It needs the data twice (a second
  forward pass in real use), which this timing does not even charge;
* ``store_all`` (memory table only): concatenate every batch, then means and one centred GEMM.

Targets (issue 20): default ≤ 1.0× gemm_floor and ≤ 1.25× syrk_floor, exact ≤ 1.3× gemm_floor, at 1
and 2 threads. Peak memory is the rise of the process's peak resident set (VmHWM, reset through
``/proc/self/clear_refs``) while streaming N samples generated batch by batch (flat in N).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nclens.core.stats import ClassStats

Batches = list[tuple[Tensor, Tensor]]


# ----------------------------------------------------------------------------- shared helpers
def set_threads(threads: int) -> None:
    """Use the same number of intra-op threads for every method (and inter-op 1); SciPy's BLAS follows."""
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


def syrk_floor(batches: Batches, d: int) -> Tensor:
    """SciPy's ssyrk per batch on torch's thread count (what a bare rank-k update costs), added into float64.

    ClassStats itself uses ?syrk only on one thread (with more, the BLAS and torch thread pools contend:
    see ``nclens.core.stats._syrk_``); this floor calls SciPy directly, so it shows that cost too.
    """
    from scipy.linalg import blas
    from threadpoolctl import threadpool_limits

    acc = torch.zeros(d, d, dtype=torch.float64)
    work = np.zeros((d, d), dtype=np.float32, order="F")
    with threadpool_limits(torch.get_num_threads(), user_api="blas"):
        for x, _ in batches:
            out = blas.ssyrk(1.0, x.numpy().T, beta=0.0, c=work, trans=0, lower=0, overwrite_c=1)
            acc.add_(torch.from_numpy(out.T))  # C-order lower triangle (the upper one stays 0)
    return acc.tril() + acc.tril(-1).T


def one_pass(batches: Batches, k: int, exact_sums: bool = False) -> ClassStats:
    stats = ClassStats(num_classes=k, exact_sums=exact_sums)
    for x, y in batches:
        stats.update(x, y)
    stats.scatter_w  # noqa: B018 - the lazy triangle fill and S_W are part of the cost
    return stats


def two_pass(batches: Batches, k: int, d: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """rhubarbwu/neural-collapse-style accumulators (float32, one-hot class sums), two passes."""
    counts = torch.zeros(k, dtype=torch.float32)
    totals = torch.zeros(k, d, dtype=torch.float32)
    classes = torch.arange(k)
    for x, y in batches:  # pass 1: MeanAccumulator
        onehot = (y[:, None] == classes).T.to(torch.float32)  # (K, B)
        counts += onehot.sum(1)
        totals += onehot @ x
    means = totals / counts.clamp_min(1)[:, None]
    covar = torch.zeros(d, d, dtype=torch.float32)
    var_norms = torch.zeros(k, dtype=torch.float32)
    for x, y in batches:  # pass 2: CovarAccumulator and VarNormAccumulator around the pass-1 means
        diff = x - means[y]  # (B, D)
        covar += diff.T @ diff
        onehot = (y[:, None] == classes).T.to(torch.float32)
        var_norms += (onehot @ diff.square()).sum(-1)
    return counts, means, covar.to(torch.float64), var_norms


def store_all(batches: Batches, k: int, d: int) -> tuple[Tensor, Tensor, Tensor]:
    x = torch.cat([b[0] for b in batches])  # (N, D): every feature kept
    y = torch.cat([b[1] for b in batches])
    x64 = x.to(torch.float64)
    counts = torch.zeros(k, dtype=torch.float64).index_add_(0, y, torch.ones(y.shape[0], dtype=torch.float64))
    means = torch.zeros(k, d, dtype=torch.float64).index_add_(0, y, x64) / counts.clamp_min(1)[:, None]
    centred = x64 - means[y]
    return counts, means, centred.T @ centred


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
TARGETS = {"default_over_gemm_floor": 1.0, "default_over_syrk_floor": 1.25, "exact_over_gemm_floor": 1.3}


def timing_table(batches: Batches, k: int, d: int, repeats: int, threads: int) -> dict:
    set_threads(threads)
    times = time_interleaved(
        {
            "gemm_floor": lambda: gemm_floor(batches, d),
            "syrk_floor": lambda: syrk_floor(batches, d),
            "default": lambda: one_pass(batches, k),
            "exact": lambda: one_pass(batches, k, exact_sums=True),
            "two_pass": lambda: two_pass(batches, k, d),
        },
        repeats,
    )
    n = sum(x.shape[0] for x, _ in batches)
    feat_gb = n * d * 4 / 1e9
    print(f"threads={torch.get_num_threads()}: median of {repeats}, methods interleaved")
    print(f"  {'method':<12s}{'seconds':>9s}{'GB/s':>7s}{'/gemm':>8s}{'/syrk':>8s}{'/default':>10s}")
    for name, t in times.items():
        print(f"  {name:<12s}{t:>9.3f}{feat_gb / t:>7.2f}{t / times['gemm_floor']:>8.2f}{t / times['syrk_floor']:>8.2f}"
              f"{t / times['default']:>10.2f}")
    ratios = {
        "default_over_gemm_floor": times["default"] / times["gemm_floor"],
        "default_over_syrk_floor": times["default"] / times["syrk_floor"],
        "exact_over_gemm_floor": times["exact"] / times["gemm_floor"],
        "syrk_floor_over_gemm_floor": times["syrk_floor"] / times["gemm_floor"],
        "two_pass_over_default": times["two_pass"] / times["default"],
    }
    print("  ratios: " + ", ".join(f"{key} = {value:.2f}" for key, value in ratios.items()))
    for key, target in TARGETS.items():
        print(f"  target {key} <= {target}: {'met' if ratios[key] <= target else 'MISSED'} ({ratios[key]:.2f})")
    return {"seconds": times, "ratios": ratios}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts, each its own table")
    parser.add_argument("--memory-ns", default="12500,25000,50000,100000", help="N values for peak memory ('' = skip)")
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_stats.json")
    args = parser.parse_args(argv)
    n, d, k = args.n, args.d, args.k
    batches = list(synthetic_batches(n, d, k, args.batch))
    print(f"N={n} D={d} K={k} batch={args.batch} float32, torch {torch.__version__}")

    # correctness first: every method gives the same scatter (float32 products: ~1e-7 of the spread)
    set_threads(1)
    ref = store_all(batches, k, d)[2]
    checks = (
        ("default", one_pass(batches, k).scatter_w),
        ("exact", one_pass(batches, k, exact_sums=True).scatter_w),
        ("two_pass", two_pass(batches, k, d)[2]),
    )
    for name, value in checks:
        rel = float((value - ref).abs().max() / ref.abs().max())
        print(f"  check {name:<9s} scatter vs float64 store_all: max rel diff {rel:.1e}")
    tables = {int(t): timing_table(batches, k, d, args.repeats, int(t)) for t in args.threads.split(",")}

    memory: dict[str, dict[int, float]] = {"classstats": {}, "store_all": {}}
    batches.clear()  # free the timing data before measuring memory
    if args.memory_ns:
        set_threads(1)
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
    result = {"config": vars(args) | {"out": str(args.out)}, "tables": tables, "peak_mib": memory}
    if args.out is not None:
        from nclens.core.io import write_json

        write_json(args.out / "bench_stats.json", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
