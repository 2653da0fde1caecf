"""Experiments of Wang, Zhu, Su & Wang (ICML 2024) on embedded data, resumable, in CPU minutes.

- ``kind: dimension`` (:class:`DimensionSweepConfig`): test error of NoisyGD in the layer-peeled
  model against the feature dimension p (10 … 10⁴), for exact and perturbed ETF features, with and
  without PCA, beside the closed form and the non-private error.
- ``kind: real-features`` (:class:`RealFeaturesConfig`): pre-train an MLP on a *public* split of
  digits (or MNIST-1D), keep checkpoints at several epochs (different collapse levels), extract the
  penultimate features, measure their collapse (``nclens.measure``) and feature shift, then train a
  linear head privately on the *private* split at ε ∈ {0.5, 1, 2, 8} (NoisyGD through Opacus),
  next to non-private, for each remedy (centring, normalisation, PCA fitted on public features).

Each finished cell is appended to ``results.jsonl``; a rerun on the same folder skips finished cells
(and reuses saved checkpoints), so an interrupted run resumes. Tables go to CSV, figures to PNG,
the resolved config and package versions to ``config.json``.

Example:
    $ nclens dp-experiment experiments/dp_dimension.yaml --out runs/dp_dimension
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nclens.core.io import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_text,
    read_jsonl,
    to_jsonable,
    write_json,
    write_png,
)

__all__ = [
    "DimensionSweepConfig",
    "RemedyConfig",
    "RealFeaturesConfig",
    "load_experiment_config",
    "run_dimension_sweep",
    "run_real_features",
    "run_experiment",
]


@dataclass(frozen=True)
class DimensionSweepConfig:
    """Accuracy vs feature dimension in the layer-peeled model (see :mod:`~nclens.privacy.simulate`).

    Cells: every ``dims`` × ``perturbs`` × (no PCA, PCA to ``pca``) × ``seeds``; ``pca`` arms are skipped
    where ``pca`` > p. Other fields are those of :class:`~nclens.privacy.SimulationConfig`.
    """

    dims: tuple[int, ...] = (10, 100, 1000, 10000)
    perturbs: tuple[float, ...] = (0.0, 0.1)
    perturb_kind: str = "gaussian"
    pca: int | None = 9
    normalise: bool = False
    num_classes: int = 10
    samples: int = 100
    noise_multiplier: float = 5.0
    clip: float = 1.0
    steps: int = 1
    lr: float = 1.0
    trials: int = 500
    test_per_class: int = 20
    public_samples: int = 1000
    delta: float = 1e-5
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int | None = 1


@dataclass(frozen=True)
class RemedyConfig:
    """One preprocessing arm, fitted on public features: centre, PCA to ``pca`` dims, L2-normalise."""

    name: str = "centred"
    pca: int | None = None
    normalise: bool = False


@dataclass(frozen=True)
class RealFeaturesConfig:
    """Private fine-tuning of a head on features of a pre-trained MLP (checkpoints = collapse levels).

    Attributes:
        dataset: ``"digits"`` or ``"mnist1d"``. mnist1d_samples: its size.
        public_fraction: share of the training split used (publicly) for pre-training; the rest is
            the private split the head is fine-tuned on; the test split is the dataset's.
        depth, width, batchnorm: the MLP (``nclens.models.MLP``); features = input of ``classifier``.
        pretrain_epochs, checkpoints: epochs of pre-training and the epochs whose weights are kept
            (0 = the random initialisation).
        pretrain_lr, momentum, weight_decay, batch_size: SGD of the pre-training.
        epsilons, delta: privacy levels of the heads (plus a non-private head).
        algorithm: ``"noisygd"`` or ``"dpsgd"``; head_epochs, head_lr, clip, head_batch_size, accountant:
            its hyper-parameters.
        remedies: preprocessing arms.
        seeds: seeds of the private heads (the pre-training uses ``pretrain_seed``).
        threads: torch CPU threads during the run (``None`` = leave as is).
    """

    dataset: str = "digits"
    mnist1d_samples: int = 4000
    split_seed: int = 0
    public_fraction: float = 0.5
    depth: int = 2
    width: int = 128
    batchnorm: bool = True
    pretrain_epochs: int = 200
    checkpoints: tuple[int, ...] = (0, 1, 3, 10, 30, 200)
    pretrain_lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    pretrain_seed: int = 0
    epsilons: tuple[float, ...] = (0.5, 1.0, 2.0, 8.0)
    delta: float = 1e-5
    algorithm: str = "noisygd"
    head_epochs: int = 100
    head_lr: float = 2.0
    clip: float = 1.0
    head_batch_size: int = 128
    accountant: str = "rdp"
    remedies: tuple[RemedyConfig, ...] = (
        RemedyConfig("centred"),
        RemedyConfig("normalised", normalise=True),
        RemedyConfig("pca+normalised", pca=10, normalise=True),
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.dataset not in ("digits", "mnist1d"):
            raise ValueError(f"dataset must be 'digits' or 'mnist1d', got {self.dataset!r}")
        if not 0 < self.public_fraction < 1:
            raise ValueError(f"public_fraction must lie in (0, 1), got {self.public_fraction!r}")
        bad = [c for c in self.checkpoints if not 0 <= c <= self.pretrain_epochs]
        if bad or not self.checkpoints:
            raise ValueError(f"checkpoints must be epochs in [0, pretrain_epochs={self.pretrain_epochs}], got {bad}")
        if self.algorithm not in ("noisygd", "dpsgd"):
            raise ValueError(f"algorithm must be 'noisygd' or 'dpsgd', got {self.algorithm!r}")
        if any(not (e > 0 and math.isfinite(e)) for e in self.epsilons):
            raise ValueError(f"epsilons must be positive and finite, got {self.epsilons}")
        names = [r.name for r in self.remedies]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"remedies need distinct names, got {names}")


_KINDS: dict[str, type] = {"dimension": DimensionSweepConfig, "real-features": RealFeaturesConfig}


def load_experiment_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
) -> DimensionSweepConfig | RealFeaturesConfig:
    """Read a YAML file (or a mapping) with ``kind: dimension | real-features`` and the config's fields."""
    import yaml

    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a YAML mapping, got {type(raw).__name__}")
    kind = raw.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"config needs 'kind' in {sorted(_KINDS)}, got {kind!r}")
    from nclens.runs.config import build_config

    return build_config(_KINDS[kind], raw, kind)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch CPU threads inside the block (small problems run faster on one thread)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _start_run(out: Path, kind: str, config: Any) -> None:
    from nclens.core.io import package_versions

    out.mkdir(parents=True, exist_ok=True)
    cfg = {"kind": kind, **asdict(config)}
    previous = out / "config.json"
    if previous.exists():
        import json

        old = json.loads(previous.read_text(encoding="utf-8")).get("config")
        if old is not None and old != json.loads(json.dumps(cfg, default=str)):
            raise ValueError(
                f"{out} holds a run with a different config; choose another --out folder or delete it"
            )
    write_json(previous, {"config": cfg, "versions": package_versions()})


