"""measure() vs a bare forward pass, vs a two-pass measurement and vs storing all features.

A ResNet-style CNN (stem, three stages of two residual blocks, global average pool, linear head) on
seeded synthetic 3×32×32 images of K classes; five measured layers, globally average-pooled (the
inputs of stage1, stage2, stage3, the pool and the classifier: D = 32, 32, 64, 128, 128).

Run::

    python benchmarks/bench_measure.py                  # N=512 images, batch 128, 1 thread
    python benchmarks/bench_measure.py --n 512 --repeats 2

Methods (interleaved, median of repeats, same loader):

* ``forward``: ``model(x)`` for every batch under ``torch.no_grad()`` — the floor;
* ``measure``: :func:`nclens.core.measure.measure` (one pass, all five layers, every metric);
* ``two_pass``: pass 1 forward + class means, pass 2 forward + scatter around the global means,
  then the same metrics — what a measurement without mergeable one-pass statistics costs;
* ``store_all``: forward keeping every feature of every layer, then statistics and metrics.

Targets (issue #9): measure ≤ 1.3× forward; measure ≥ 1.8× faster than two_pass end to end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import set_threads, time_interleaved  # noqa: E402

from nclens.core.measure import measure  # noqa: E402
from nclens.core.metrics import compute_metrics  # noqa: E402
from nclens.core.probe import Probe  # noqa: E402
from nclens.core.stats import ClassStats  # noqa: E402

LAYERS = ["stage1", "stage2", "stage3", "flatten", "fc"]


class Block(nn.Module):
    """Basic residual block: conv-BN-ReLU-conv-BN + (projected) shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet(num_classes: int = 10, width: int = 32) -> nn.Module:
    """A small CIFAR-style ResNet (2-2-2 blocks at widths w, 2w, 4w)."""
    return nn.Sequential(
        dict_to_modules(
            stem=nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()),
            stage1=nn.Sequential(Block(width, width, 1), Block(width, width, 1)),
            stage2=nn.Sequential(Block(width, 2 * width, 2), Block(2 * width, 2 * width, 1)),
            stage3=nn.Sequential(Block(2 * width, 4 * width, 2), Block(4 * width, 4 * width, 1)),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(4 * width, num_classes),
        )
    )


def dict_to_modules(**modules: nn.Module):
    from collections import OrderedDict

    return OrderedDict(modules)


def synthetic_images(n: int, k: int, seed: int = 0) -> TensorDataset:
    """Seeded 3×32×32 images: a class template plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(k, 3, 32, 32, generator=g)
    y = torch.arange(n) % k
    return TensorDataset(templates[y] + torch.randn(n, 3, 32, 32, generator=g), y)


# ----------------------------------------------------------------------------------- methods
def bare_forward(model: nn.Module, loader: DataLoader) -> None:
    with torch.no_grad():
        for x, _ in loader:
            model(x)


def one_pass(model: nn.Module, loader: DataLoader, k: int) -> dict[str, dict[str, float]]:
    return measure(model, loader, LAYERS, num_classes=k, progress=False).metrics


def two_pass(model: nn.Module, loader: DataLoader, k: int) -> dict[str, dict[str, float]]:
    """Class means in pass 1; scatter around the global means in pass 2 (float32 GEMM, float64 sums)."""
    counts = torch.zeros(k, dtype=torch.float64)
    sums: dict[str, Tensor] = {}
    with torch.no_grad(), Probe(model, LAYERS, mode="input", pool="avg") as probe:
        for x, y in loader:
            model(x)
            counts.index_add_(0, y, torch.ones(y.shape[0], dtype=torch.float64))
            for name, h in probe.features.items():
                if name not in sums:
                    sums[name] = torch.zeros(k, h.shape[1], dtype=torch.float64)
                sums[name].index_add_(0, y, h.to(torch.float64))
        means = {name: s / counts[:, None] for name, s in sums.items()}
        scatter = {name: torch.zeros(m.shape[1], m.shape[1], dtype=torch.float64) for name, m in means.items()}
        class_sq = {name: torch.zeros(k, dtype=torch.float64) for name in means}
        for x, y in loader:
            model(x)
            for name, h in probe.features.items():
                centred = h.to(torch.float64) - means[name][y]  # (B, D)
                class_sq[name].index_add_(0, y, centred.square().sum(1))
                c32 = centred.to(h.dtype)
                scatter[name] += (c32.T @ c32).to(torch.float64)
    out = {}
    for name in LAYERS:
        stats = ClassStats.from_moments(counts, sums[name], class_sq[name], scatter[name])
        weight = model.fc.weight.detach().to(torch.float64) if name == "fc" else None
        out[name] = compute_metrics(stats, weight)
    return out


def store_all(model: nn.Module, loader: DataLoader, k: int) -> dict[str, dict[str, float]]:
    kept: dict[str, list[Tensor]] = {name: [] for name in LAYERS}
    labels = []
    with torch.no_grad(), Probe(model, LAYERS, mode="input", pool="avg") as probe:
        for x, y in loader:
            model(x)
            labels.append(y)
            for name, h in probe.features.items():
                kept[name].append(h)
    y = torch.cat(labels)
    out = {}
    for name in LAYERS:
        stats = ClassStats(num_classes=k).update(torch.cat(kept[name]), y)
        weight = model.fc.weight.detach().to(torch.float64) if name == "fc" else None
        out[name] = compute_metrics(stats, weight)
    return out


def max_rel_diff(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    return max(abs(a[layer][m] - v) / max(abs(v), 1e-12) for layer in b for m, v in b[layer].items())


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_measure.json")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    model = resnet(args.k, args.width).eval()
    loader = DataLoader(synthetic_images(args.n, args.k), batch_size=args.batch)
    print(f"ResNet-style CNN width {args.width}, {len(LAYERS)} pooled measured layers {LAYERS}; N={args.n} "
          f"3×32×32, batch {args.batch}, threads={torch.get_num_threads()}, median of {args.repeats}")
    reference = one_pass(model, loader, args.k)
    for name, fn in (("two_pass", two_pass), ("store_all", store_all)):
        diff = max_rel_diff(fn(model, loader, args.k), reference)
        print(f"  check {name:<9s} metrics vs measure: max rel diff {diff:.1e}")
    times = time_interleaved(
        {
            "forward": lambda: bare_forward(model, loader),
            "measure": lambda: one_pass(model, loader, args.k),
            "two_pass": lambda: two_pass(model, loader, args.k),
            "store_all": lambda: store_all(model, loader, args.k),
        },
        args.repeats,
    )
    print(f"{'method':<12s}{'seconds':>10s}{'vs forward':>12s}")
    for name, t in times.items():
        print(f"{name:<12s}{t:>10.3f}{t / times['forward']:>12.2f}")
    ratios = {
        "measure_over_forward": times["measure"] / times["forward"],
        "two_pass_over_measure": times["two_pass"] / times["measure"],
        "store_all_over_measure": times["store_all"] / times["measure"],
    }
    print("ratios: " + ", ".join(f"{key} = {value:.2f}" for key, value in ratios.items()))
    print(f"targets: overhead <= 1.3x: {'met' if ratios['measure_over_forward'] <= 1.3 else 'MISSED'}; "
          f"one pass >= 1.8x faster than two: {'met' if ratios['two_pass_over_measure'] >= 1.8 else 'MISSED'}")
    result = {"config": vars(args) | {"out": str(args.out)}, "seconds": times, "ratios": ratios}
    if args.out is not None:
        from nclens.core.io import write_json

        write_json(args.out / "bench_measure.json", result)
    return result


if __name__ == "__main__":
    main()
