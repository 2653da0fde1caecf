"""Summaries and correlations of the OOD experiment's rows (pure functions of the rows; no training).

* :func:`summarise` — mean and std over seeds per (variant, α, layer);
* :func:`correlations` — Pearson r (two-sided p) of NC1 with detection and transfer over a set of points;
* :func:`layer_correlations` — the paper's Fig. 1 view: the correlation across the *layers of one
  network*, for every trained network (variant, α, seed), then its mean ± sd and sign counts.

Signs expected under Harun, Gallardo & Kanan (ICML 2025) — lower NC1 (more collapse) ⇒ better
detection and worse transfer: r(NC1, AUROC) < 0, r(NC1, FPR95) > 0, r(NC1, transfer accuracy) > 0,
r(NC1, transfer error) < 0. Their Fig. 1 (VGG17 on ImageNet-100, across layers) gives R = 0.77 for
detection and R = −0.60 for generalisation; read as NC1 against the detection *error* (FPR) and the
generalisation *error*, the signs are those of ``fpr95`` and ``transfer_err`` here (the paper's text
says only "positive … with the degree of neural collapse (NC1)" and "negative", so this reading of
the axes is ours).

Example:
    >>> rows = [{"variant": "baseline", "alpha": 0.0, "seed": s, "layer": "encoder", "nc1": 0.1 * (s + 1)}
    ...         for s in range(3)]
    >>> round(summarise(rows, keys=("nc1",))[0]["nc1"], 12)
    0.2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nclens.ood.config import VARIANTS

__all__ = ["summarise", "correlations", "layer_correlations", "label", "EXPECTED_SIGNS", "PAPER_FIG1"]

#: key -> expected sign of r(NC1, key) under the paper's claim
EXPECTED_SIGNS = {"auroc": -1, "fpr95": 1, "transfer_acc": 1, "transfer_err": -1, "transfer_acc_full": 1}
#: the paper's Fig. 1 across layers (our reading: NC1 vs detection error, NC1 vs generalisation error)
PAPER_FIG1 = {"fpr95": 0.77, "transfer_err": -0.60}


def _order_key(variant: str, alpha: Any, layer_depth: int) -> tuple:
    order = list(VARIANTS)
    return order.index(variant) if variant in order else len(order), -1.0 if alpha is None else alpha, layer_depth


def summarise(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and std (population) over seeds per (variant, α, layer), in variant, α, depth order."""
    groups: dict[tuple[str, Any, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r.get("alpha"), r["layer"]), []).append(r)
    out = []
    for (variant, alpha, layer), rs in sorted(groups.items(),
                                              key=lambda it: _order_key(it[0][0], it[0][1], it[1][0].get("depth", 0))):
        entry: dict[str, Any] = {"variant": variant, "alpha": alpha, "layer": layer, "depth": rs[0].get("depth", 0),
                                 "seeds": len(rs)}
        for key in keys:
            vals = np.array([r[key] for r in rs if r.get(key) is not None], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            entry[key] = float(vals.mean()) if vals.size else float("nan")
            entry[f"{key}_std"] = float(vals.std()) if vals.size else float("nan")
        out.append(entry)
    return out


def label(entry: Mapping[str, Any], layer: bool = True) -> str:
    """``variant [α=…] / layer`` (α shown for the KoLeo variants)."""
    text = entry["variant"]
    if entry.get("alpha") is not None and VARIANTS.get(entry["variant"], (False, False))[0]:
        text += f" α={entry['alpha']:g}"
    return f"{text} / {entry['layer']}" if layer else text


def _with_errors(point: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(point)
    if out.get("transfer_acc") is not None:
        out["transfer_err"] = 1.0 - float(out["transfer_acc"])
    return out


def correlations(points: Sequence[Mapping[str, Any]], keys: Sequence[str] = tuple(EXPECTED_SIGNS)) -> dict[str, Any]:
    """Pearson r and two-sided p of NC1 (and of log NC1) with each key, over ``points``.

    A key with fewer than 3 finite points, or without variance, gives NaN and ``agrees = None``.
    """
    from scipy.stats import pearsonr

    pts = [_with_errors(p) for p in points]
    nc1 = np.array([p.get("nc1", np.nan) for p in pts], dtype=np.float64)
    out: dict[str, Any] = {"n_points": len(pts)}
    for key in keys:
        sign = EXPECTED_SIGNS.get(key, 0)
        y = np.array([p.get(key, np.nan) if p.get(key) is not None else np.nan for p in pts], dtype=np.float64)
        ok = np.isfinite(y) & np.isfinite(nc1) & (nc1 > 0)
        if ok.sum() < 3 or np.std(y[ok]) == 0 or np.std(nc1[ok]) == 0:
            out[key] = {"r": float("nan"), "p": float("nan"), "r_log": float("nan"), "p_log": float("nan"),
                        "n": int(ok.sum()), "expected_sign": sign, "agrees": None}
            continue
        r, p = pearsonr(nc1[ok], y[ok])
        r_log, p_log = pearsonr(np.log(nc1[ok]), y[ok])
        out[key] = {"r": float(r), "p": float(p), "r_log": float(r_log), "p_log": float(p_log), "n": int(ok.sum()),
                    "expected_sign": sign, "agrees": bool(np.sign(r) == sign) if sign else None}
    return out


def layer_correlations(rows: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("fpr95", "auroc", "transfer_err",
                                                                                  "transfer_acc")) -> dict[str, Any]:
    """The correlation across the layers of each network (variant, α, seed), then over networks.

    Returns ``{"networks": [{variant, alpha, seed, n_layers, <key>: {r, p, ...}}], "summary": {key: {mean_r,
    sd_r, n_networks, n_agree, paper_r}}, "pooled": correlations(all rows)}``.
    """
    nets: dict[tuple[str, Any, Any], list[Mapping[str, Any]]] = {}
    for r in rows:
        nets.setdefault((r["variant"], r.get("alpha"), r.get("seed")), []).append(r)
    per_net = []
    ordered = sorted(nets.items(), key=lambda it: (_order_key(it[0][0], it[0][1], 0), it[0][2]))
    for (variant, alpha, seed), rs in ordered:
        corr = correlations(rs, keys)
        per_net.append({"variant": variant, "alpha": alpha, "seed": seed, "n_layers": len(rs),
                        **{k: corr[k] for k in keys}})
    summary = {}
    for key in keys:
        rs = np.array([n[key]["r"] for n in per_net], dtype=np.float64)
        rs = rs[np.isfinite(rs)]
        sign = EXPECTED_SIGNS.get(key, 0)
        summary[key] = {"mean_r": float(rs.mean()) if rs.size else float("nan"),
                        "sd_r": float(rs.std()) if rs.size else float("nan"), "n_networks": int(rs.size),
                        "n_agree": int((np.sign(rs) == sign).sum()) if sign else None,
                        "expected_sign": sign, "paper_r": PAPER_FIG1.get(key)}
    return {"networks": per_net, "summary": summary, "pooled": correlations(rows, keys)}