# ---------------------------------------------------------------- dimension sweep
def run_dimension_sweep(
    config: DimensionSweepConfig, out: str | os.PathLike[str], *, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) the accuracy-vs-dimension sweep; write results, table and figure.

    Returns:
        ``{"rows": [...]}``: one row per (p, τ, PCA) with mean error over seeds (private and
        non-private), the closed form (exact features), ε and the feature shift.
    """
    from rich.progress import Progress

    from nclens.privacy.simulate import SimulationConfig, simulate_noisy_gd

    out = Path(out)
    _start_run(out, "dimension", config)
    done = {(r["dim"], r["perturb"], r["pca"], r["seed"]) for r in read_jsonl(out / "results.jsonl")}
    cells = [
        (p, tau, pca, seed)
        for p in config.dims
        for tau in config.perturbs
        for pca in (None, config.pca)
        if pca is None or pca <= p
        for seed in config.seeds
    ]
    cells = list(dict.fromkeys(cells))
    with _threads(config.threads), Progress(disable=not progress) as bar:
        task = bar.add_task("dimension sweep", total=len(cells), completed=sum(c in done for c in cells))
        for p, tau, pca, seed in cells:
            if (p, tau, pca, seed) in done:
                continue
            sim = SimulationConfig(
                num_classes=config.num_classes, dim=p, samples=config.samples,
                noise_multiplier=config.noise_multiplier, clip=config.clip, perturb=tau,
                perturb_kind=config.perturb_kind, pca=pca, normalise=config.normalise, steps=config.steps,
                lr=config.lr, trials=config.trials, test_per_class=config.test_per_class,
                public_samples=config.public_samples, delta=config.delta, seed=seed,
            )
            res = simulate_noisy_gd(sim)
            row = {"dim": p, "perturb": tau, "pca": pca, "seed": seed}
            row.update({k: v for k, v in res.to_dict().items() if k != "config"})
            append_jsonl(out / "results.jsonl", [row])
            bar.advance(task)
    return _summarise_dimension(config, out)


def _summarise_dimension(config: DimensionSweepConfig, out: Path) -> dict[str, Any]:
    import pandas as pd

    df = pd.DataFrame(read_jsonl(out / "results.jsonl"))
    df["pca"] = df["pca"].astype("object").where(df["pca"].notna(), None)
    df["arm"] = df["pca"].map(lambda d: "no PCA" if d is None or d != d else f"PCA {int(d)}")
    agg = (
        df.groupby(["perturb", "arm", "dim"], sort=True)
        .agg(
            error=("error", "mean"),
            error_sd=("error", "std"),
            error_nonprivate=("error_nonprivate", "mean"),
            error_closed_form=("error_closed_form", "mean"),
            feature_shift=("feature_shift", "mean"),
            epsilon=("epsilon", "first"),
            seeds=("seed", "count"),
        )
        .reset_index()
    )
    agg["accuracy"] = 1.0 - agg["error"]
    agg["accuracy_nonprivate"] = 1.0 - agg["error_nonprivate"]
    atomic_write_text(out / "accuracy_vs_dim.csv", agg.to_csv(index=False))
    _plot_dimension(agg, config, out / "accuracy_vs_dim.png")
    summary = to_jsonable({"rows": agg.to_dict(orient="records")})
    write_json(out / "summary.json", summary)
    return summary


def _plot_dimension(agg: Any, config: DimensionSweepConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((tau, arm), g) in enumerate(agg.groupby(["perturb", "arm"], sort=True)):
        c = colours[i % len(colours)]
        name = "exact ETF" if tau == 0 else f"perturbed τ={tau:g}"
        ax.errorbar(g["dim"], g["accuracy"], yerr=g["error_sd"].fillna(0.0), color=c, marker="o",
                    capsize=3, label=f"{name}, {arm} (DP)")
        ax.plot(g["dim"], g["accuracy_nonprivate"], color=c, ls=":", marker="x", label=f"{name}, {arm} (non-private)")
        closed = g["error_closed_form"].dropna()
        if len(closed):
            ax.axhline(1.0 - float(closed.mean()), color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("feature dimension p")
    ax.set_ylabel("test accuracy")
    eps = float(agg["epsilon"].iloc[0])
    ax.set_title(f"NoisyGD, K={config.num_classes}, n={config.samples}, σ={config.noise_multiplier:g} "
                 f"(ε={eps:.2f} at δ={config.delta:g}); dashed: closed form", fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(alpha=0.3)
    write_png(fig, path)


# ---------------------------------------------------------------- real features
def _load_data(config: RealFeaturesConfig) -> tuple[Any, Any, Any]:
    """(public, private, test) as (x, y) pairs."""
    from nclens.data import load_digits, load_mnist1d, stratified_split

    if config.dataset == "digits":
        split = load_digits(seed=config.split_seed)
    else:
        split = load_mnist1d(num_samples=config.mnist1d_samples, seed=config.split_seed)
        mean, std = split.x_train.mean(0), split.x_train.std(0).clamp_min(1e-6)
        split = type(split)((split.x_train - mean) / std, split.y_train, (split.x_test - mean) / std, split.y_test)
    pub, priv = stratified_split(split.y_train.numpy(), 1.0 - config.public_fraction, config.split_seed)
    pub_t, priv_t = torch.from_numpy(pub), torch.from_numpy(priv)
    return (
        (split.x_train[pub_t], split.y_train[pub_t]),
        (split.x_train[priv_t], split.y_train[priv_t]),
        (split.x_test, split.y_test),
    )


def _pretrain(
    config: RealFeaturesConfig, public: tuple[Any, Any], k: int, out: Path, progress: bool
) -> dict[int, dict]:
    """Train the MLP on the public split; return {epoch: state_dict} for the checkpoints (saved/reused)."""
    from rich.progress import Progress
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from nclens.models import MLP

    ckpt_dir = out / "checkpoints"
    paths = {e: ckpt_dir / f"epoch_{e:04d}.safetensors" for e in config.checkpoints}
    if all(p.exists() for p in paths.values()):
        return {e: st_load(p.read_bytes()) for e, p in paths.items()}
    x, y = public
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.pretrain_seed)
        model = MLP(x.shape[1], k, depth=config.depth, width=config.width, batchnorm=config.batchnorm)
        opt = torch.optim.SGD(model.parameters(), lr=config.pretrain_lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.pretrain_epochs))
        gen = torch.Generator().manual_seed(config.pretrain_seed)
        states: dict[int, dict] = {}

        def keep(epoch: int) -> None:
            if epoch in paths:
                state = {k_: v.detach().clone().contiguous() for k_, v in model.state_dict().items()}
                atomic_write_bytes(paths[epoch], st_save(state))
                states[epoch] = state

        keep(0)
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("pre-training (public split)", total=config.pretrain_epochs)
            for epoch in range(1, config.pretrain_epochs + 1):
                model.train()
                order = torch.randperm(x.shape[0], generator=gen)
                for start in range(0, x.shape[0], config.batch_size):
                    idx = order[start : start + config.batch_size]
                    if idx.numel() < 2:  # BatchNorm needs two samples
                        continue
                    opt.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                    opt.step()
                sched.step()
                keep(epoch)
                bar.advance(task)
    return states


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input of the ``classifier`` layer (penultimate features), eval mode."""
    from nclens.core.probe import Probe

    model.eval()
    with torch.no_grad(), Probe(model, ["classifier"], mode="input") as probe:
        model(x)
        return probe.features["classifier"].to(torch.float32)


