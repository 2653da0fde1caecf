"""The multi-label NC experiments (Li, Li, Wang & Qu, ICML 2024), two registered kinds.

``multilabel`` — train each variant (``learned`` head, ``fixed_etf`` head, ``fixed_etf_dimk``: fixed ETF
with feature dimension K; :mod:`nclens.multilabel.models`) with each loss (``pal`` 0/1 targets,
``pal_normalized`` the paper's 0.5/0.5 targets) and each seed, under one budget, with the one
:class:`~nclens.train.Trainer` (full batch = ``TensorData(..., batch_size=0)``; the optional feature
penalty λ_h‖H_B‖²_F of ``train_param_eff.py`` through a ``step_fn``). A callback measures, at epoch 0
(initialisation), every ``train.eval_every`` epochs and at the end, the MLab NC metrics of the training
features (:func:`~nclens.core.metrics.multilabel.multilabel_metrics` with the head's W: ``nc1`` …
``tagwise_scale_m2``, ``tagwise_angle_ratio``, ``tagwise_angle_li``), the singleton logit gap δ_1 and
the c_2 it implies under the UFM (:func:`~nclens.multilabel.ufm.gap_implied_scale`), and the test
scores (:mod:`nclens.multilabel.scores`: Li et al.'s IoU, mAP, example F1). The composites of each seed
are drawn anew (``data`` with the seed), shared by its losses and variants, so variants are compared
seed by seed.

``multilabel-ufm`` — the UFM studies: for each loss × λ × random initialisation, solve the UFM to
machine precision (:func:`~nclens.multilabel.ufm.solve_ufm`) and compare with the theory; the restarts
test the uniqueness of the optimum (same objective, same rotation-invariant geometry: W Wᵀ, the Gram of
the label-set means, b), ``within`` the within-multiplicity imbalance.

Run folder of ``multilabel``: ``config.yaml``, ``versions.json``; per sub-run ``<loss>/<variant>/seed<s>/``:
``history.jsonl`` (per epoch: lr, running loss, ``seconds``), ``nc.jsonl`` (per measured epoch),
``checkpoint.pt``, ``result.json``; then ``runs.csv`` (one row per sub-run), ``table.csv`` (mean ± sd
per loss × variant over the seeds), ``comparison.csv`` (each fixed head minus the learned head, seed by
seed), ``theory.json`` (the UFM references for c_2) and ``summary.json`` last. Of ``multilabel-ufm``:
``solutions.jsonl`` (one record per solved case), ``study.csv``, ``summary.json``.

Example:
    >>> from nclens.runs.experiment import get_experiment
    >>> get_experiment("multilabel").config_class.__name__, get_experiment("multilabel-ufm").kind
    ('MultiLabelConfig', 'multilabel-ufm')
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nclens.core.env import resolve_device, seed_everything
from nclens.core.metrics.multilabel import multilabel_metrics
from nclens.core.multilabel import MultiLabelStats
from nclens.data.multilabel import MultiLabelSplit
from nclens.multilabel.config import MultiLabelConfig, UFMStudyConfig
from nclens.multilabel.data import load_data
from nclens.multilabel.models import MLabNet, build_model, count_trainable
from nclens.multilabel.scores import multilabel_scores, singleton_logit_gap
from nclens.multilabel.ufm import gap_implied_scale, solution_report, solve_ufm, ufm_theory
from nclens.nn.losses import get_loss
from nclens.runs.experiment import Experiment, ReportContent, register_experiment
from nclens.runs.folder import RunFolder
from nclens.train import Callback, TensorData, Trainer

__all__ = [
    "NC_KEYS",
    "NC_FALL_TARGET",
    "NC_LOG",
    "MLabMeasure",
    "feature_decay_step",
    "train_one",
    "aggregate",
    "MultiLabelExperiment",
    "UFMStudyExperiment",
    "sub_run_name",
    "collect_results",
    "study_rows",
    "theory_references",
]

#: The MLab NC metrics that should fall towards 0 (figures, the fall table).
NC_KEYS = ("nc1", "nc1_sets", "nc2_etf", "nc2_equinorm", "nc2_equiangular", "nc3_duality", "tagwise_residual_m2",
           "tagwise_angle_ratio", "tagwise_angle_li")
#: The fall (value at initialisation / final value) every NC metric should reach to call it MLab NC.
NC_FALL_TARGET = 10.0
NC_LOG = "nc.jsonl"
RESULT = "result.json"
SCORES = ("test_map", "test_f1", "test_iou")


def sub_run_name(loss: str, variant: str, seed: int) -> str:
    """The sub-run folder of one (loss, variant, seed)."""
    return f"{loss}/{variant}/seed{seed}"


def feature_decay_step(loss: str, feature_decay: float, batch_size: int) -> Callable[..., tuple[Tensor, int]]:
    """A Trainer ``step_fn``: the registered ``loss`` plus Li et al.'s feature penalty λ_h ‖H_B‖²_F.

    ``train_param_eff.py``: ``loss_total = criterion(pred, label) + lamb_h * torch.linalg.norm(feature)**2``
    with the batch mean ``criterion`` and the batch's (B, D) features. Under ``reduction="mean"`` (one
    process) this is returned as is; under ``"sum"`` (DDP, the trainer rescales the share's sum by R/B)
    the share returns Σ_share ℓ_i + B·λ_h Σ_share ‖h_i‖² with B the nominal global batch ``batch_size``
    (exact for full batches; a trailing partial batch uses the nominal size).
    """
    fn = get_loss(loss)

    def step(model: nn.Module, x: Tensor, y: Tensor, reduction: str) -> tuple[Tensor, int]:
        logits, feats = model(x, return_features=True)
        penalty = feats.square().sum()  # ‖H_B‖²_F of this batch (or share)
        value = fn(logits, y, reduction=reduction)
        scale = 1.0 if reduction == "mean" else float(batch_size)
        return value + feature_decay * scale * penalty, int(y.shape[0])

    return step


@torch.no_grad()
def _forward(model: MLabNet, x: Tensor, device: torch.device, batch: int = 512) -> tuple[Tensor, Tensor]:
    logits, feats = [], []
    for s in range(0, x.shape[0], batch):
        z, h = model(x[s : s + batch].to(device), return_features=True)
        logits.append(z)
        feats.append(h)
    return torch.cat(logits), torch.cat(feats)


class MLabMeasure(Callback):
    """At the measured epochs (0 = initialisation): MLab NC of the training features, δ_1, test scores.

    One record per measured epoch in the sub-run's ``nc.jsonl``.
    """

    logs = (NC_LOG,)

    def __init__(self, data: MultiLabelSplit, epochs: list[int], *, loss: str, f1_ratio: float) -> None:
        self.data, self.epochs, self.loss, self.f1_ratio = data, set(epochs), loss, f1_ratio

    def measure(self, trainer: Trainer, epoch: int) -> dict[str, Any]:
        model, dev, d = trainer.model, trainer.device, self.data
        was = model.training
        model.eval()
        try:
            z_tr, h_tr = _forward(model, d.x_train, dev)
            if not bool(torch.isfinite(h_tr).all()):
                raise FloatingPointError(
                    f"training diverged: the features became non-finite at epoch {epoch}; lower optim.lr "
                    f"(now {trainer.optim.lr:g})"
                )
            stats = MultiLabelStats(d.num_tags).update(h_tr, d.y_train.to(dev))
            weight = model.head.weight.detach()
            record: dict[str, Any] = {"epoch": epoch, **multilabel_metrics(stats, weight)}
            y_tr = d.y_train.to(dev)
            gap = singleton_logit_gap(z_tr, y_tr)
            record["train_gap_m1"] = gap
            if d.num_tags > 2 and bool(((y_tr != 0).sum(1) == 2).any()) and gap > 0:
                record["c2_gap_implied"] = gap_implied_scale(self.loss, d.num_tags, gap, 2)
            train_scores = multilabel_scores(z_tr, y_tr, self.f1_ratio)
            record["train_iou"] = train_scores["iou"]
            z_te, _ = _forward(model, d.x_test, dev)
            record.update({f"test_{k}": v for k, v in multilabel_scores(z_te, d.y_test.to(dev), self.f1_ratio).items()})
        finally:
            model.train(was)
        if trainer.writes:
            trainer.run.append_jsonl(NC_LOG, [record])
        return record

    def on_fit_start(self, trainer: Trainer, start_epoch: int) -> None:
        if start_epoch == 0 and 0 in self.epochs:
            self.measure(trainer, 0)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if epoch in self.epochs:
            self.measure(trainer, epoch)


def _falls(first: dict[str, Any], last: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in NC_KEYS:
        a, b = first.get(k), last.get(k)
        ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b)
        out[k] = a / b if ok and b > 0 else None
    return out


def train_one(config: MultiLabelConfig, run: RunFolder, *, loss: str, variant: str, seed: int, data: MultiLabelSplit,
              resume: bool, progress: bool) -> dict[str, Any]:
    """Train one (loss, variant, seed) in the sub-run folder ``run``; returns (and writes) its ``result.json``.

    A finished sub-run (``result.json`` present) is read back, an interrupted one continues from its checkpoint.
    """
    if resume and run.exists(RESULT):
        return run.read_json(RESULT)
    cfg, m = config.train, config.model
    seed_everything(seed)
    model = build_model(variant, num_tags=config.num_tags, in_channels=int(data.x_train.shape[1]),
                        image_size=int(data.x_train.shape[-1]), channels=m.channels, hidden=m.hidden,
                        feature_dim=m.feature_dim, batch_norm=m.batch_norm)
    n = int(data.x_train.shape[0])
    step_fn = feature_decay_step(loss, cfg.feature_decay, cfg.batch_size or n) if cfg.feature_decay > 0 else None
    callback = MLabMeasure(data, cfg.measured_epochs(), loss=loss, f1_ratio=cfg.f1_ratio)
    trainer = Trainer(
        model, TensorData(data.x_train, data.y_train, cfg.batch_size), loss=loss, optim=config.optim,
        epochs=cfg.epochs, seed=seed, run=run, callbacks=[callback], device=cfg.device, step_fn=step_fn,
        checkpoint_every=cfg.checkpoint_every, progress=progress, name=f"{loss} {variant} seed {seed}",
    )
    fit = trainer.fit(resume=resume and run.has_checkpoint())
    nc = run.read_jsonl(NC_LOG)
    history = fit.history
    first, last = (nc[0], nc[-1]) if nc else ({}, {})
    seconds = [float(r["seconds"]) for r in history if "seconds" in r]
    result = {
        "loss": loss,
        "variant": variant,
        "seed": seed,
        "feature_dim": int(fit.model.feature_dim),
        "trainable_params": count_trainable(fit.model),
        "time_per_epoch_s": sum(seconds) / len(seconds) if seconds else None,
        "epochs": cfg.epochs,
        "final": last,
        "initial": first,
        "nc_fall": _falls(first, last),
        "final_train_loss": history[-1].get("train_loss_running") if history else None,
    }
    run.write_json(RESULT, result)
    return result


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _row(result: dict[str, Any]) -> dict[str, Any]:
    fin, falls = result["final"], result["nc_fall"]
    ok = {k: f for k, f in falls.items() if f is not None}
    weakest = min(ok, key=ok.__getitem__) if ok else None
    return {
        "loss": result["loss"], "variant": result["variant"], "seed": result["seed"],
        "feature_dim": result["feature_dim"], "trainable_params": result["trainable_params"],
        **{k: fin.get(k) for k in SCORES},
        "train_iou": fin.get("train_iou"),
        **{k: fin.get(k) for k in NC_KEYS},
        "tagwise_angle_li_deg": fin.get("tagwise_angle_li_deg"),
        "tagwise_scale_m2": fin.get("tagwise_scale_m2"),
        "tagwise_scale_m2_std": fin.get("tagwise_scale_m2_std"),
        "c2_gap_implied": fin.get("c2_gap_implied"),
        "train_gap_m1": fin.get("train_gap_m1"),
        "min_fall": None if weakest is None else ok[weakest],
        "min_fall_metric": weakest,
        "final_train_loss": result.get("final_train_loss"),
    }


#: columns of ``table.csv`` that get mean and sd over the seeds
TABLE_STATS = (*SCORES, "train_iou", *NC_KEYS, "tagwise_scale_m2", "c2_gap_implied", "min_fall")


def aggregate(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``runs`` (one row per sub-run), ``table`` (mean/sd over seeds per loss × variant), ``comparison``
    (each fixed head minus the learned head of the same loss and seed: mean/sd of the paired differences
    of the test scores, and the verdict ``better`` (mean − sd > 0), ``equal within the spread``
    (|mean| ≤ sd) or ``worse`` (mean + sd < 0) — with at least two seeds; "equal or better" holds
    unless ``worse``)."""
    runs = [_row(r) for r in results]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    timing: dict[tuple[str, str], list[float]] = {}
    for r, res in zip(runs, results):
        groups.setdefault((r["loss"], r["variant"]), []).append(r)
        timing.setdefault((r["loss"], r["variant"]), []).append(res.get("time_per_epoch_s"))
    table = []
    for (loss, variant), rows in groups.items():
        row: dict[str, Any] = {"loss": loss, "variant": variant, "seeds": len(rows),
                               "feature_dim": rows[0]["feature_dim"], "trainable_params": rows[0]["trainable_params"]}
        for key in TABLE_STATS:
            row[f"{key}_mean"], row[f"{key}_sd"] = _mean_sd([r.get(key) for r in rows])
        row["min_fall_min"] = min((r["min_fall"] for r in rows if r["min_fall"] is not None), default=None)
        table.append(row)
    comparison = []
    for (loss, variant), rows in groups.items():
        base = {r["seed"]: r for r in groups.get((loss, "learned"), [])}
        if variant == "learned" or not base:
            continue
        row = {"loss": loss, "variant": variant, "versus": "learned"}
        for key in SCORES:
            diffs = [r[key] - base[r["seed"]][key] for r in rows if r["seed"] in base
                     and r.get(key) is not None and base[r["seed"]].get(key) is not None]
            mean, sd = _mean_sd(diffs)
            row[f"{key}_diff_mean"], row[f"{key}_diff_sd"], row[f"{key}_pairs"] = mean, sd, len(diffs)
            if mean is None:
                verdict = None
            elif len(diffs) < 2:
                verdict = "one seed: no spread"
            elif mean - sd > 0:
                verdict = "better"
            elif mean + sd < 0:
                verdict = "worse"
            else:
                verdict = "equal within the spread"
            row[f"{key}_verdict"] = verdict
        base_params = groups[(loss, "learned")][0]["trainable_params"]
        row["trainable_params_ratio"] = rows[0]["trainable_params"] / base_params
        comparison.append(row)
    timings = [{"loss": loss, "variant": variant, "time_per_epoch_s": _mean_sd(ts)[0],
                "time_per_epoch_s_sd": _mean_sd(ts)[1]} for (loss, variant), ts in timing.items()]
    return {"runs": runs, "table": table, "comparison": comparison, "timing": timings}


def theory_references(config: MultiLabelConfig) -> dict[str, Any]:
    """The UFM's c_2 for the run's losses at the matching regularisation (``theory.json``).

    The training objective's last layer is a UFM with λ_W = ``optim.weight_decay`` and λ_H = 2 λ_h B/N
    (the penalty λ_h‖H_B‖²_F, B the batch size, N the samples; full batch: λ_H = 2 λ_h) — only with
    ``train.feature_decay`` > 0. A fixed ETF head has unit rows (α = 1 fixed). Without pairs or with
    ``feature_decay`` = 0 there is no matching UFM (the gap-implied c_2 of ``nc.jsonl`` remains).
    """
    cfg, k = config.train, config.num_tags
    per = config.data.per_set
    out: dict[str, Any] = {"lambda_w": config.optim.weight_decay, "lambda_h": None, "c2": {}}
    if cfg.feature_decay <= 0 or len(per) < 2 or per[1] == 0 or k < 3:
        out["note"] = "no matching UFM (train.feature_decay = 0 or no pairs)"
        return out
    n = config.num_train
    lam_h = 2.0 * cfg.feature_decay * (cfg.batch_size or n) / n
    out["lambda_h"] = lam_h
    for loss in cfg.losses:
        entry = {}
        for variant in cfg.variants:
            alpha = None if variant == "learned" else 1.0
            th = ufm_theory(loss, k, per, config.optim.weight_decay, lam_h, alpha=alpha)
            entry[variant] = th["tagwise_scale"].get(2)
        out["c2"][loss] = entry
    return out


def collect_results(run: RunFolder) -> list[dict[str, Any]]:
    """Every finished sub-run's ``result.json``, in the config's order (seeds, then losses, then variants)."""
    record = run.config_record() or {}
    train = record.get("train", {})
    out = []
    for seed in train.get("seeds", []):
        for loss in train.get("losses", []):
            for variant in train.get("variants", []):
                name = f"{sub_run_name(loss, variant, seed)}/{RESULT}"
                if run.exists(name):
                    out.append(run.read_json(name))
    return out


def _check_data(config: MultiLabelConfig) -> None:
    """The data source exists (real files for ml-*), before any file is written."""
    resolve_device(config.train.device)
    if config.data.dataset == "multilabel-digits":
        return
    from nclens.data.images import DEBIAN_DIRS, ENV_VAR
    from nclens.multilabel.data import IMAGE_DATASETS

    name = IMAGE_DATASETS[config.data.dataset]
    if config.data.root is not None and not Path(config.data.root).exists():
        raise FileNotFoundError(f"data.root {config.data.root!r} does not exist (nclens never downloads data)")
    from nclens.data import load_images

    try:  # reading the labels of the smaller split is quick and raises the data loader's own clear error
        load_images(name, "test", root=config.data.root)
    except FileNotFoundError as exc:
        hint = f" (set data.root, ${ENV_VAR}, or install it: {DEBIAN_DIRS.get(name, '')})"
        raise type(exc)(f"{exc}{hint}" if name in DEBIAN_DIRS else str(exc)) from None


@register_experiment
class MultiLabelExperiment(Experiment):
    """Train the variants × losses × seeds, measure MLab NC during training (module docstring)."""

    kind = "multilabel"
    config_class = MultiLabelConfig
    description = "learned vs fixed-ETF vs fixed-ETF+D=K heads, PAL losses, MLab NC over training (Li et al. 2024)"
    resume_ignores = ("train.progress", "train.device")
    timing_fields = ("seconds", "time_per_epoch_s", "time_per_epoch_s_sd")

    def check(self, config: MultiLabelConfig) -> None:
        _check_data(config)

    def run(self, config: MultiLabelConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        cfg = config.train
        run.write_json("theory.json", theory_references(config))
        results, sizes = [], {}
        for seed in cfg.seeds:
            data = load_data(config.data, seed)
            sizes = {"n_train": int(data.x_train.shape[0]), "n_test": int(data.x_test.shape[0]),
                     "image_shape": list(data.x_train.shape[1:])}
            for loss in cfg.losses:
                for variant in cfg.variants:
                    sub = run.subfolder(sub_run_name(loss, variant, seed))
                    res = train_one(config, sub, loss=loss, variant=variant, seed=seed, data=data, resume=resume,
                                    progress=progress and cfg.progress)
                    results.append(res)
                    fin = res["final"]
                    if run.writer:
                        nan = float("nan")
                        log(f"{loss} {variant} seed {seed}: test mAP {fin.get('test_map', nan):.4f}, "
                            f"IoU {fin.get('test_iou', nan):.4f}, c_2 {fin.get('tagwise_scale_m2', nan):.3f}")
        agg = aggregate(results)
        run.write_csv("runs.csv", agg["runs"])
        run.write_csv("table.csv", agg["table"])
        if agg["comparison"]:
            run.write_csv("comparison.csv", agg["comparison"])
        return {**sizes, "table": agg["table"], "comparison": agg["comparison"], "timing": agg["timing"],
                "runs": agg["runs"]}

    def figures(self, run: RunFolder) -> dict[str, Path]:
        from nclens.multilabel.figures import write_training_figures

        return write_training_figures(run)

    def report(self, run: RunFolder) -> ReportContent:
        from nclens.multilabel.figures import training_report

        return training_report(run)

    def summary_text(self, run: RunFolder) -> str:
        from nclens.multilabel.figures import training_summary_text

        return training_summary_text(run)


# ---------------------------------------------------------------------------------------------- UFM studies
SOLUTIONS = "solutions.jsonl"


def _geometry(sol: Any) -> dict[str, Any]:
    """Rotation-invariant geometry of a solution: W Wᵀ, the Gram of the label-set means, b."""
    y, h = sol.labels, sol.features
    codes, inverse = torch.unique(y, dim=0, return_inverse=True)
    counts = torch.bincount(inverse).to(h.dtype)
    means = torch.zeros(codes.shape[0], h.shape[1], dtype=h.dtype).index_add_(0, inverse, h) / counts[:, None]
    return {"gram_w": (sol.weight @ sol.weight.T).tolist(), "gram_sets": (means @ means.T).tolist(),
            "bias": sol.bias.tolist()}


def _max_abs_diff(a: Any, b: Any) -> float:
    return float((torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)).abs().max())


def study_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (loss, λ): the restarts' objective spread and geometry differences, c_m vs the theory."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["loss"], r["lambda"]), []).append(r)
    rows = []
    for (loss, lam), recs in groups.items():
        first = recs[0]
        objs = [r["objective"] for r in recs]
        row: dict[str, Any] = {
            "loss": loss, "lambda": lam, "restarts": len(recs),
            "objective_min": min(objs), "objective_max": max(objs), "objective_spread": max(objs) - min(objs),
            "grad_norm_max": max(r["grad_norm"] for r in recs),
            "converged_all": all(r["converged"] for r in recs),
            "gram_w_max_diff": max(_max_abs_diff(r["geometry"]["gram_w"], first["geometry"]["gram_w"]) for r in recs),
            "gram_sets_max_diff": max(_max_abs_diff(r["geometry"]["gram_sets"], first["geometry"]["gram_sets"])
                                      for r in recs),
            "bias_max_abs": max(max(abs(b) for b in r["geometry"]["bias"]) for r in recs),
        }
        metrics = sorted({k for r in recs for k in r["metrics"]})
        for key in metrics:
            vals = [r["metrics"].get(key) for r in recs]
            vals = [v for v in vals if isinstance(v, (int, float))]
            if key.startswith("tagwise_scale_m") and not key.endswith("_std"):
                row[f"{key}_mean"], row[f"{key}_restart_spread"] = statistics.fmean(vals), max(vals) - min(vals)
            elif key in ("nc1", "nc1_sets", "nc2_etf", "nc2_etf_w", "nc3_duality", "tagwise_residual_m2",
                         "tagwise_angle_li", "tagwise_angle_ratio", "tagwise_scale_m2_std"):
                row[f"{key}_max"] = max(vals)
        theory = first.get("theory")
        if theory:
            row["theory_objective"] = theory["objective"]
            row["objective_abs_err_max"] = max(abs(r["objective"] - theory["objective"]) for r in recs)
            for m, c in theory["tagwise_scale"].items():
                row[f"theory_tagwise_scale_m{m}"] = c
                got = [r["metrics"].get(f"tagwise_scale_m{m}") for r in recs]
                row[f"tagwise_scale_m{m}_abs_err_max"] = max(abs(g - c) for g in got if g is not None)
        zhu = first.get("zhu_closed_form")
        if zhu:
            row["zhu_objective"], row["zhu_w_norm"], row["zhu_h_norm"] = zhu["objective"], zhu["w_norm"], zhu["h_norm"]
            for key in ("objective", "w_norm", "h_norm"):
                row[f"zhu_{key}_abs_err_max"] = max(r["zhu_closed_form"]["check"][f"{key}_abs_err"] for r in recs)
        by_count = first.get("tagwise_scale_by_count")
        if by_count:
            for m, groups_m in by_count.items():
                for count, values in groups_m.items():
                    row[f"c_m{m}_count{count}_mean"] = statistics.fmean(values)
                    row[f"c_m{m}_count{count}_spread"] = max(values) - min(values)
        rows.append(row)
    return rows


@register_experiment
class UFMStudyExperiment(Experiment):
    """UFM studies: losses × λ × restarts, each solved to machine precision and compared with the theory."""

    kind = "multilabel-ufm"
    config_class = UFMStudyConfig
    description = "UFM of the PAL losses: restarts (uniqueness), λ sweeps, imbalanced counts vs the theory"
    timing_fields = ("seconds",)

    def run(self, config: UFMStudyConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        done = {r["key"] for r in run.read_jsonl(SOLUTIONS)} if resume else set()
        if not resume:
            run.keep_jsonl(SOLUTIONS, lambda r: False)
        for case in config.cases():
            if case["key"] in done:
                continue
            lam = case["lambda"]
            changes: dict[str, Any] = {"loss": case["loss"], "seed": case["seed"]}
            if lam is not None:
                changes.update(wd_w=lam, wd_h=lam, wd_b=lam)
            ucfg = dataclasses.replace(config.ufm, **changes)
            started = time.perf_counter()
            sol = solve_ufm(ucfg, progress=progress)
            report = solution_report(sol)
            record = {
                "key": case["key"], "loss": case["loss"], "lambda": lam, "restart": case["restart"],
                "seed": case["seed"], "objective": sol.objective, "loss_value": sol.loss,
                "grad_norm": sol.grad_norm, "iterations": sol.iterations, "newton_steps": sol.newton_steps,
                "converged": sol.converged, "metrics": dict(sol.metrics), "geometry": _geometry(sol),
                "theory": report.get("theory"), "zhu_closed_form": report.get("zhu_closed_form"),
                "tagwise_scale_by_count": report.get("tagwise_scale_by_count"),
                "seconds": time.perf_counter() - started,
            }
            run.append_jsonl(SOLUTIONS, [record])
            if run.writer:
                c2 = sol.metrics.get("tagwise_scale_m2")
                log(f"{case['key']}: objective {sol.objective:.12g}, |grad| {sol.grad_norm:.2e}"
                    + (f", c_2 {c2:.10g}" if c2 is not None else ""))
        rows = study_rows(run.read_jsonl(SOLUTIONS))
        run.write_csv("study.csv", rows)
        return {"rows": rows}

    def figures(self, run: RunFolder) -> dict[str, Path]:
        from nclens.multilabel.figures import write_ufm_figures

        return write_ufm_figures(run)

    def report(self, run: RunFolder) -> ReportContent:
        from nclens.multilabel.figures import ufm_report

        return ufm_report(run)

    def summary_text(self, run: RunFolder) -> str:
        from nclens.multilabel.figures import ufm_summary_text

        return ufm_summary_text(run)
