"""Multi-label NC experiment: learned head vs fixed ETF head vs fixed ETF head with feature dim K.

Reproduces, on the embedded ``multilabel-digits`` data (CPU minutes), the claims of Li, Li, Wang & Qu
(ICML 2024): training with the pick-all-label loss drives the features to MLab NC (within-set
collapse, singleton ETF, self-duality, scaled tag-wise averages), and a fixed simplex-ETF classifier
with the last block reduced to K channels trains fewer parameters with equal or better test
performance. Every variant gets the same budget (epochs, optimiser, schedule, data order).

MLab NC is a terminal-phase phenomenon; the default config (experiments/mlab_digits.yaml) reaches it on
CPU with few samples per label set, BatchNorm before the last block (``batch_norm``), full-batch
gradient descent (``batch_size: 0``), weight decay on all parameters and a cosine decay of the learning
rate to 0. The fall of each metric is its value at epoch 0 (the network at initialisation) over its
final value.

Per variant and evaluation epoch it records the MLab NC metrics of the training features
(:func:`nclens.core.metrics.multilabel.multilabel_metrics`, with the head's W) and the test metrics:
mAP (macro ``sklearn.metrics.average_precision_score`` of the softmax scores), example-based F1 of
the predicted set P = {k : p_k ≥ r·max_j p_j} (r = ``f1_ratio``; PAL's optimum gives the m true tags
equal probability ≈ 1/m), and Li et al.'s IoU = mean_i Σ_{k∈Y_i} softmax(z_i)_k (softmax mass on the
true label set). Trainable parameters and time per epoch (training steps only) are reported.

Run folder: ``config.json`` (resolved config + versions), ``<variant>/history.jsonl``,
``<variant>/result.json``, ``<variant>/checkpoint.pt`` (resume point, loaded with
``weights_only=True``), ``summary.json``, ``summary.csv``, ``report.md`` and the figures
``mlab_nc.png`` (MLab NC over epochs) and ``tagwise_scale.png`` (c_m per multiplicity over epochs).

Example:
    >>> from nclens.multilabel.experiment import MLabConfig
    >>> MLabConfig(epochs=2).variants
    ('learned', 'fixed_etf', 'fixed_etf_dimk')
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nclens.core.io import atomic_write_bytes, atomic_write_text, package_versions, read_json, write_json, write_png
from nclens.core.metrics.multilabel import multilabel_metrics
from nclens.core.multilabel import MultiLabelStats
from nclens.data.multilabel import MultiLabelSplit, load_multilabel_digits
from nclens.nn.heads import FixedETFClassifier
from nclens.nn.losses import LOSSES, get_loss

__all__ = [
    "VARIANTS",
    "NC_KEYS",
    "NC_FALL_TARGET",
    "MLabConfig",
    "MLabNet",
    "build_model",
    "count_trainable",
    "batch_bounds",
    "multilabel_scores",
    "run_variant",
    "run_mlab",
    "load_config",
]

VARIANTS = ("learned", "fixed_etf", "fixed_etf_dimk")

#: The MLab NC metrics that should fall towards 0 (figure and the fall-ratio table).
NC_KEYS = ("nc1", "nc1_sets", "nc2_etf", "nc2_equinorm", "nc2_equiangular", "nc3_duality", "tagwise_residual_m2",
           "tagwise_angle_ratio")

#: The fall (value at initialisation / value at the end) every NC metric should reach to call it MLab NC.
NC_FALL_TARGET = 10.0


@dataclass(frozen=True)
class MLabConfig:
    """Resolved settings of one experiment (a YAML file gives any subset of the fields)."""

    name: str = "mlab_digits"
    seed: int = 0
    # data: multilabel-digits
    per_set: tuple[int, ...] = (100, 20)
    test_per_set: tuple[int, ...] = (30, 6)
    classes: tuple[int, ...] | None = None
    max_shift: int = 1
    # model
    channels: tuple[int, int] = (16, 32)
    hidden: int = 256
    feature_dim: int = 256
    batch_norm: bool = False  # BatchNorm after each conv and after the hidden layer (before the last block)
    variants: tuple[str, ...] = VARIANTS
    # training (identical budget for every variant)
    loss: str = "pal"
    epochs: int = 60
    batch_size: int = 64  # 0 = full batch (one gradient step per epoch on all training samples)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eval_every: int = 5
    f1_ratio: float = 0.5
    device: str = "auto"
    threads: int = 1  # torch CPU threads during the run (0 = leave torch's setting); 1 avoids oversubscription

    def __post_init__(self) -> None:
        for name in ("per_set", "test_per_set", "channels", "variants"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {self.variants}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        for name in ("epochs", "eval_every", "hidden", "feature_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if int(self.batch_size) < 0:
            raise ValueError(f"batch_size must be a positive integer or 0 (full batch), got {self.batch_size!r}")
        if len(self.channels) != 2 or min(self.channels) < 1:
            raise ValueError(f"channels must be two positive integers, got {self.channels}")
        if int(self.threads) < 0:
            raise ValueError(f"threads must be >= 0 (0 = torch's default), got {self.threads}")
        if not 0.0 < self.f1_ratio <= 1.0:
            raise ValueError(f"f1_ratio must lie in (0, 1], got {self.f1_ratio}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")

    @property
    def num_tags(self) -> int:
        return 10 if self.classes is None else len(self.classes)


def load_config(path: str | Path, overrides: Iterable[str] = (), **settings: Any) -> MLabConfig:
    """Read a YAML config (unknown keys are an error naming the valid ones), apply ``key=value``
    overrides (:func:`nclens.runs.config.override_config`) and then ``settings`` that are not None.

    A config without a ``name`` is named after its file.
    """
    from nclens.runs.config import load_yaml_config, replace

    cfg = load_yaml_config(MLabConfig, path, overrides)
    extra = {k: v for k, v in settings.items() if v is not None}
    if cfg.name == MLabConfig.name:
        extra.setdefault("name", Path(path).stem)
    return replace(cfg, **extra) if extra else cfg


class MLabNet(nn.Module):
    """Small CNN for 16×16 composites: two conv blocks, one hidden layer, a last block to D, then a head.

    With ``batch_norm`` a BatchNorm follows each conv and the hidden layer (before the last block).

    ``features(x)`` returns the penultimate features (N, D) (the last block's output, which NC is
    measured on); ``forward(x)`` the logits (N, K).
    """

    def __init__(self, num_tags: int, feature_dim: int, head: nn.Module, channels: tuple[int, int] = (16, 32),
                 hidden: int = 256, image_size: int = 16, batch_norm: bool = False) -> None:
        super().__init__()
        c1, c2 = channels

        def norm(n: int, conv: bool) -> nn.Module:
            if not batch_norm:
                return nn.Identity()
            return nn.BatchNorm2d(n) if conv else nn.BatchNorm1d(n)

        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), norm(c1, True), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), norm(c2, True), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),  # (N, c2 · (S/4)²)
            nn.Linear(c2 * (image_size // 4) ** 2, hidden), norm(hidden, False), nn.ReLU(),
        )
        self.last = nn.Linear(hidden, feature_dim)  # the last block: D output channels
        self.head = head

    def features(self, x: Tensor) -> Tensor:
        return self.last(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def build_model(variant: str, cfg: MLabConfig) -> MLabNet:
    """``learned``: nn.Linear head on D features; ``fixed_etf``: frozen ETF head on D features;
    ``fixed_etf_dimk``: frozen ETF head with the last block reduced to K channels."""
    k = cfg.num_tags
    if variant == "learned":
        d, head = cfg.feature_dim, nn.Linear(cfg.feature_dim, k)
    elif variant == "fixed_etf":
        d, head = cfg.feature_dim, FixedETFClassifier(cfg.feature_dim, k, seed=cfg.seed)
    elif variant == "fixed_etf_dimk":
        d, head = k, FixedETFClassifier(k, k)
    else:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    return MLabNet(k, d, head, cfg.channels, cfg.hidden, batch_norm=cfg.batch_norm)


def count_trainable(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def multilabel_scores(logits: Tensor, targets: Tensor, f1_ratio: float = 0.5) -> dict[str, float]:
    """Test metrics of multi-label logits (N, K) against multi-hot targets (N, K).

    mAP: macro average precision (scikit-learn) of softmax scores over tags with a positive sample;
    F1: example-based, predicted set {k : p_k ≥ r·max p}; IoU: mean softmax mass on the true set.
    """
    from sklearn.metrics import average_precision_score

    probs = torch.softmax(logits.double(), dim=1)
    y = (targets != 0).to(torch.float64)
    has_pos = y.sum(0) > 0
    ap = average_precision_score(y[:, has_pos].numpy(), probs[:, has_pos].numpy(), average="macro")
    pred = (probs >= f1_ratio * probs.max(dim=1, keepdim=True).values).to(torch.float64)
    inter = (pred * y).sum(1)
    f1 = (2 * inter / (pred.sum(1) + y.sum(1))).mean()
    iou = (probs * y).sum(1).mean()
    return {"test_map": float(ap), "test_f1": float(f1), "test_iou": float(iou)}


@torch.no_grad()
def _evaluate(model: MLabNet, data: MultiLabelSplit, cfg: MLabConfig, device: torch.device) -> dict[str, float]:
    model.eval()
    stats = MultiLabelStats(cfg.num_tags)
    batch = 512
    for start in range(0, data.x_train.shape[0], batch):
        xb = data.x_train[start : start + batch].to(device)
        stats.update(model.features(xb), data.y_train[start : start + batch].to(device))
    weight = model.head.weight.detach()
    out: dict[str, float] = {}
    try:
        out.update(multilabel_metrics(stats, weight))
    except ValueError as exc:  # e.g. degenerate features at initialisation
        out["metrics_error"] = str(exc)  # type: ignore[assignment]
    logits = torch.cat([model(data.x_test[s : s + batch].to(device)).cpu()
                        for s in range(0, data.x_test.shape[0], batch)])
    out.update(multilabel_scores(logits, data.y_test, cfg.f1_ratio))
    model.train()
    return out


def batch_bounds(n: int, batch_size: int, *, min_size: int = 1) -> list[tuple[int, int]]:
    """[start, end) index ranges of the mini-batches of one epoch over n samples (``batch_size`` 0 = one batch).

    A trailing batch smaller than ``min_size`` is merged into the previous one (BatchNorm needs ≥ 2 samples).

    Example:
        >>> batch_bounds(10, 4, min_size=2), batch_bounds(9, 4, min_size=2), batch_bounds(5, 0)
        ([(0, 4), (4, 8), (8, 10)], [(0, 4), (4, 9)], [(0, 5)])
    """
    if n < 1 or batch_size < 0:
        raise ValueError(f"need n >= 1 and batch_size >= 0, got n={n}, batch_size={batch_size}")
    size = n if batch_size == 0 else batch_size
    bounds = [(s, min(s + size, n)) for s in range(0, n, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_size:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_variant(variant: str, cfg: MLabConfig, data: MultiLabelSplit, out_dir: Path, *,
                progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """Train one variant with the shared budget, evaluating every ``eval_every`` epochs; resumable.

    Returns the variant's result (also written to ``out_dir/<variant>/result.json``).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    vdir = out_dir / variant
    result_path, ckpt_path = vdir / "result.json", vdir / "checkpoint.pt"
    if resume and result_path.exists():
        return read_json(result_path)
    device = _resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(variant, cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    loss_fn = get_loss(cfg.loss)
    history: list[dict[str, Any]] = []
    epoch_times: list[float] = []
    start_epoch = 0
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        epoch_times = [float(t) for t in state["epoch_times"].tolist()]
        history = [r for r in _read_history(vdir) if r["epoch"] <= start_epoch]
    if not history:
        history = [{"epoch": 0, "train_loss": None, **_evaluate(model, data, cfg, device)}]
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    n = x_tr.shape[0]
    bounds = batch_bounds(n, cfg.batch_size, min_size=2 if cfg.batch_norm else 1)
    order_gen = torch.Generator().manual_seed(cfg.seed + 1)
    for _ in range(start_epoch):  # keep the data order identical after a resume
        torch.randperm(n, generator=order_gen)
    columns = (TextColumn(f"{variant:>15}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[info]}"))
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(variant, total=cfg.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            perm = torch.randperm(n, generator=order_gen).to(device)
            total, t0 = 0.0, time.perf_counter()
            for s, e in bounds:
                idx = perm[s:e]
                loss = loss_fn(model(x_tr[idx]), y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_times.append(time.perf_counter() - t0)
            sched.step()
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                rec = {"epoch": epoch, "train_loss": total / n, **_evaluate(model, data, cfg, device)}
                history.append(rec)
                _write_history(vdir, history)
                _save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                             "scheduler": sched.state_dict(), "epoch": epoch,
                                             "epoch_times": torch.tensor(epoch_times, dtype=torch.float64)})
                bar.update(task, info=f"loss {rec['train_loss']:.3f} mAP {rec['test_map']:.3f}")
            bar.update(task, completed=epoch)
    _write_history(vdir, history)
    first, last = history[0], history[-1]
    falls = {k: (first[k] / last[k] if last.get(k) and first.get(k) is not None else None)
             for k in NC_KEYS if k in last}  # start = epoch 0, the network at initialisation
    result = {
        "variant": variant,
        "trainable_params": count_trainable(model),
        "feature_dim": model.last.out_features,
        "time_per_epoch_s": sum(epoch_times) / max(len(epoch_times), 1),
        "final": last,
        "initial": first,
        "nc_fall_ratio": falls,
    }
    write_json(result_path, result)
    return result


def _write_history(vdir: Path, history: list[dict[str, Any]]) -> None:
    import json

    from nclens.core.io import to_jsonable

    text = "".join(json.dumps(to_jsonable(r), allow_nan=False) + "\n" for r in history)
    atomic_write_text(vdir / "history.jsonl", text)


def _read_history(vdir: Path) -> list[dict[str, Any]]:
    from nclens.core.io import read_jsonl

    return read_jsonl(vdir / "history.jsonl")


# ----------------------------------------------------------------- figures
def plot_nc(histories: Mapping[str, list[dict[str, Any]]], path: Path) -> None:
    """MLab NC metrics over epochs (log scale), one panel per metric, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in NC_KEYS if any(k in r for h in histories.values() for r in h)]
    cols = 4
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for variant, hist in histories.items():
            pts = [(r["epoch"], r[key]) for r in hist if isinstance(r.get(key), (int, float)) and r[key] > 0]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=variant)
        ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("MLab NC of the training features (multilabel-digits, PAL loss)")
    fig.tight_layout()
    write_png(fig, path, tight=False)


def plot_tagwise(histories: Mapping[str, list[dict[str, Any]]], path: Path) -> None:
    """Tag-wise scale c_m (mean ± std over label sets) per multiplicity over epochs, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histories), figsize=(4.2 * len(histories), 3.2), squeeze=False)
    for ax, (variant, hist) in zip(axes.flat, histories.items()):
        mults = sorted({int(k.split("_m")[1]) for r in hist for k in r
                        if k.startswith("tagwise_scale_m") and not k.endswith("_std")})
        for m in mults:
            key = f"tagwise_scale_m{m}"
            pts = [(r["epoch"], r[key], r.get(f"{key}_std", 0.0)) for r in hist if key in r]
            ep, mean, std = zip(*pts)
            ax.errorbar(ep, mean, yerr=std, marker="o", ms=3, capsize=2, label=f"c_{m} (m={m})")
        ax.set_title(variant)
        ax.set_xlabel("epoch")
        ax.set_ylabel("tag-wise scale c_m")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Tag-wise scale: μ_S − μ_G¹ ≈ c_m · mean of the tags' singleton means")
    fig.tight_layout()
    write_png(fig, path, tight=False)


