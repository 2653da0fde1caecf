"""GPU: ClassStats.update throughput in GB/s of features beside the GEMM floor, the fully exact mode,
a two-pass scheme and the device's memory bandwidth (the rows of ``bench_stats.py``, on CUDA).

Run on a machine with CUDA (exits with a message otherwise)::

    python benchmarks/gpu_throughput.py
    python benchmarks/gpu_throughput.py --d 512,2048 --k 100,10000 --dtype float32,bfloat16 --tf32
    python benchmarks/gpu_throughput.py --allow-cpu --d 512 --k 100 --dtype float32   # check the script on CPU

For each (D, K, dtype) the features already live on the device (what a forward hook hands over) and
each method is timed per batch (CUDA events after a warm-up, methods interleaved, median of
``--repeats``):

* ``gemm_floor``: one XᵀX per batch in the features' dtype added to a float64 D×D accumulator;
* ``syrk_floor``: SciPy's ``ssyrk`` (CPU only: torch exposes no symmetric rank-k update on CUDA, so
  on CUDA the engine keeps ``x.T @ x``);
* ``default``: :meth:`ClassStats.update` (float32 centring and batch sums, float64 accumulation);
* ``exact``: ``ClassStats(exact_sums=True)`` (float64 centring and class sums);
* ``two_pass``: one batch of each pass of the rhubarbwu/neural-collapse-style two-pass scheme of
  ``bench_stats.py`` (one-hot class sums, then X − M[Y] and its GEMM), i.e. the cost per batch of
  measuring with two passes;
* ``copy GB/s``: measured device memory bandwidth (read + write of a large device-to-device copy),
  and the theoretical peak from the device properties where PyTorch exposes them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from nclens.core.stats import ClassStats, _syrk_

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def _timer(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    """Seconds per call of ``fn`` (CUDA events on GPU, perf_counter on CPU)."""

    def run(fn: Callable[[], object], iters: int) -> float:
        for _ in range(max(2, iters // 10)):  # warm-up (allocator, cuBLAS handles)
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            stop.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(stop) / 1e3 / iters
        begin = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - begin) / iters

    return run


def copy_bandwidth(device: torch.device, nbytes: int, timer) -> float:
    """Measured GB/s of a device-to-device copy (bytes read + bytes written)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = timer(lambda: dst.copy_(src), 20)
    return 2 * src.numel() * 4 / seconds / 1e9


def theoretical_bandwidth(device: torch.device) -> float | None:
    """Peak GB/s from memory clock and bus width, when this PyTorch build exposes them."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate


def methods_for(x: torch.Tensor, y: torch.Tensor, k: int) -> dict[str, Callable[[], object]]:
    """One batch of every method (state kept between calls, as in a stream of batches)."""
    device, d = x.device, x.shape[1]
    acc = torch.zeros(d, d, dtype=torch.float64, device=device)
    default = ClassStats(num_classes=k, dim=d, device=device)
    exact = ClassStats(num_classes=k, dim=d, device=device, exact_sums=True)
    compute = x if x.dtype in (torch.float32, torch.float64) else x.float()
    classes = torch.arange(k, device=device)
    totals = torch.zeros(k, d, dtype=torch.float32, device=device)
    covar = torch.zeros(d, d, dtype=torch.float32, device=device)
    means = torch.zeros(k, d, dtype=torch.float32, device=device)

    def two_pass() -> None:
        onehot = (y[:, None] == classes).T.to(torch.float32)  # pass 1
        totals.add_(onehot @ compute.float())
        diff = compute.float() - means[y]  # pass 2
        covar.add_(diff.T @ diff)

    out = {
        "gemm_floor": lambda: acc.add_((x.T @ x).to(torch.float64)),
        "default": lambda: default.update(x, y),
        "exact": lambda: exact.update(x, y),
        "two_pass": two_pass,
    }
    if device.type == "cpu" and x.dtype == torch.float32:
        work = torch.zeros(d, d, dtype=torch.float32)
        out["syrk_floor"] = lambda: (_syrk_(work, x, beta=0.0), acc.add_(work))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d", default="512,2048,8192", help="comma-separated feature dimensions")
    parser.add_argument("--k", default="100,1000,50000", help="comma-separated class counts")
    parser.add_argument("--dtype", default="float32,bfloat16", help=f"comma-separated, from {sorted(DTYPES)}")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tf32", action="store_true", help="allow TF32 tensor cores for float32 GEMMs")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when CUDA is absent")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        name = torch.cuda.get_device_name(device)
    elif args.allow_cpu:
        device, name = torch.device("cpu"), "CPU (--allow-cpu)"
    else:
        print("gpu_throughput.py: CUDA is not available (torch.cuda.is_available() is False); this benchmark "
              "needs an NVIDIA GPU. Run it on a CUDA machine, or pass --allow-cpu to check the script on the CPU.",
              file=sys.stderr)
        return 2
    unknown = [t for t in args.dtype.split(",") if t not in DTYPES]
    if unknown:
        parser.error(f"unknown dtype(s) {unknown}; choose from {sorted(DTYPES)}")
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    timer = _timer(device)
    copy_gbs = copy_bandwidth(device, 1 << 30 if device.type == "cuda" else 1 << 26, timer)
    peak = theoretical_bandwidth(device)
    print(f"{name}: measured copy bandwidth {copy_gbs:.0f} GB/s"
          + (f", theoretical {peak:.0f} GB/s" if peak else "") + f"; TF32 {'on' if args.tf32 else 'off'}; "
          f"batch {args.batch}; torch {torch.__version__}; median of {args.repeats}, methods interleaved")
    order = ("gemm_floor", "syrk_floor", "default", "exact", "two_pass")
    print(f"{'D':>6s}{'K':>7s}{'dtype':>10s}" + "".join(f"{m + ' GB/s':>16s}" for m in order)
          + f"{'default/gemm':>14s}{'exact/gemm':>12s}{'% copy bw':>11s}")
    g = torch.Generator(device=device).manual_seed(0)
    memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 1 << 34
    for d in (int(v) for v in args.d.split(",")):
        for k in (int(v) for v in args.k.split(",")):
            if k * d * 8 * 6 + d * d * 8 * 4 > memory:
                print(f"{d:>6d}{k:>7d}  skipped: K×D statistics do not fit")
                continue
            for dtype_name in args.dtype.split(","):
                dtype = DTYPES[dtype_name]
                x = torch.randn(args.batch, d, generator=g, device=device).to(dtype)
                y = torch.randint(0, k, (args.batch,), generator=g, device=device)
                fns = methods_for(x, y, k)
                times: dict[str, list[float]] = {m: [] for m in fns}
                for _ in range(args.repeats):
                    for m, fn in fns.items():
                        times[m].append(timer(fn, args.iters))
                sec = {m: statistics.median(t) for m, t in times.items()}
                nbytes = x.numel() * x.element_size()
                cells = "".join(f"{nbytes / sec[m] / 1e9:>16.2f}" if m in sec else f"{'n/a':>16s}" for m in order)
                share = 100 * nbytes / sec["default"] / 1e9 / copy_gbs
                print(f"{d:>6d}{k:>7d}{dtype_name:>10s}{cells}{sec['default'] / sec['gemm_floor']:>14.2f}"
                      f"{sec['exact'] / sec['gemm_floor']:>12.2f}{share:>10.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
