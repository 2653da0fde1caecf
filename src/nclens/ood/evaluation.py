"""Evaluation of a trained network, layer by layer: NC1–NC4, OOD detection and transfer from frozen features.

For every evaluated layer (:func:`nclens.ood.networks.feature_layers`; outputs pooled as the official
hooks do), with the ID *training* features h and labels y:

* **NC** — :class:`~nclens.core.stats.ClassStats` of h (float64) and the registry's metrics
  (:func:`~nclens.core.metrics.compute_metrics`) with the layer's probe (W, b) as the classifier:
  NC1 = Tr(Σ_W Σ_B⁺)/K, NC2 ``nc2_etf_w``, NC3 ``nc3_etf`` (the official ``compute_ETF`` /
  ``compute_W_H_relation``), the official NC4 ``nc4_bias`` = ‖W μ_G + b‖ and nclens's
  ``nc4_ncc_mismatch`` (the probe's prediction vs the nearest class mean, on the training features);
* **the probe** — ``eval.probe``: the paper's AdamW label-smoothed probe or scikit-learn's logistic
  regression; as in the official ``nc_eval/linear_probe_nc.py``, the probe of the projector is trained
  on the L2-*normalised* projector output while its collapse is measured *before* normalisation
  (row ``projector``); row ``projector_l2`` measures after it;
* **detection** — the probe's logits (energy, MSP, max-logit) and the probe's input features
  (Mahalanobis with the ID Σ_W, NCI, NECO) of the ID test set vs every OOD set: AUROC / AUPR / FPR95
  (scikit-learn, ``eval.positive`` convention) and the official FPR / DTERR / AUIN / AUOUT
  (:func:`~nclens.ood.scores.official_detection_metrics`) of the headline score;
* **transfer** — probe accuracy on each transfer task, full split and few-shot (:mod:`nclens.ood.transfer`).

Every probe is seeded from the job's seed and the layer's index, so an evaluation is a pure function of
the trained weights (a resumed run writes the same rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nclens.core.metrics import compute_metrics
from nclens.core.metrics.multiclass import ncc_predict
from nclens.core.stats import ClassStats
from nclens.ood.config import OODConfig
from nclens.ood.networks import OODNet, feature_layers, forward_features
from nclens.ood.probes import make_probe
from nclens.ood.protocols import OODData
from nclens.ood.scores import (
    NECO,
    Mahalanobis,
    energy_score,
    max_logit_score,
    msp_score,
    nci_score,
    official_detection_metrics,
    ood_metrics,
)
from nclens.ood.transfer import transfer_accuracy

__all__ = ["evaluate_model", "evaluate_layers", "NC_KEYS"]

#: the NC metrics reported per layer
NC_KEYS = ("nc1", "nc1_trace", "cdnv", "nc2_etf", "nc2_etf_w", "nc3_etf", "nc3_duality", "nc4_bias", "effective_rank")


def _probe_factory(cfg: OODConfig, base_seed: int):
    ev = cfg.eval

    def build(r: int = 0):
        return make_probe(ev.probe, seed=base_seed + 7919 * r, C=ev.probe_c, max_iter=ev.probe_max_iter,
                          lr=ev.adamw.lr, epochs=ev.adamw.epochs, batch_size=ev.adamw.batch_size,
                          weight_decay=ev.adamw.weight_decay, label_smoothing=ev.adamw.label_smoothing)

    return build


def _score(name: str, feats: Tensor, logits: Tensor, fitted: dict[str, Any], nci_alpha: float) -> Tensor:
    if name == "energy":
        return energy_score(logits)
    if name == "msp":
        return msp_score(logits)
    if name == "max_logit":
        return max_logit_score(logits)
    if name == "mahalanobis":
        return fitted["mahalanobis"].score(feats)
    if name == "nci":
        return nci_score(feats, fitted["probe"].weight_, fitted["probe"].bias_, fitted["mu_g"], alpha=nci_alpha)
    return fitted["neco"].score(feats, logits)


def evaluate_model(model: OODNet, data: OODData, cfg: OODConfig, *, seed: int,
                   device: torch.device | str = "cpu") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate every layer of a trained model (see the module docstring).

    Returns:
        ``(layer_rows, detection_rows)``: one row per layer (NC metrics, headline detection of
        ``eval.detection_score``, transfer, probe accuracy), and one row per (layer, score, OOD set).
    """
    device = torch.device(device)
    rows = feature_layers(model, per_layer=cfg.eval.per_layer)
    bs = cfg.eval.batch_size
    tr_f, _ = forward_features(model, data.x_train, rows, bs, device)
    te_f, te_logits = forward_features(model, data.x_test, rows, bs, device)
    ood_f = {name: forward_features(model, x, rows, bs, device)[0] for name, x in data.ood.items()}
    tf = {name: (forward_features(model, a, rows, bs, device)[0], ay,
                 forward_features(model, b, rows, bs, device)[0], by)
          for name, (a, ay, b, by) in data.transfer.items()}
    head_acc = float((te_logits.argmax(1) == data.y_test).double().mean())
    return evaluate_layers([r[0] for r in rows], tr_f, data.y_train, te_f, data.y_test, ood_f, tf, cfg, seed=seed,
                           head_acc=head_acc)


