"""The OOD-control experiment (Harun, Gallardo & Kanan, ICML 2025), kind ``ood``.

Four variants of one network, trained by the one :class:`~nclens.train.Trainer` with
CE (label smoothing) + α·KoLeo (a ``step_fn``), evaluated layer by layer from frozen features
(:mod:`nclens.ood.evaluation`):

=============  ===============================================  ==================================
variant        training                                           layers evaluated
=============  ===============================================  ==================================
baseline       encoder → linear classifier                        encoder (+ every block/stage)
entropy        + α·KoLeo on the encoder's pooled feature          encoder (+ …)
projector      encoder → frozen ETF projector → classifier        + projector (before / after L2)
both           projector + KoLeo                                  + projector (before / after L2)
=============  ===============================================  ==================================

Jobs (variant, α, seed) are sub-runs ``jobs/<variant>_a<α>_s<seed>/`` of the run folder (the trainer's
``checkpoint.pt`` and ``history.jsonl``: exact resume inside a job); each finished job appends one
*done-cell* to ``cells.jsonl`` (its per-layer rows and detection rows), and a resumed run skips the
jobs that have a cell. Then ``results.csv`` (every seed, variant, α, layer), ``detection.csv`` (every
score × OOD set), ``summary.csv`` (mean ± std over seeds), ``correlations.json`` (over variant means,
over all points, and across the layers of each network — the paper's Fig. 1); ``summary.json`` last
(the runner). ``nclens report`` draws the figures from these files.

Example:
    >>> import tempfile
    >>> from nclens.runs.config import override_config
    >>> cfg = override_config(OODConfig(), ["train.epochs=1", "seeds=[0]", "variants=[baseline]",
    ...                                     "eval.scores=[energy]", "model.hidden=[16]", "model.feature_dim=8"])
    >>> out = run_ood(cfg, tempfile.mkdtemp() + "/run", progress=False)
    >>> [(r["variant"], r["layer"]) for r in RunFolder(out).read_jsonl("cells.jsonl")[0]["rows"]]
    [('baseline', 'encoder')]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nclens.core.env import resolve_device, seed_everything
from nclens.nn.regularizers import koleo_loss
from nclens.ood.analysis import correlations, label, layer_correlations, summarise
from nclens.ood.config import VARIANTS, OODConfig
from nclens.ood.networks import ConvEncoder, MLPEncoder, OODNet
from nclens.ood.protocols import OODData, load_protocol
from nclens.runs.experiment import Experiment, ReportContent, RunConfig, register_experiment, run
from nclens.runs.folder import RunFolder
from nclens.train import TensorData, Trainer

__all__ = ["OODExperiment", "evaluate_frozen", "build_model", "koleo_step", "job_name", "run_ood",
           "CELLS", "SUMMARY_KEYS", "OODConfig"]

CELLS = "cells.jsonl"
#: the per-layer keys averaged over seeds in summary.csv
SUMMARY_KEYS = ("nc1", "nc1_trace", "nc2_etf_w", "nc3_etf", "nc4_bias", "nc4_ncc_mismatch", "auroc", "aupr", "fpr95",
                "fpr95_official", "dterr", "auout", "transfer_acc", "transfer_acc_full", "transfer_acc_best_epoch",
                "transfer_draw_std", "id_probe_acc", "id_head_acc", "effective_rank")


def build_model(cfg: OODConfig, data: OODData, variant: str) -> OODNet:
    """The network of ``variant`` for ``data`` (the caller seeds first)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {list(VARIANTS)}")
    m = cfg.model
    if m.arch == "cnn":
        if len(data.input_shape) != 3:
            raise ValueError(f"model.arch='cnn' needs images (C, H, W), got inputs of shape {data.input_shape}")
        encoder: torch.nn.Module = ConvEncoder(data.input_shape[0], m.channels, m.batchnorm)
    else:
        encoder = MLPEncoder(int(torch.tensor(data.input_shape).prod()), m.hidden, m.feature_dim, m.batchnorm)
    return OODNet(encoder, data.num_classes, projector=VARIANTS[variant][1], expansion=m.projector_expansion)