# -------------------------------------------------------------------- run
def run_mlab(cfg: MLabConfig, out_dir: str | Path, *, progress: bool = True, resume: bool = True,
             figures: bool = True) -> dict[str, Any]:
    """Run every variant of ``cfg`` into ``out_dir`` and write the summary, report and (``figures``) PNGs.

    A rerun with ``resume=True`` skips finished variants and continues an interrupted one from its
    last checkpoint; a changed config in the same folder is an error (use a new folder or resume=False).
    """
    out = Path(out_dir)
    cfg_path = out / "config.json"
    resolved = asdict(cfg)
    if resume and cfg_path.exists():
        old = read_json(cfg_path).get("config")
        if old is not None and old != read_json_roundtrip(resolved):
            raise ValueError(f"{out} holds a run with a different config; pass a new --out or --fresh")
    if not resume:
        for variant in cfg.variants:
            for name in ("result.json", "checkpoint.pt", "history.jsonl"):
                (out / variant / name).unlink(missing_ok=True)
    write_json(cfg_path, {"config": resolved, "versions": package_versions()})
    data = load_multilabel_digits(cfg.per_set, cfg.test_per_set, classes=cfg.classes, max_shift=cfg.max_shift,
                                  seed=cfg.seed)
    threads_before = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        results = {v: run_variant(v, cfg, data, out, progress=progress, resume=resume) for v in cfg.variants}
    finally:
        torch.set_num_threads(threads_before)
    histories = {v: _read_history(out / v) for v in cfg.variants}
    rows = []
    for v, r in results.items():
        fin, ini = r["final"], r["initial"]
        falls = {k: f for k, f in r["nc_fall_ratio"].items() if f is not None}
        weakest = min(falls, key=falls.__getitem__) if falls else None
        rows.append({
            "variant": v,
            "feature_dim": r["feature_dim"],
            "trainable_params": r["trainable_params"],
            "time_per_epoch_s": r["time_per_epoch_s"],
            "test_map": fin["test_map"],
            "test_f1": fin["test_f1"],
            "test_iou": fin["test_iou"],
            **{k: fin.get(k) for k in NC_KEYS},
            **{f"{k}_start": ini.get(k) for k in NC_KEYS},
            **{f"{k}_fall": r["nc_fall_ratio"].get(k) for k in NC_KEYS},
            "min_fall": None if weakest is None else falls[weakest],
            "min_fall_metric": weakest,
            **{k: fin[k] for k in fin if k.startswith("tagwise_scale_m") and not k.endswith("_std")},
        })
    summary = {"config": resolved, "n_train": int(data.x_train.shape[0]), "n_test": int(data.x_test.shape[0]),
               "variants": rows}
    write_json(out / "summary.json", summary)
    _write_csv(out / "summary.csv", rows)
    if figures:
        plot_nc(histories, out / "mlab_nc.png")
        plot_tagwise(histories, out / "tagwise_scale.png")
    atomic_write_text(out / "report.md", _report_md(cfg, summary))
    return summary


