"""The differential-privacy experiments of Wang, Zhu, Su & Wang (ICML 2024), resumable run folders.

Kinds:

* ``dp-dimension`` (:class:`~nclens.privacy.config.DimensionConfig`) — NoisyGD test error in the
  layer-peeled model against the feature dimension p, for exact and per-coordinate-perturbed ETF
  features (shift norm τ√p), with and without PCA, beside the closed form and the non-private error.
* ``dp-threshold`` (:class:`~nclens.privacy.config.ThresholdConfig`) — the (β, p) sweep at a fixed
  shift norm β (per-sample std β/√p, or per-class shifts of norm β in the ETF's span), for the base
  setting and variants (class imbalance, MSE losses, several steps and learning rates, a fixed initial
  W₀ ≠ 0 of norm η in the span of the features),
  with the exact closed form where features are exactly collapsed, the p → ∞ form for per-sample
  shifts, Monte Carlo error bars, and the threshold β below which the error is flat in p.
* ``dp-features`` (:class:`~nclens.privacy.config.FeaturesConfig`) — private fine-tuning of a
  linear head on real features: checkpoints of an MLP pre-trained (the one Trainer) on a public
  split, and/or feature files (e.g. ImageNet-pretrained EfficientNet-Lite0/1/2 features of
  Fashion-MNIST, on one or several seeded splits); per feature set its collapse and feature shift,
  then NoisyGD / DP-SGD at each ε and two non-private references (the same GD without clipping and
  noise; a converged logistic regression), for each remedy (centring, normalisation, PCA fitted on
  public features).

Run folder: ``config.yaml``, ``versions.json``; ``results.jsonl`` (one record per finished cell —
a resumed run skips them; ``seconds`` is the only timing field); ``dp-features`` also
``features.jsonl`` (one record per feature set and split) and ``pretrain/`` (the Trainer's history,
checkpoint and kept ``weights/``); the tables ``accuracy_vs_dim.csv`` / ``threshold.csv`` +
``threshold_flat.csv`` / ``accuracy.csv`` + ``accuracy_table.csv``; ``summary.json`` last; figures
and ``report.html`` from ``nclens report``.

Example:
    $ nclens run dp_dimension --out runs/dp_dimension
    $ nclens run dp_threshold --set dims=[10,1000] --out runs/dp_threshold
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from nclens.core.console import progress_bar
from nclens.privacy.config import DimensionConfig, FeaturesConfig, ThresholdConfig, ThresholdVariant
from nclens.runs.experiment import Experiment, ReportContent, register_experiment
from nclens.runs.folder import RunFolder

__all__ = [
    "RESULTS",
    "FEATURES",
    "DimensionExperiment",
    "ThresholdExperiment",
    "FeaturesExperiment",
    "dimension_table",
    "threshold_table",
    "flatness",
    "accuracy_table",
]

RESULTS = "results.jsonl"
FEATURES = "features.jsonl"


def _mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def _group(rows: Iterable[dict[str, Any]], keys: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in keys)].append(r)
    return dict(groups)


def _cells(run: RunFolder, keys: Sequence[str]) -> set[tuple]:
    return {tuple(r.get(k) for k in keys) for r in run.read_jsonl(RESULTS)}


class _DPExperiment(Experiment):
    """The DP kinds' figures, report and console summary come from :mod:`nclens.privacy.figures` (``<view>_*``)."""

    view: ClassVar[str] = ""

    def _view(self, what: str) -> Callable[[RunFolder], Any]:
        from nclens.privacy import figures

        return getattr(figures, f"{self.view}_{what}")

    def figures(self, run: RunFolder) -> dict[str, Path]:
        return self._view("figures")(run)

    def report(self, run: RunFolder) -> ReportContent:
        return self._view("report")(run)

    def summary_text(self, run: RunFolder) -> str:
        return self._view("text")(run)