def koleo_step(alpha: float, label_smoothing: float, eps: float = 1e-8):
    """The trainer's ``step_fn``: CE(z, y; label smoothing) + α·KoLeo(encoder feature).

    ``reduction="mean"`` (one process): mean CE + α·KoLeo(batch). ``"sum"`` (a DDP share):
    Σ CE + α·n·KoLeo(share) — the nearest neighbours are then searched within the share.
    """

    def step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str) -> tuple[torch.Tensor, int]:
        logits = net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction=reduction)
        n = int(y.shape[0])
        if alpha > 0:
            feature = getattr(net, "module", net).feature  # (B, d) the encoder's pooled feature of this forward
            reg = koleo_loss(feature, eps=eps)
            loss = loss + alpha * (reg if reduction == "mean" else reg * n)
        return loss, n

    return step


def job_name(variant: str, alpha: float, seed: int) -> str:
    """The sub-run folder name of a job: ``<variant>_a<α>_s<seed>``."""
    return f"{variant}_a{alpha:g}_s{seed}"


def _train_job(cfg: OODConfig, data: OODData, variant: str, alpha: float, seed: int, run: RunFolder, *,
               resume: bool, progress: bool) -> OODNet:
    sub = run.subfolder(f"jobs/{job_name(variant, alpha, seed)}")
    seed_everything(seed)
    model = build_model(cfg, data, variant)
    trainer = Trainer(
        model, TensorData(data.x_train, data.y_train, cfg.train.batch_size), optim=cfg.optim, epochs=cfg.train.epochs,
        seed=seed, run=sub, step_fn=koleo_step(alpha, cfg.train.label_smoothing, cfg.train.koleo_eps),
        evaluate={"test": (data.x_test, data.y_test)}, label_smoothing=cfg.train.label_smoothing,
        device=cfg.train.device, checkpoint_every=cfg.train.checkpoint_every, progress=progress,
        name=f"{variant} α={alpha:g} seed {seed}" if VARIANTS[variant][0] else f"{variant} seed {seed}",
    )
    return trainer.fit(resume=resume and sub.has_checkpoint()).model


def _check(cfg: OODConfig) -> OODData:
    resolve_device(cfg.train.device)
    data = load_protocol(cfg.data)
    n = int(data.x_train.shape[0])
    if n % cfg.train.batch_size == 1:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} leaves a last batch of 1 of the {n} training "
                         "samples "
                         "(BatchNorm and KoLeo need >= 2); choose another batch size")
    if cfg.transfer.shots_per_class is not None:
        for name, (_, ay, _, _) in data.transfer.items():
            fewest = int(torch.bincount(ay).min())
            if cfg.transfer.shots_per_class > fewest:
                raise ValueError(f"transfer.shots_per_class={cfg.transfer.shots_per_class} exceeds the {fewest} "
                                 "training "
                                 f"samples of the smallest class of transfer task {name!r}")
    return data