def run_real_features(
    config: RealFeaturesConfig, out: str | os.PathLike[str], *, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) private fine-tuning on real features from checkpoints with different collapse.

    Returns:
        ``{"checkpoints": [...], "accuracy": [...]}`` — per checkpoint its collapse metrics and
        feature shift, and per (checkpoint, remedy, ε) the mean/std test accuracy over seeds.
    """
    from rich.progress import Progress
    from torch.utils.data import DataLoader, TensorDataset

    from nclens.core.measure import measure
    from nclens.models import MLP
    from nclens.privacy.heads import FeaturePreprocessor, PrivateHeadConfig, train_private_head
    from nclens.privacy.shift import feature_shift, feature_shift_from_stats

    out = Path(out)
    _start_run(out, "real-features", config)
    with _threads(config.threads):
        public, private, test = _load_data(config)
        k = int(torch.unique(public[1]).numel())
        states = _pretrain(config, public, k, out, progress)
        done = {(r["checkpoint"], r["remedy"], r["epsilon"], r["seed"]) for r in read_jsonl(out / "results.jsonl")}
        ckpt_rows = []
        levels: list[float | None] = [None, *config.epsilons]
        total = len(config.checkpoints) * len(config.remedies) * len(levels) * len(config.seeds)
        with Progress(disable=not progress) as bar:
            task = bar.add_task("private heads", total=total)
            for epoch in config.checkpoints:
                model = MLP(public[0].shape[1], k, depth=config.depth, width=config.width, batchnorm=config.batchnorm)
                model.load_state_dict(states[epoch])
                loader = DataLoader(TensorDataset(*private), batch_size=512)
                report = measure(model, loader, layers=["classifier"], mode="input", num_classes=k, progress=False)
                stats = report.stats["classifier"]
                h_pub, h_priv, h_test = (_features(model, part[0]) for part in (public, private, test))
                with torch.no_grad():
                    acc_model = float((model(test[0]).argmax(1) == test[1]).double().mean())
                row = {
                    "checkpoint": epoch,
                    "pretrained_test_accuracy": acc_model,
                    "feature_shift": feature_shift_from_stats(stats).rms,
                    "feature_shift_public": feature_shift(h_pub, public[1]).rms,
                    "feature_shift_sample_normalised": feature_shift(h_priv, private[1], normalise="sample").rms,
                    **{m: report.metrics["classifier"][m] for m in ("nc1", "nc2_etf", "within_share")
                       if m in report.metrics["classifier"]},
                }
                ckpt_rows.append(row)
                for remedy in config.remedies:
                    prep = FeaturePreprocessor(centre=True, pca=remedy.pca, normalise=remedy.normalise).fit(h_pub)
                    z_priv, z_test = prep.transform(h_priv), prep.transform(h_test)
                    for eps in levels:
                        for seed in config.seeds:
                            key = (epoch, remedy.name, eps, seed)
                            if key in done:
                                bar.advance(task)
                                continue
                            head_cfg = PrivateHeadConfig(
                                algorithm="nonprivate" if eps is None else config.algorithm,
                                epochs=config.head_epochs, lr=config.head_lr, clip=config.clip,
                                target_epsilon=eps, delta=config.delta, batch_size=config.head_batch_size,
                                accountant=config.accountant, seed=seed,
                            )
                            res = train_private_head(z_priv, private[1], head_cfg, num_classes=k)
                            scores = z_test @ res.weight.T + (res.bias if res.bias is not None else 0.0)
                            acc = float((scores.argmax(1) == test[1]).double().mean())
                            append_jsonl(out / "results.jsonl", [{
                                "checkpoint": epoch, "remedy": remedy.name, "epsilon": eps, "seed": seed,
                                "accuracy": acc, "epsilon_spent": res.epsilon, "noise_multiplier": res.noise_multiplier,
                                "steps": res.steps, "final_loss": res.loss[-1],
                                "feature_shift": row["feature_shift"],
                            }])
                            bar.advance(task)
    return _summarise_real(config, ckpt_rows, out)


def _summarise_real(config: RealFeaturesConfig, ckpt_rows: list[dict], out: Path) -> dict[str, Any]:
    import pandas as pd

    ck = pd.DataFrame(ckpt_rows)
    atomic_write_text(out / "checkpoints.csv", ck.to_csv(index=False))
    df = pd.DataFrame(read_jsonl(out / "results.jsonl"))
    df["level"] = df["epsilon"].map(lambda e: "non-private" if e is None or e != e else f"{e:g}")
    agg = (
        df.groupby(["checkpoint", "remedy", "level"], sort=False)
        .agg(accuracy=("accuracy", "mean"), accuracy_sd=("accuracy", "std"),
             epsilon_spent=("epsilon_spent", "mean"), noise_multiplier=("noise_multiplier", "mean"),
             seeds=("seed", "count"))
        .reset_index()
        .merge(ck[["checkpoint", "feature_shift", "nc1"]], on="checkpoint")
    )
    atomic_write_text(out / "accuracy_vs_epsilon.csv", agg.to_csv(index=False))
    wide = agg.pivot_table(index=["remedy", "checkpoint", "feature_shift"], columns="level", values="accuracy")
    atomic_write_text(out / "accuracy_table.csv", wide.reset_index().to_csv(index=False))
    _plot_real(config, agg, out)
    summary = to_jsonable({"checkpoints": ck.to_dict(orient="records"), "accuracy": agg.to_dict(orient="records")})
    write_json(out / "summary.json", summary)
    return summary


def _plot_real(config: RealFeaturesConfig, agg: Any, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    remedies = [r.name for r in config.remedies]
    levels = ["non-private", *[f"{e:g}" for e in config.epsilons]]
    eps_x = {f"{e:g}": e for e in config.epsilons}
    fig, axes = plt.subplots(1, len(remedies), figsize=(4.2 * len(remedies), 3.8), sharey=True, squeeze=False)
    for ax, remedy in zip(axes[0], remedies):
        g = agg[agg["remedy"] == remedy]
        for ckpt, gc in g.groupby("checkpoint", sort=True):
            dp = gc[gc["level"] != "non-private"].assign(eps=lambda d: d["level"].map(eps_x)).sort_values("eps")
            line = ax.errorbar(dp["eps"], dp["accuracy"], yerr=dp["accuracy_sd"].fillna(0), marker="o", capsize=2,
                               label=f"epoch {ckpt} (shift {float(gc['feature_shift'].iloc[0]):.2f})")
            nonp = gc[gc["level"] == "non-private"]["accuracy"]
            if len(nonp):
                ax.axhline(float(nonp.iloc[0]), color=line[0].get_color(), ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xticks(list(config.epsilons), [f"{e:g}" for e in config.epsilons])
        ax.minorticks_off()
        ax.set_xlabel(f"ε (δ = {config.delta:g})")
        ax.set_title(f"{remedy} (dotted: non-private)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"{config.dataset}: private head ({config.algorithm}) on pre-trained features", fontsize=10)
    write_png(fig, out / "accuracy_vs_epsilon.png")

    fig, axes = plt.subplots(1, len(remedies), figsize=(4.2 * len(remedies), 3.8), sharey=True, squeeze=False)
    for ax, remedy in zip(axes[0], remedies):
        g = agg[agg["remedy"] == remedy]
        for level in levels:
            gl = g[g["level"] == level].sort_values("feature_shift")
            ax.plot(gl["feature_shift"], gl["accuracy"], marker="o", ls="-" if level != "non-private" else ":",
                    label=f"ε={level}" if level != "non-private" else level)
        ax.set_xlabel("feature shift of private features")
        ax.set_title(remedy, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("accuracy against feature shift (one point per checkpoint)", fontsize=10)
    write_png(fig, out / "accuracy_vs_shift.png")


def run_experiment(
    config_path: str | os.PathLike[str], out: str | os.PathLike[str], *, progress: bool = True
) -> dict[str, Any]:
    """Load a config (``kind: dimension | real-features``) and run it into ``out``."""
    config = load_experiment_config(config_path)
    if isinstance(config, DimensionSweepConfig):
        return run_dimension_sweep(config, out, progress=progress)
    return run_real_features(config, out, progress=progress)


