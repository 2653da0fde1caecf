"""Scaling of the one-pass statistics in N, D and K: time and peak memory, log-log PNG.

Run::

    python benchmarks/bench_scaling.py --out runs/bench_scaling      # writes scaling.json, scaling.png

Each point streams N seeded float32 samples (batch 1024) through :class:`nclens.core.stats.ClassStats`
and then computes every metric (:func:`nclens.core.metrics.compute_metrics`); it records the seconds of
the pass and of the metrics and the rise of the peak resident set (VmHWM). One axis varies at a time
around the base point. The fitted log-log slope is printed per axis: time should grow ~N¹ (pass),
~D² (the GEMM), and the pass should not grow with K beyond the O(K·D) statistics; memory is flat in N.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import peak_rss_rise, set_threads, synthetic_batches  # noqa: E402

from nclens.core.errors import UndefinedMetricWarning  # noqa: E402
from nclens.core.io import atomic_write_bytes, write_json  # noqa: E402
from nclens.core.metrics import compute_metrics  # noqa: E402
from nclens.core.stats import ClassStats  # noqa: E402


def one_point(n: int, d: int, k: int, batch: int) -> dict[str, float]:
    """Seconds of the pass and of the metrics, and the peak-RSS rise (MiB), for one (N, D, K)."""
    times: dict[str, float] = {}

    def run() -> ClassStats:
        start = time.perf_counter()
        stats = ClassStats(num_classes=k)
        for x, y in synthetic_batches(n, d, k, batch):
            stats.update(x, y)
        times["pass_s"] = time.perf_counter() - start
        start = time.perf_counter()
        # random labels: at K ~ N some classes draw no sample (dropped) or one (no cdnv, which needs two)
        seen = stats.present()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)  # cdnv is NaN when a class has one sample
            compute_metrics(seen)
        times["metrics_s"] = time.perf_counter() - start
        return stats

    mib, _ = peak_rss_rise(run)
    return {"n": n, "d": d, "k": k, **times, "peak_mib": mib}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(xs), np.log(np.maximum(ys, 1e-9)), 1)[0])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="20000,256,100", help="base point N,D,K")
    parser.add_argument("--ns", default="5000,10000,20000,40000,80000")
    parser.add_argument("--ds", default="64,128,256,512,1024")
    parser.add_argument("--ks", default="10,100,1000,10000")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_scaling"))
    args = parser.parse_args(argv)
    set_threads(args.threads)
    n0, d0, k0 = (int(v) for v in args.base.split(","))
    axes = {
        "N": [dict(n=int(v), d=d0, k=k0) for v in args.ns.split(",")],
        "D": [dict(n=n0, d=int(v), k=k0) for v in args.ds.split(",")],
        "K": [dict(n=n0, d=d0, k=int(v)) for v in args.ks.split(",")],
    }
    print(f"base N={n0} D={d0} K={k0}, batch {args.batch}, threads={torch.get_num_threads()}")
    one_point(min(n0, 4096), d0, k0, args.batch)  # warm-up: first-call allocations are not the method's
    results: dict[str, list[dict[str, float]]] = {}
    for axis, points in axes.items():
        results[axis] = []
        print(f"{axis:>2s}: {'value':>8s}{'pass s':>10s}{'metrics s':>11s}{'peak MiB':>10s}")
        for p in points:
            r = one_point(p["n"], p["d"], p["k"], args.batch)
            results[axis].append(r)
            print(f"    {int(r[axis.lower()]):>8d}{r['pass_s']:>10.3f}{r['metrics_s']:>11.3f}{r['peak_mib']:>10.1f}",
                  flush=True)
        xs = [r[axis.lower()] for r in results[axis]]
        print(f"    log-log slope: pass time {slope(xs, [r['pass_s'] for r in results[axis]]):.2f}, "
              f"metrics time {slope(xs, [r['metrics_s'] for r in results[axis]]):.2f}, "
              f"peak memory {slope(xs, [max(r['peak_mib'], 1.0) for r in results[axis]]):.2f}")
    write_json(args.out / "scaling.json", {"config": vars(args) | {"out": str(args.out)}, "results": results})

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(2, 3, figsize=(12, 7), constrained_layout=True)
    for col, (axis, rows) in enumerate(results.items()):
        xs = [r[axis.lower()] for r in rows]
        top, bottom = axs[0, col], axs[1, col]
        top.loglog(xs, [r["pass_s"] for r in rows], "o-", label="one pass (update)")
        top.loglog(xs, [r["metrics_s"] for r in rows], "s--", label="all metrics")
        top.set(title=f"time vs {axis}", xlabel=axis, ylabel="seconds")
        bottom.loglog(xs, [max(r["peak_mib"], 0.1) for r in rows], "o-", color="C2", label="peak RSS rise")
        if axis == "N":
            bottom.loglog(xs, [n * d0 * 4 / 2**20 for n in xs], ":", color="gray", label="all features (store-all)")
        bottom.set(title=f"peak memory vs {axis}", xlabel=axis, ylabel="MiB")
        for ax in (top, bottom):
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"ClassStats scaling (base N={n0}, D={d0}, K={k0}; float32, {torch.get_num_threads()} thread(s))")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(args.out / "scaling.png", buf.getvalue())
    print(f"wrote {args.out / 'scaling.json'} and {args.out / 'scaling.png'}")
    return results


if __name__ == "__main__":
    main()