def run_jobs(cfg: OODConfig, run: RunFolder, *, resume: bool, progress: bool,
             log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Train and evaluate every job not done yet (done-cells in ``cells.jsonl``), then write the tables."""
    from nclens.ood.evaluation import evaluate_model

    data = _check(cfg)
    done = {(c["variant"], float(c["alpha"]), c["seed"]): c for c in run.read_jsonl(CELLS)} if resume else {}
    if not resume and run.writer:
        run.keep_jsonl(CELLS, lambda r: False)
    jobs = cfg.jobs()
    for i, (variant, alpha, seed) in enumerate(jobs):
        if (variant, alpha, seed) in done:
            continue
        started = time.perf_counter()
        if variant == "frozen":
            layer_rows, det_rows = evaluate_frozen(cfg, seed)
        else:
            model = _train_job(cfg, data, variant, alpha, seed, run, resume=resume, progress=progress)
            layer_rows, det_rows = evaluate_model(model, data, cfg, seed=seed, device=resolve_device(cfg.train.device))
        meta = {"variant": variant, "alpha": alpha, "seed": seed}
        cell = {**meta, "rows": [{**meta, **r} for r in layer_rows], "detection": [{**meta, **r} for r in det_rows],
                "seconds": time.perf_counter() - started}
        run.append_jsonl(CELLS, [cell])
        done[(variant, alpha, seed)] = cell
        head = {r["layer"]: r for r in layer_rows}
        if variant == "frozen":
            head = {r["layer"]: r for r in layer_rows[-1:]}
        log(f"[{i + 1}/{len(jobs)}] " + "; ".join(
            f"{label({'variant': variant, 'alpha': alpha, 'layer': name})}: NC1 {r['nc1']:.3g}, AUROC {r['auroc']:.3f}"
            + (f", transfer {r['transfer_acc']:.3f}" if "transfer_acc" in r else "")
            for name, r in head.items() if name in ("encoder", "projector") or variant == "frozen"))
    return _write_tables(run, [done[job] for job in jobs])


def _write_tables(run: RunFolder, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """results/detection/summary CSVs and correlations.json from the done-cells; the results for summary.json."""
    rows = [r for c in cells for r in c["rows"]]
    detection = [r for c in cells for r in c["detection"]]
    summary = summarise(rows, SUMMARY_KEYS)
    main_layers = [s for s in summary if s["layer"] in ("encoder", "projector", "projector_l2")] or summary
    main_rows = [r for r in rows if r["layer"] in ("encoder", "projector")] or rows  # a frozen network: every layer
    corr = {
        "over_variant_layer_means": correlations([s for s in main_layers if s["layer"] != "projector_l2"]),
        "over_all_points": correlations(main_rows),
        "across_layers": layer_correlations([r for r in rows if r["layer"] != "projector_l2"]),
    }
    run.write_csv("results.csv", rows)
    run.write_csv("detection.csv", detection)
    run.write_csv("summary.csv", summary)
    run.write_json("correlations.json", corr)
    keys = ("variant", "alpha", "layer", "seeds", "nc1", "nc1_std", "nc4_bias", "auroc", "auroc_std", "fpr95", "dterr",
            "auout", "transfer_acc", "transfer_acc_std", "transfer_acc_full", "id_head_acc")
    return {
        "jobs": len(cells),
        "summary": [{k: s[k] for k in keys if k in s} for s in main_layers],
        "correlations": {scope: {k: v for k, v in c.items() if k != "networks"} for scope, c in corr.items()},
    }


def evaluate_frozen(cfg: OODConfig, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Variant ``frozen``: every layer of the feature file evaluated as it is (no training), for one seed.

    The seed moves the per-class train/test split of the file's rows and every probe's seed.
    """
    from nclens.ood.evaluation import evaluate_layers
    from nclens.ood.protocols import feature_protocol

    per_layer = feature_protocol(cfg.data, None, seed)
    layers = list(per_layer)
    first = per_layer[layers[0]]

    def pick(get):
        return {name: get(per_layer[name]) for name in layers}

    ood_f = {s: pick(lambda d, s=s: d.ood[s]) for s in first.ood}
    tf = {t: (pick(lambda d, t=t: d.transfer[t][0]), first.transfer[t][1], pick(lambda d, t=t: d.transfer[t][2]),
              first.transfer[t][3]) for t in first.transfer}
    return evaluate_layers(layers, pick(lambda d: d.x_train), first.y_train, pick(lambda d: d.x_test), first.y_test,
                           ood_f, tf, cfg, seed=seed)


@register_experiment
class OODExperiment(Experiment):
    """Train the four NC-control variants and evaluate NC, OOD detection and transfer per layer."""

    kind = "ood"
    config_class = OODConfig
    description = ("NC control for OOD detection and transfer: baseline / +KoLeo / +ETF projector / both "
                   "(Harun et al. 2025)")
    resume_ignores = ("train.progress", "train.device")
    timing_fields = ("seconds",)

    def check(self, config: OODConfig) -> None:
        _check(config)

    def run(self, config: OODConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        return run_jobs(config, run, resume=resume, progress=progress and config.train.progress, log=log)

    def figures(self, run: RunFolder) -> dict[str, Path]:
        from nclens.ood.figures import write_figures

        return write_figures(run)

    def report(self, run: RunFolder) -> ReportContent:
        from nclens.ood.figures import report_content

        return report_content(run)

    def summary_text(self, run: RunFolder) -> str:
        from nclens.ood.figures import summary_table

        return summary_table(run)


def run_ood(config: OODConfig, out: str | os.PathLike[str] | None = None, *, resume: bool = False,
            progress: bool = True) -> Path:
    """Run ``config`` through the one runner (run-folder rules, ``summary.json``); returns the folder."""
    spec = RunConfig(OODExperiment(), config, Path("<python>"), {})
    return run(spec, out=out, resume=resume, progress=progress, log=lambda s: None)