def _run_cells(run: RunFolder, keys: Sequence[str], cells: Sequence[tuple], compute: Callable[[tuple], dict],
               progress: bool, label: str) -> list[dict[str, Any]]:
    """Compute every cell not yet in ``results.jsonl`` (one appended record each, in order); all records."""
    done = _cells(run, keys)
    with progress_bar(progress, label, len(cells)) as advance:
        for cell in cells:
            if tuple(cell) not in done:
                run.append_jsonl(RESULTS, [compute(cell)])
            advance()
    return run.read_jsonl(RESULTS)


def _simulate_cell(cfg: Any, key: dict[str, Any]) -> dict[str, Any]:
    from nclens.privacy.simulate import SimulationConfig, simulate_noisy_gd

    started = time.perf_counter()
    res = simulate_noisy_gd(SimulationConfig(**cfg))
    record = {**key, **{k: v for k, v in res.to_dict().items() if k != "config"}}
    record["seconds"] = time.perf_counter() - started
    return record


def _model_fields(model: Any) -> dict[str, Any]:
    return dict(num_classes=model.num_classes, samples=model.samples, noise_multiplier=model.noise_multiplier,
                clip=model.clip, radius=model.radius, trials=model.trials, test_per_class=model.test_per_class,
                delta=model.delta)


# ------------------------------------------------------------------------------------ dp-dimension
def dimension_cells(config: DimensionConfig) -> list[tuple[int, float, int | None, int]]:
    """(p, τ, PCA dims or None, seed) of every cell, in run order."""
    cells = [(p, tau, pca, seed) for p in config.dims for tau in config.perturbs for pca in (None, config.pca)
             if pca is None or pca <= p for seed in config.seeds]
    return list(dict.fromkeys(cells))


def dimension_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (τ, arm, p): accuracy, its sd, non-private, closed form, ε, feature shift."""
    rows = []
    for (tau, pca, p), group in sorted(_group(records, ("perturb", "pca", "dim")).items(),
                                       key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2])):
        err, sd = _mean_sd([g["error"] for g in group])
        closed = _mean_sd([g.get("error_closed_form") for g in group])[0]
        rows.append({
            "perturb": tau, "arm": "no PCA" if pca is None else f"PCA {pca}", "dim": p,
            "accuracy": 1.0 - err, "accuracy_sd": sd,
            "accuracy_nonprivate": 1.0 - _mean_sd([g["error_nonprivate"] for g in group])[0],
            "accuracy_closed_form": None if closed is None else 1.0 - closed,
            "accuracy_large_p": (lambda v: None if v is None else 1.0 - v)(
                _mean_sd([g.get("error_large_p") for g in group])[0]),
            "error_stderr_mc": _mean_sd([g["error_stderr"] for g in group])[0],
            "feature_shift": _mean_sd([g["feature_shift"] for g in group])[0],
            "epsilon": group[0]["epsilon"], "seeds": len(group),
        })
    return rows


@register_experiment
class DimensionExperiment(_DPExperiment):
    """NoisyGD accuracy against the feature dimension (layer-peeled model)."""

    kind = "dp-dimension"
    config_class = DimensionConfig
    description = "NoisyGD accuracy vs feature dimension p, exact vs per-coordinate-perturbed ETF (Wang et al. 2024)"
    view = "dimension"

    def run(self, config: DimensionConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        keys = ("dim", "perturb", "pca", "seed")

        def compute(cell: tuple) -> dict[str, Any]:
            p, tau, pca, seed = cell
            sim = dict(_model_fields(config.model), dim=p, perturb=tau, perturb_kind=config.perturb_kind, pca=pca,
                       normalise=config.normalise, steps=config.steps, lr=config.lr,
                       public_samples=config.public_samples, seed=seed)
            return _simulate_cell(sim, dict(zip(keys, cell)))

        records = _run_cells(run, keys, dimension_cells(config), compute, progress, "dp-dimension cells")
        rows = dimension_table(records)
        run.write_csv("accuracy_vs_dim.csv", rows)
        return {"rows": rows}


# ------------------------------------------------------------------------------------ dp-threshold
def _variant_sim(config: ThresholdConfig, variant: ThresholdVariant, beta: float, p: int, seed: int) -> dict:
    sigma = variant.noise_multiplier or config.model.noise_multiplier * math.sqrt(variant.steps)
    return dict(_model_fields(config.model), noise_multiplier=sigma, dim=p, shift_norm=beta,
                perturb_kind=variant.perturb_kind, loss=variant.loss, imbalance=variant.imbalance,
                init_norm=variant.init_norm, steps=variant.steps, lr=variant.lr, seed=seed)


def threshold_cells(config: ThresholdConfig) -> list[tuple[str, float, int, int]]:
    """(variant, β, p, seed) of every cell, in run order."""
    return [(v.name, b, p, s) for v in config.variants for b in config.variant_betas(v) for p in config.dims
            for s in config.seeds]


def threshold_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (variant, β, p): error, its standard error, non-private, closed forms, ε, shift."""
    rows = []
    order: dict[str, int] = {}
    for r in records:
        order.setdefault(r["variant"], len(order))
    for (variant, beta, p), group in sorted(_group(records, ("variant", "beta", "dim")).items(),
                                            key=lambda kv: (order[kv[0][0]], kv[0][1], kv[0][2])):
        err, sd = _mean_sd([g["error"] for g in group])
        mc = _mean_sd([g["error_stderr"] for g in group])[0]
        n = len(group)
        se = sd / math.sqrt(n) if sd is not None else mc
        rows.append({
            "variant": variant, "beta": beta, "dim": p, "error": err, "error_se": se, "error_sd_seeds": sd,
            "error_stderr_mc": mc,
            "error_nonprivate": _mean_sd([g["error_nonprivate"] for g in group])[0],
            "error_closed_form": _mean_sd([g.get("error_closed_form") for g in group])[0],
            "error_large_p": _mean_sd([g.get("error_large_p") for g in group])[0],
            "feature_shift": _mean_sd([g["feature_shift"] for g in group])[0],
            "epsilon": group[0]["epsilon"], "seeds": n,
        })
    _paired_gaps(rows, records)
    return rows


