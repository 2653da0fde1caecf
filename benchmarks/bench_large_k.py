"""K = 50,000 classes, D = 1,024: statistics and nc1, nc2, cdnv within 24 GB of RAM, time stated.

Run::

    python benchmarks/bench_large_k.py                       # K=50,000 D=1,024, 2 samples per class
    python benchmarks/bench_large_k.py --k 5000 --d 256      # a quick look

Features are float32, streamed in batches (every class gets ``--per-class`` samples, so cdnv's σ_c²
is defined). The statistics take O(K·D + D²) memory; no metric allocates a K×K matrix: nc1 goes
through the D×D Gram of the centred means (eigh), cdnv / nc2_equiangular / nc2_etf are exact
reductions over the K×K pairs that share ONE cached float64 pass over the upper triangle of M̄M̄ᵀ
(K²·D multiply-adds, O(K·D + tile) memory): the first of them listed pays for the pass, the others reuse it.

Printed: the memory stated up front, the time of the statistics pass and of each metric, and the
process's peak resident set (VmHWM, /proc/self/status) against the 24 GB budget.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import _status_kib, set_threads  # noqa: E402

import nclens.core.metrics.multiclass as mc  # noqa: E402
from nclens.core import metrics  # noqa: E402
from nclens.core.stats import ClassStats  # noqa: E402

BUDGET_GIB = 24 * 10**9 / 2**30  # 24 GB


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=1_024)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--metrics",
        default="nc1,nc1_trace,within_share,nc2_equinorm,nc2_equiangular,nc2_etf,cdnv",
        help="comma-separated metric names (nclens.core.metrics functions)",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_large_k.json")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    k, d, n = args.k, args.d, args.k * args.per_class
    state = ClassStats(num_classes=k, dim=d)
    print(f"K={k} D={d} N={n} float32 batch={args.batch} threads={torch.get_num_threads()} torch {torch.__version__}")
    print(f"memory stated up front: statistics {state.memory_bytes() / 2**20:.0f} MiB "
          f"(K×D sums {k * d * 8 / 2**20:.0f} MiB, D×D scatter {d * d * 8 / 2**20:.0f} MiB); "
          f"a K×K float64 matrix would be {k * k * 8 / 2**30:.1f} GiB and is never formed")
    if k * k <= mc._BLOCK_ELEMENTS:
        pairwise = f"dense K×K float64 temporaries of {k * k * 8 / 2**20:.0f} MiB each (K² ≤ one block)"
    else:
        tile = min(mc._TILE_ELEMENTS, mc._BLOCK_ELEMENTS) * 8
        height = min(mc._BLOCK_ELEMENTS // k, math.isqrt(mc._TILE_ELEMENTS))
        pairwise = f"a few Gram tiles of {tile / 2**20:.0f} MiB (row blocks of {height} rows)"
    print(f"memory stated up front: metrics add the K×D float64 means and centred means ({2 * k * d * 8 / 2**20:.0f} "
          f"MiB), the D×D Grams of nc1 ({2 * d * d * 8 / 2**20:.0f} MiB) and, for the shared pairwise pass, {pairwise}")
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(k, d, generator=g) / d**0.5 * 4.0  # (K, D) float32, ‖μ_c‖ ≈ 4
    order = torch.randperm(n, generator=g) % k  # every class exactly per_class times, shuffled
    start = time.perf_counter()
    for lo in range(0, n, args.batch):
        y = order[lo : lo + args.batch]
        x = centres[y] + torch.randn(y.shape[0], d, generator=g)
        state.update(x, y)
    t_stats = time.perf_counter() - start
    print(f"statistics pass: {t_stats:.1f} s ({n / t_stats:,.0f} samples/s); peak RSS so far "
          f"{_status_kib('VmHWM') / 2**20:.2f} GiB")
    del centres
    times: dict[str, float] = {}
    values: dict[str, float] = {}
    for name in args.metrics.split(","):
        fn = getattr(metrics, name.strip(), None)
        if fn is None:
            raise ValueError(f"unknown metric {name!r}")
        start = time.perf_counter()
        values[name] = float(fn(state))
        times[name] = time.perf_counter() - start
        print(f"  {name:<16s} = {values[name]:<12.6g} {times[name]:8.1f} s   peak RSS "
              f"{_status_kib('VmHWM') / 2**20:.2f} GiB", flush=True)
    shared = [n for n in times if n in {"cdnv", "nc2_equiangular", "nc2_etf"}]
    if len(shared) > 1:
        print(f"  ({', '.join(shared)} share one pairwise pass: {sum(times[n] for n in shared):.1f} s for all of them)")
    peak = _status_kib("VmHWM") / 2**20
    total = t_stats + sum(times.values())
    print(f"total {total:.1f} s (statistics {t_stats:.1f} s + metrics {sum(times.values()):.1f} s); "
          f"peak RSS {peak:.2f} GiB vs budget {BUDGET_GIB:.1f} GiB: {'met' if peak < BUDGET_GIB else 'MISSED'}")
    result = {
        "config": vars(args) | {"out": str(args.out)},
        "seconds": {"statistics": t_stats, **times},
        "values": values,
        "peak_rss_gib": peak,
    }
    if args.out is not None:
        from nclens.core.io import write_json

        write_json(args.out / "bench_large_k.json", result)
    return result


if __name__ == "__main__":
    main()