def read_json_roundtrip(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), to compare configs."""
    import json

    from nclens.core.io import to_jsonable

    return json.loads(json.dumps(to_jsonable(obj)))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _report_md(cfg: MLabConfig, summary: dict[str, Any]) -> str:
    lines = [
        f"# {cfg.name}: multi-label NC with the pick-all-label loss",
        "",
        f"multilabel-digits, K={cfg.num_tags}, per set {list(cfg.per_set)} (train n={summary['n_train']}), "
        f"test per set {list(cfg.test_per_set)} (n={summary['n_test']}); {cfg.epochs} epochs, SGD lr {cfg.lr} "
        f"(momentum {cfg.momentum}, cosine to 0), wd {cfg.weight_decay} on all parameters, "
        f"batch {'full' if cfg.batch_size == 0 else cfg.batch_size}, BatchNorm {'on' if cfg.batch_norm else 'off'}, "
        f"loss {cfg.loss}, seed {cfg.seed}.",
        "",
        "| variant | D | trainable params | s/epoch | test mAP | test F1 | test IoU | nc1 | nc1_sets | nc2_etf "
        "| nc3_duality | residual m2 | c_2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["variants"]:
        lines.append(
            f"| {r['variant']} | {r['feature_dim']} | {r['trainable_params']:,} | {r['time_per_epoch_s']:.3f} | "
            f"{100 * r['test_map']:.2f} | {100 * r['test_f1']:.2f} | {100 * r['test_iou']:.2f} | "
            f"{_fmt(r.get('nc1'), '.3g')} | {_fmt(r.get('nc1_sets'), '.3g')} | {_fmt(r.get('nc2_etf'), '.3g')} | "
            f"{_fmt(r.get('nc3_duality'), '.3g')} | {_fmt(r.get('tagwise_residual_m2'), '.3g')} | "
            f"{_fmt(r.get('tagwise_scale_m2'), '.3f')} |"
        )
    lines += ["", "MLab NC of the training features, start (epoch 0 = at initialisation) → end, and the fall "
              "start / end:", "", "| variant | " + " | ".join(NC_KEYS) + " |", "|---" * (len(NC_KEYS) + 1) + "|"]
    for r in summary["variants"]:
        lines.append(f"| {r['variant']} | " + " | ".join(
            f"{_fmt(r.get(f'{k}_start'), '.3g')} → {_fmt(r.get(k), '.3g')} ({_fmt(r.get(f'{k}_fall'), '.3g')}×)"
            for k in NC_KEYS) + " |")
    lines.append("")
    for r in summary["variants"]:
        low = r.get("min_fall")
        ok = low is not None and low >= NC_FALL_TARGET
        lines.append(f"- {r['variant']}: every MLab NC metric fell ≥ {NC_FALL_TARGET:g}×: {'yes' if ok else 'no'} "
                     f"(smallest fall {_fmt(low, '.3g')}× for {r.get('min_fall_metric') or '–'})")
    lines += ["", "![MLab NC over epochs](mlab_nc.png)", "", "![tag-wise scale](tagwise_scale.png)", ""]
    return "\n".join(lines)