def evaluate_layers(layers: list[str], tr_f: dict[str, Tensor], y_tr: Tensor, te_f: dict[str, Tensor], y_te: Tensor,
                    ood_f: dict[str, dict[str, Tensor]],
                    tf: dict[str, tuple[dict[str, Tensor], Tensor, dict[str, Tensor], Tensor]], cfg: OODConfig, *,
                    seed: int, head_acc: float | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Evaluate the features of ``layers`` (ID train/test, OOD sets, transfer tasks; see the module docstring).

    ``tr_f[layer]`` is (N, D_layer); rows named ``projector`` / ``projector_l2`` get the official
    probe on L2-normalised features. Used by :func:`evaluate_model` and for frozen feature files.
    """
    ev, tc = cfg.eval, cfg.transfer
    k = int(y_tr.max()) + 1
    layer_rows: list[dict[str, Any]] = []
    det_rows: list[dict[str, Any]] = []
    for index, row_name in enumerate(layers):
        projector_row = row_name in ("projector", "projector_l2")

        def probe_input(x: Tensor, normalise: bool = projector_row) -> Tensor:
            return F.normalize(x, dim=1, eps=1e-8) if normalise else x  # the official probe normalises projection_head2

        base_seed = 1_000 * seed + index
        build = _probe_factory(cfg, base_seed)
        h = tr_f[row_name]
        stats = ClassStats(num_classes=k).update(h.double(), y_tr)
        p_tr, p_te = probe_input(h), probe_input(te_f[row_name])
        probe = build().fit(p_tr, y_tr)
        metrics = compute_metrics(stats, probe.weight_, bias=probe.bias_)
        predicted = torch.from_numpy(np.asarray(probe.predict(p_tr)))
        mismatch = float((predicted != ncc_predict(h.double(), stats.means)).double().mean())
        # the feature scores live in the probe's input space (for the projector: the normalised output)
        p_stats = stats if not projector_row else ClassStats(num_classes=k).update(p_tr.double(), y_tr)
        fitted: dict[str, Any] = {"probe": probe, "mu_g": p_stats.sums.sum(0) / p_stats.total}
        if "mahalanobis" in ev.scores:
            fitted["mahalanobis"] = Mahalanobis().fit(p_stats)
        if "neco" in ev.scores:
            fitted["neco"] = NECO().fit(p_tr, y_tr)
        id_logits = probe.logits(p_te)
        per_score: dict[str, dict[str, dict[str, float]]] = {}
        official: dict[str, dict[str, float]] = {}
        for score in ev.scores:
            s_id = _score(score, p_te, id_logits, fitted, ev.nci_alpha)
            per_score[score] = {}
            for set_name, feats in ood_f.items():
                f = probe_input(feats[row_name])
                s_ood = _score(score, f, probe.logits(f), fitted, ev.nci_alpha)
                m = ood_metrics(s_id, s_ood, positive=ev.positive)
                off = official_detection_metrics(s_id, s_ood)
                per_score[score][set_name] = m
                if score == ev.detection_score:
                    official[set_name] = off
                det_rows.append({"layer": row_name, "score": score, "ood_set": set_name, **m,
                                 **{f"official_{key}": v for key, v in off.items()}})
        transfer, transfer_full, transfer_std, transfer_best = {}, {}, {}, {}
        for name, (a, ay, b, by) in tf.items():
            a_f, b_f = a[row_name], b[row_name]  # transfer probes read the layer's raw output (official ood_gen)
            full_probe = build(0)
            if ev.probe == "adamw":
                full_probe.fit(a_f, ay, eval_set=(b_f, by))
                transfer_full[name] = full_probe.score(b_f, by)
                transfer_best[name] = full_probe.best_accuracy_
            else:
                transfer_full[name] = full_probe.fit(a_f, ay).score(b_f, by)
            if tc.shots_per_class is None:
                transfer[name], transfer_std[name] = transfer_full[name], 0.0
            else:
                transfer[name], transfer_std[name] = transfer_accuracy(
                    a_f, ay, b_f, by, shots_per_class=tc.shots_per_class, draws=tc.draws, seed=tc.seed,
                    probe=lambda r, build=build: build(r + 1))
        headline = per_score[ev.detection_score]
        row: dict[str, Any] = {"layer": row_name, "depth": index, "dim": int(h.shape[1])}
        row.update({key: float(metrics[key]) for key in NC_KEYS if key in metrics})
        row["nc4_ncc_mismatch"] = mismatch
        row["id_probe_acc"] = probe.score(p_te, y_te)
        if head_acc is not None:
            row["id_head_acc"] = head_acc
        for key in ("auroc", "aupr", "fpr95"):
            row[key] = float(np.mean([m[key] for m in headline.values()]))
        for key in ("dterr", "auout", "auin"):
            row[key] = float(np.mean([m[key] for m in official.values()]))
        row["fpr95_official"] = float(np.mean([m["fpr"] for m in official.values()]))
        for set_name, m in headline.items():
            row[f"auroc_{set_name}"] = m["auroc"]
            row[f"fpr95_{set_name}"] = m["fpr95"]
        for score in ev.scores:
            row[f"auroc_mean_{score}"] = float(np.mean([m["auroc"] for m in per_score[score].values()]))
        if transfer:
            row["transfer_acc"] = float(np.mean(list(transfer.values())))
            row["transfer_acc_full"] = float(np.mean(list(transfer_full.values())))
            row["transfer_draw_std"] = float(np.mean(list(transfer_std.values())))
            if transfer_best:
                row["transfer_acc_best_epoch"] = float(np.mean(list(transfer_best.values())))
            for name in transfer:
                row[f"transfer_acc_{name}"] = transfer[name]
                row[f"transfer_acc_full_{name}"] = transfer_full[name]
        layer_rows.append(row)
    return layer_rows, det_rows