def _paired_gaps(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """Add ``gap`` / ``gap_se``: the seed-paired difference err(p) − err(p_max) and its standard error.

    Seed s draws the same ETF orientation, W₀ and structured shifts at every p, so the per-seed
    differences d_s remove that variation: gap = mean_s d_s, gap_se = max(sd(d)/√S, the Monte Carlo
    floor √(mc(p)² + mc(p_max)²)/√S) — the floor keeps a few nearly equal d_s from claiming a
    precision the 'trials' noise draws do not have.
    """
    cells: dict[tuple, dict[int, dict[str, Any]]] = defaultdict(dict)  # (variant, β, p) -> seed -> record
    for rec in records:
        cells[(rec["variant"], rec["beta"], rec["dim"])][rec["seed"]] = rec
    top: dict[tuple, int] = {}
    for r in rows:
        key = (r["variant"], r["beta"])
        top[key] = max(top.get(key, r["dim"]), r["dim"])
    for r in rows:
        ref_p = top[(r["variant"], r["beta"])]
        here, ref = cells[(r["variant"], r["beta"], r["dim"])], cells[(r["variant"], r["beta"], ref_p)]
        seeds = sorted(here.keys() & ref.keys())
        if not seeds:
            r["gap"] = r["gap_se"] = None
            continue
        pairs = [(here[s], ref[s]) for s in seeds]
        diffs = [a["error"] - b["error"] for a, b in pairs]
        mc = math.sqrt(float(np.mean([(a["error_stderr"] or 0.0) ** 2 + (b["error_stderr"] or 0.0) ** 2
                                      for a, b in pairs])) / len(seeds))
        sd = float(np.std(diffs, ddof=1)) / math.sqrt(len(seeds)) if len(seeds) > 1 else 0.0
        r["gap"] = float(np.mean(diffs))
        r["gap_se"] = 0.0 if r["dim"] == ref_p else max(sd, mc)


def flatness(table: list[dict[str, Any]], sigmas: float) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """Per (variant, β): is the error flat in p? And per variant the threshold β (largest β up to which all are flat).

    Flat: |gap(p)| ≤ ``sigmas`` · se(p) for every p, with the seed-paired gap err(p) − err(p_max) and its
    standard error (``gap`` / ``gap_se`` of :func:`threshold_table`) where the table has them, else
    |mean(p) − mean(p_max)| against √(se(p)² + se(p_max)²) (se over seeds).
    """
    flat_rows = []
    for (variant, beta), group in _group(table, ("variant", "beta")).items():
        group = sorted(group, key=lambda r: r["dim"])
        ref = group[-1]
        worst, flat = 0.0, True
        for r in group:
            if r.get("gap_se") is not None:
                se, gap = r["gap_se"], abs(r["gap"])
            else:
                se = math.hypot(r["error_se"] or 0.0, ref["error_se"] or 0.0)
                gap = abs(r["error"] - ref["error"])
            z = gap / se if se > 0 else (math.inf if gap > 0 else 0.0)
            worst = max(worst, z)
            flat = flat and z <= sigmas
        errors = [r["error"] for r in group]
        flat_rows.append({"variant": variant, "beta": beta, "flat": flat, "spread": max(errors) - min(errors),
                          "worst_gap_in_se": worst if math.isfinite(worst) else None,
                          "error_min_p": group[0]["error"], "error_max_p": ref["error"]})
    thresholds: dict[str, float | None] = {}
    for variant, group in _group(flat_rows, ("variant",)).items():
        best = None
        for r in sorted(group, key=lambda r: r["beta"]):
            if not r["flat"]:
                break
            best = r["beta"]
        thresholds[variant[0]] = best
    return flat_rows, thresholds


@register_experiment
class ThresholdExperiment(_DPExperiment):
    """The (β, p) sweep at a fixed shift norm: where is NoisyGD's error flat in p?"""

    kind = "dp-threshold"
    config_class = ThresholdConfig
    description = ("NoisyGD error over (shift norm β, dimension p) + imbalance / loss / steps / W0 rows; "
                   "the threshold β below which the error is flat in p (Wang et al. 2024)")
    view = "threshold"

    def check(self, config: ThresholdConfig) -> None:
        from nclens.privacy.simulate import SimulationConfig

        for v in config.variants:  # every variant's simulator config is valid (counts, dims)
            SimulationConfig(**_variant_sim(config, v, config.variant_betas(v)[0], min(config.dims), 0))

    def run(self, config: ThresholdConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        variants = {v.name: v for v in config.variants}

        def compute(cell: tuple) -> dict[str, Any]:
            name, beta, p, seed = cell
            v = variants[name]
            key = {"variant": name, "beta": beta, "dim": p, "seed": seed, "loss": v.loss, "imbalance": v.imbalance,
                   "steps": v.steps, "lr": v.lr, "init_norm": v.init_norm, "perturb_kind": v.perturb_kind}
            return _simulate_cell(_variant_sim(config, v, beta, p, seed), key)

        records = _run_cells(run, ("variant", "beta", "dim", "seed"), threshold_cells(config), compute, progress,
                             "dp-threshold cells")
        table = threshold_table(records)
        flat, thresholds = flatness(table, config.flat_sigmas)
        run.write_csv("threshold.csv", table)
        run.write_csv("threshold_flat.csv", flat)
        return {"rows": table, "flat": flat, "threshold": thresholds}


# ------------------------------------------------------------------------------------- dp-features
def _feature_sets(config: FeaturesConfig, run: RunFolder, *, resume: bool, progress: bool):  # noqa: ANN202
    """Yield (name, public, private, test, extra) for every feature set and, after each, its perturbed copies."""
    import zlib

    from nclens.privacy.data import perturb_parts

    for name, public, private, test, extra in _base_feature_sets(config, run, resume=resume, progress=progress):
        yield name, public, private, test, extra
        for q in config.perturbations:
            seed = [int(extra["split"]), zlib.crc32(name.encode()), zlib.crc32(q.name.encode())]
            parts = perturb_parts((public, private, test), q.shift_norm, seed)
            yield f"{name}~{q.name}", *parts, {**extra, "base_set": name, "perturbation": q.name,
                                               "perturbation_shift_norm": q.shift_norm}


def _base_feature_sets(config: FeaturesConfig, run: RunFolder, *, resume: bool, progress: bool):  # noqa: ANN202
    """Yield (name, public, private, test, extra) for every feature set (pre-training first when needed)."""
    from nclens.privacy.data import (
        Part,
        build_mlp,
        common_indices,
        load_public_private,
        penultimate_features,
        pretrain,
        split_feature_file,
    )

    pc = config.pretrain
    if pc.checkpoints:
        public, private, test = load_public_private(pc.dataset, public_fraction=config.split.public_fraction,
                                                    seed=config.split.seed, mnist1d_samples=pc.mnist1d_samples,
                                                    private_per_class=config.split.private_per_class)
        states = pretrain(pc, public, test, run.subfolder("pretrain"), resume=resume, progress=progress)
        k = int(torch.unique(public.y).numel())
        for epoch in pc.checkpoints:
            model = build_mlp(public.x.shape[1], k, pc)
            model.load_state_dict(states[epoch])
            with torch.no_grad():
                model.eval()
                accuracy = float((model(test.x).argmax(1) == test.y).double().mean())
            parts = [Part(penultimate_features(model, part.x), part.y) for part in (public, private, test)]
            yield f"epoch_{epoch}", *parts, {"split": config.split.seed, "checkpoint": epoch,
                                             "pretrained_test_accuracy": accuracy}
    keep = common_indices([f.path for f in config.files]) if config.split.common_samples and config.files else None
    for split_seed in config.split.split_seeds:
        for f in config.files:
            public, private, test = split_feature_file(f.path, public_fraction=config.split.public_fraction,
                                                       test_fraction=config.split.test_fraction, seed=split_seed,
                                                       private_per_class=config.split.private_per_class, keep=keep)
            yield f.name, public, private, test, {"split": split_seed, "file": f.path,
                                                  "samples": public.x.shape[0] + private.x.shape[0] + test.x.shape[0]}


def accuracy_table(records: list[dict[str, Any]], features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sd over splits × seeds of the test accuracy per (feature set, remedy, algorithm, ε).

    ``feature_shift`` and ``nc1`` are the means over the splits' records of the feature set.
    """
    info = {name: {m: _mean_sd([g.get(m) for g in group])[0] for m in ("feature_shift", "nc1")}
            for (name,), group in _group(features, ("feature_set",)).items()}
    rows = []
    for (name, remedy, algorithm, eps), group in _group(records, ("feature_set", "remedy", "algorithm",
                                                                  "epsilon")).items():
        acc, sd = _mean_sd([g["accuracy"] for g in group])
        rows.append({
            "feature_set": name, "remedy": remedy, "algorithm": algorithm, "epsilon": eps,
            "level": {"nonprivate": "non-private", "logreg": "non-private logreg"}.get(algorithm, algorithm)
            if eps is None else f"{eps:g}", "accuracy": acc, "accuracy_sd": sd,
            "epsilon_spent": _mean_sd([g.get("epsilon_spent") for g in group])[0],
            "noise_multiplier": _mean_sd([g["noise_multiplier"] for g in group])[0], "seeds": len(group),
            "feature_shift": info.get(name, {}).get("feature_shift"), "nc1": info.get(name, {}).get("nc1"),
        })
    return rows


def _wide(rows: list[dict[str, Any]], config: FeaturesConfig) -> list[dict[str, Any]]:
    from nclens.privacy.finetune import NONPRIVATE

    out = []
    for (name, remedy, algorithm), group in _group(rows, ("feature_set", "remedy", "algorithm")).items():
        if algorithm in NONPRIVATE:
            continue
        row = {"feature_set": name, "remedy": remedy, "algorithm": algorithm,
               "feature_shift": group[0]["feature_shift"], "nc1": group[0]["nc1"]}
        for g in sorted(group, key=lambda g: g["epsilon"]):
            row[f"eps={g['level']}"] = g["accuracy"]
            row[f"eps={g['level']}_sd"] = g["accuracy_sd"]
        for ref, column in zip(NONPRIVATE, ("non-private", "non-private logreg")):
            nonp = [r for r in rows if r["feature_set"] == name and r["remedy"] == remedy and r["algorithm"] == ref]
            row[column] = nonp[0]["accuracy"] if nonp else None
        out.append(row)
    return out


@register_experiment
class FeaturesExperiment(_DPExperiment):
    """Private heads on real features: pre-training checkpoints and/or feature files."""

    kind = "dp-features"
    config_class = FeaturesConfig
    description = ("NoisyGD / DP-SGD heads on real features (pre-training checkpoints, pretrained feature "
                   "files) vs epsilon, with normalisation / PCA remedies (Wang et al. 2024)")
    view = "features"

    def check(self, config: FeaturesConfig) -> None:
        for f in config.files:
            path = Path(f.path)
            if not path.is_file():
                raise FileNotFoundError(f"files[{f.name}].path {f.path!r} does not exist (make it with nclens extract)")
            if path.suffix.lower() not in (".npz", ".safetensors"):
                raise ValueError(f"files[{f.name}].path {f.path!r} must be a .npz or .safetensors feature file")

    def run(self, config: FeaturesConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        from nclens.privacy.finetune import feature_set_record, fit_remedy, head_accuracy

        heads = config.heads
        keys = ("feature_set", "split", "remedy", "algorithm", "epsilon", "seed")
        done = _cells(run, keys)
        recorded = {(r["feature_set"], r.get("split")) for r in run.read_jsonl(FEATURES)}
        # the two non-private references (logreg is deterministic: one cell, at the first head seed), then DP
        levels = [("nonprivate", None), ("logreg", None)] + [(a, e) for a in heads.algorithms for e in heads.epsilons]
        sets = (len(config.pretrain.checkpoints) + len(config.files) * len(config.split.split_seeds)) * (
            1 + len(config.perturbations))
        total = sets * len(config.remedies) * ((len(levels) - 1) * len(heads.seeds) + 1)
        with progress_bar(progress, "private heads", total) as advance:
            for name, public, private, test, extra in _feature_sets(config, run, resume=resume, progress=progress):
                split = extra["split"]
                if (name, split) not in recorded:
                    run.append_jsonl(FEATURES, [{**feature_set_record(name, public, private, test, config.remedies),
                                                 **extra}])
                k = int(torch.unique(private.y).numel())
                for remedy in config.remedies:
                    if remedy.pca is not None and remedy.pca > min(public.x.shape):
                        raise ValueError(f"remedies[{remedy.name}].pca={remedy.pca} exceeds the {name} features "
                                         f"(public split {tuple(public.x.shape)})")
                    prep = fit_remedy(remedy, public.x)
                    z_priv, z_test = prep.transform(private.x), prep.transform(test.x)
                    for algorithm, eps in levels:
                        for seed in heads.seeds[:1] if algorithm == "logreg" else heads.seeds:
                            key = (name, split, remedy.name, algorithm, eps, seed)
                            if key not in done:
                                started = time.perf_counter()
                                cell = head_accuracy(z_priv, private.y, z_test, test.y, k, heads, algorithm, eps, seed)
                                run.append_jsonl(RESULTS, [{**dict(zip(keys, key)), **cell,
                                                            "seconds": time.perf_counter() - started}])
                            advance()
        features = run.read_jsonl(FEATURES)
        rows = accuracy_table(run.read_jsonl(RESULTS), features)
        run.write_csv("accuracy.csv", rows)
        run.write_csv("accuracy_table.csv", _wide(rows, config))
        return {"feature_sets": [{k: v for k, v in f.items() if k != "remedies"} for f in features],
                "accuracy": rows}
