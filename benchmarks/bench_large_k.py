"""K = 50,000 classes, D = 1,024: statistics and nc1, nc2, cdnv within 24 GB of RAM, time stated.

Run::

    python benchmarks/bench_large_k.py --threads 2                 # K=50,000 D=1,024, 2 samples per class
    python benchmarks/bench_large_k.py --threads 2 --compare main  # before (git ref `main`) vs after, interleaved
    python benchmarks/bench_large_k.py --k 5000 --d 256            # a quick look

Features are float32, streamed in batches (every class gets ``--per-class`` samples, so cdnv's σ_c²
is defined). The statistics take O(K·D + D²) memory; no metric allocates a K×K matrix: nc1 goes
through the D×D Gram of the centred means (eigh), cdnv / nc2_equiangular / nc2_etf are exact
reductions over the K×K pairs that share ONE cached float64 pass over the upper triangle of M̄M̄ᵀ
(K²·D/2 multiply-adds in tiles, O(K·D + tile) memory): the first of them listed pays for the pass,
the others reuse it. The centred means and their D×D Gram are computed once and shared.

``--compare REF`` extracts ``git archive REF src`` into a temporary folder and runs the same
benchmark in fresh processes on that tree ("before") and on this one ("after"), alternating
``--repeats`` times, and prints the median seconds of each stage side by side.

Printed: the memory stated up front, the time of the statistics pass and of each metric, and the
process's peak resident set (VmHWM, /proc/self/status) against the 24 GB budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BUDGET_GIB = 24 * 10**9 / 2**30  # 24 GB
METRICS = "nc1,nc1_trace,within_share,nc2_equinorm,nc2_equiangular,nc2_etf,cdnv"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def run(args: argparse.Namespace, quiet: bool = False) -> dict:
    """One measurement in this process (the tree on ``sys.path``)."""
    import nclens.core.metrics.multiclass as mc
    from nclens.core import metrics
    from nclens.core.stats import ClassStats

    say = (lambda *a, **k: None) if quiet else print
    set_threads(args.threads)
    k, d, n = args.k, args.d, args.k * args.per_class
    state = ClassStats(num_classes=k, dim=d)
    say(f"K={k} D={d} N={n} float32 batch={args.batch} threads={torch.get_num_threads()} torch {torch.__version__}")
    say(f"memory stated up front: statistics {state.memory_bytes() / 2**20:.0f} MiB "
        f"(K×D sums {k * d * 8 / 2**20:.0f} MiB, D×D scatter {d * d * 8 / 2**20:.0f} MiB); "
        f"a K×K float64 matrix would be {k * k * 8 / 2**30:.1f} GiB and is never formed")
    if k * k <= mc._BLOCK_ELEMENTS:
        pairwise = f"dense K×K float64 temporaries of {k * k * 8 / 2**20:.0f} MiB each (K² ≤ one block)"
    else:
        tile = mc._TILE_ELEMENTS * 8
        pairwise = f"three Gram tiles of {tile / 2**20:.0f} MiB"
    say(f"memory stated up front: metrics add the K×D float64 means and centred means ({2 * k * d * 8 / 2**20:.0f} "
        f"MiB), the D×D Gram of the means ({d * d * 8 / 2**20:.0f} MiB) and, for the shared pairwise pass, {pairwise}")
    ClassStats(num_classes=2).update(torch.randn(64, 8), torch.arange(64) % 2)  # warm-up: imports, BLAS handles
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(k, d, generator=g) / d**0.5 * 4.0  # (K, D) float32, ‖μ_c‖ ≈ 4
    order = torch.randperm(n, generator=g) % k  # every class exactly per_class times, shuffled
    start = time.perf_counter()
    for lo in range(0, n, args.batch):
        y = order[lo : lo + args.batch]
        x = centres[y] + torch.randn(y.shape[0], d, generator=g)
        state.update(x, y)
    t_stats = time.perf_counter() - start
    say(f"statistics pass: {t_stats:.1f} s ({n / t_stats:,.0f} samples/s); peak RSS so far "
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
        say(f"  {name:<16s} = {values[name]:<14.8g} {times[name]:8.1f} s   peak RSS "
            f"{_status_kib('VmHWM') / 2**20:.2f} GiB", flush=True)
    shared = [m for m in times if m in {"cdnv", "nc2_equiangular", "nc2_etf"}]
    if len(shared) > 1:
        say(f"  ({', '.join(shared)} share one pairwise pass: {sum(times[m] for m in shared):.1f} s for all of them)")
    peak = _status_kib("VmHWM") / 2**20
    total = t_stats + sum(times.values())
    say(f"total {total:.1f} s (statistics {t_stats:.1f} s + metrics {sum(times.values()):.1f} s); "
        f"peak RSS {peak:.2f} GiB vs budget {BUDGET_GIB:.1f} GiB: {'met' if peak < BUDGET_GIB else 'MISSED'}")
    return {"seconds": {"statistics": t_stats, **times, "total": total}, "values": values, "peak_rss_gib": peak}


def compare(args: argparse.Namespace) -> dict:
    """Before (``args.compare`` tree) vs after (this tree), fresh processes, alternating."""
    here = Path(__file__).resolve()
    repo = here.parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(repo), "archive", args.compare, "src"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        trees = {"before": Path(tmp) / "src", "after": repo / "src"}
        worker = [a for a in sys.argv[1:] if not a.startswith("--compare") and a != args.compare]
        results: dict[str, list[dict]] = {"before": [], "after": []}
        for i in range(args.repeats):
            for label, tree in trees.items():
                env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(args.threads))
                out = subprocess.run([sys.executable, str(here), "--worker", *worker], env=env, capture_output=True,
                                     text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results[label].append(res)
                print(f"  run {i + 1} {label:<6s} total {res['seconds']['total']:.1f} s", flush=True)
    stages = list(results["after"][0]["seconds"])
    med = {lab: {s: statistics.median(r["seconds"][s] for r in results[lab]) for s in stages} for lab in results}
    print(f"K={args.k} D={args.d} threads={args.threads}: median of {args.repeats} runs each, before = {args.compare}")
    print(f"  {'stage':<16s}{'before s':>10s}{'after s':>10s}{'after/before':>14s}")
    for stage in stages:
        b, a = med["before"][stage], med["after"][stage]
        print(f"  {stage:<16s}{b:>10.1f}{a:>10.1f}{a / b if b else math.nan:>14.2f}")
    diffs = {m: abs(results["after"][0]["values"][m] - results["before"][0]["values"][m])
             / max(abs(results["before"][0]["values"][m]), 1e-300) for m in results["after"][0]["values"]}
    print("  values agree: max relative difference " + ", ".join(f"{m} {v:.1e}" for m, v in diffs.items()))
    peaks = {lab: max(r["peak_rss_gib"] for r in results[lab]) for lab in results}
    print(f"  peak RSS before {peaks['before']:.2f} GiB, after {peaks['after']:.2f} GiB")
    return {"median_seconds": med, "relative_differences": diffs, "peak_rss_gib": peaks}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=1_024)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--metrics", default=METRICS, help="comma-separated names of nclens.core.metrics functions")
    parser.add_argument("--compare", default=None, help="git ref of the 'before' tree (e.g. main)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each tree with --compare")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_large_k.json")
    args = parser.parse_args(argv)
    if args.worker:
        result = run(args, quiet=True)
        print(json.dumps(result))
        return result
    result = compare(args) if args.compare else run(args)
    result = {"config": vars(args) | {"out": str(args.out)}, **result}
    if args.out is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
        from nclens.core.io import write_json

        write_json(args.out / "bench_large_k.json", result)
    return result


if __name__ == "__main__":
    main()
