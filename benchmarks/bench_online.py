"""OnlineCollapse overhead vs plain training, vs training + an extra measure() pass; agreement when frozen.

Two models trained with SGD on seeded synthetic Gaussian-mixture data (float32):

* ``mlp``: D_in=256 → 512 → 512 → K=10, N = 8,192 in batches of 128 (64 steps), measuring the inputs
  of the two last Linear layers (D = 512 each): cheap layers, so the D×D statistics weigh heavily;
* ``cnn``: 3×32×32 → conv 32 → conv 64 → conv 128 (stride 2 each) → pool → Linear 10, N = 2,048 in
  batches of 64 (32 steps), measuring the pooled input of conv3 (D = 64) and the classifier input (D = 128):
  the usual case where the forward/backward dominates.

Methods, interleaved (median of repeats, one intra-op thread by default):

* ``train``: one epoch of forward, cross-entropy, backward, SGD step — the floor;
* ``train+online``: the same epoch inside ``OnlineCollapse`` on the inputs of the two last Linear
  layers (D = 512 each, full D×D scatter), one result per epoch;
* ``train+online/8``: the same with a result every 8 steps (8 metric computations per epoch);
* ``train+measure``: the epoch, then ``measure()`` of the same layers (the extra pass it replaces).

Agreement: with lr = 0 (frozen weights, no dropout/BatchNorm) the online result of one epoch is
compared with ``measure()`` over the same batches (max relative difference over every metric).

Run::

    python benchmarks/bench_online.py              # both models, 1 thread, 3 repeats
    python benchmarks/bench_online.py --model cnn --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import set_threads, time_interleaved  # noqa: E402

from nclens.core.measure import measure  # noqa: E402
from nclens.core.online import OnlineCollapse  # noqa: E402


def model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.Conv2d(64, 128, 3, 2, 1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


SETUPS = {  # kind: (layers, N, batch, input shape)
    "mlp": (["2", "4"], 8192, 128, (256,)),
    "cnn": (["4", "8"], 2048, 64, (3, 32, 32)),
}


def data(n: int, shape: tuple[int, ...], batch: int, k: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.randn(n, *shape, generator=g) + 1.5 * torch.randn(k, *shape, generator=g)[y]
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def epoch(net: nn.Module, opt: torch.optim.Optimizer, batches, online: OnlineCollapse | None = None) -> None:
    net.train()
    for x, y in batches:
        loss = nn.functional.cross_entropy(net(x), y)
        if online is not None:
            online.update(y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def run(kind: str, repeats: int, threads: int) -> None:
    layers, n, batch, shape = SETUPS[kind]
    batches = data(n, shape, batch)
    steps = len(batches)
    net = model(kind)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def train() -> None:
        epoch(net, opt, batches)

    def train_online(every: int) -> None:
        with OnlineCollapse(net, layers, every_n_steps=every, num_classes=10) as online:
            epoch(net, opt, batches, online)

    def train_measure() -> None:
        epoch(net, opt, batches)
        measure(net, batches, layers, num_classes=10, progress=False)

    times = time_interleaved({
        "train": train,
        "train+online": lambda: train_online(steps),
        "train+online/8": lambda: train_online(8),
        "train+measure": train_measure,
    }, repeats)
    floor = times["train"]
    dims = measure(net, batches[:1], layers, num_classes=10, progress=False).info["dims"]
    print(f"\n{kind}: N={n}, batch {batch} ({steps} steps), layers {dims} (name: D), {threads} thread(s), "
          f"median of {repeats}")
    print(f"{'method':<16}{'seconds':>10}{'× train':>10}")
    for name, seconds in times.items():
        print(f"{name:<16}{seconds:>10.3f}{seconds / floor:>10.2f}")
    print(f"online overhead per epoch: {times['train+online'] / floor - 1:+.1%}; "
          f"an extra measure() pass: {times['train+measure'] / floor - 1:+.1%}")

    frozen = model(kind)
    frozen_opt = torch.optim.SGD(frozen.parameters(), lr=0.0)
    with OnlineCollapse(frozen, layers, every_n_steps=steps, num_classes=10) as online:
        epoch(frozen, frozen_opt, batches, online)
    online_report = online.results[-1][1]
    exact = measure(frozen, batches, layers, num_classes=10, progress=False)
    worst = 0.0
    for layer, row in exact.metrics.items():
        for metric, value in row.items():
            other = online_report.metrics[layer][metric]
            if math.isfinite(value):
                worst = max(worst, abs(other - value) / max(abs(value), 1e-300))
    print(f"frozen weights (lr=0): online vs measure, max relative difference over "
          f"{sum(len(r) for r in exact.metrics.values())} metrics = {worst:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "cnn", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    for kind in (["mlp", "cnn"] if args.model == "both" else [args.model]):
        run(kind, args.repeats, args.threads)


if __name__ == "__main__":
    main()
