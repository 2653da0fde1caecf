"""Several seeds of one intermediate-NC experiment: the per-layer table as mean ± sd, a depth-trend statistic
per seed, and the fixed-ETF table over seeds — computed from the seed sub-runs' files alone.

A config with ``seeds: [s1, s2, ...]`` runs each seed as a resumable sub-run ``seed<s>/`` (its own
``layers.jsonl``, ``history.jsonl``, ``fixed_etf.json``) and then writes, in the parent run folder:

* ``seeds.json`` — ``{"seeds", "layers": {split: [rows]}, "trend": [per-seed rows], "fixed_etf": [rows],
  "accuracy": {...}}``;
* ``seeds_layers.csv`` — per (split, layer) mean and sd over seeds of :data:`SEED_METRICS`;
* ``seeds_fixed_etf.csv`` — per number of fixed layers, mean and sd of train/test accuracy.

The trend statistic is Spearman's ρ between the layer index and the layer's within-class share at the
last measured epoch (``scipy.stats.spearmanr``; ρ = −1: the share falls at every layer), for the
canonical ``within_share`` and the official ``within_share_classavg``, with its two-sided p-value.

Example:
    >>> rows = {0: [{"split": "train", "epoch": 4, "layer": "fc1", "index": 0, "within_share": 0.5},
    ...             {"split": "train", "epoch": 4, "layer": "fc2", "index": 1, "within_share": 0.1}],
    ...         1: [{"split": "train", "epoch": 4, "layer": "fc1", "index": 0, "within_share": 0.7},
    ...             {"split": "train", "epoch": 4, "layer": "fc2", "index": 1, "within_share": 0.3}]}
    >>> table = layer_table(rows, "train")
    >>> [(r["layer"], round(r["within_share_mean"], 3), round(r["within_share_sd"], 3)) for r in table]
    [('fc1', 0.6, 0.1), ('fc2', 0.2, 0.1)]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nclens.runs.folder import RunFolder

__all__ = ["SEED_METRICS", "seed_folders", "final_records", "layer_table", "depth_trend", "fixed_etf_table",
           "aggregate_seeds", "SEEDS_TABLE"]

SEEDS_TABLE = "seeds.json"

#: Per-layer quantities summarised over seeds.
SEED_METRICS = (
    "within_share", "within_share_classavg", "nc1", "nc1_official", "cdnv", "ncc_accuracy",
    "subspace_alignment", "subspace_alignment_random", "assoc_memory_alignment", "within_stable_rank",
)


def seed_folders(run: RunFolder, seeds: list[int]) -> dict[int, RunFolder]:
    """``{seed: sub-run}`` for the seeds whose sub-run folder exists."""
    return {s: RunFolder(run.file(f"seed{s}"), writer=False) for s in seeds if run.file(f"seed{s}").is_dir()}


def final_records(records: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The records of ``split`` at its last measured epoch, in layer order."""
    recs = [r for r in records if r.get("split") == split]
    if not recs:
        return []
    last = max(r["epoch"] for r in recs)
    return sorted([r for r in recs if r["epoch"] == last], key=lambda r: r.get("index", 0))


def _stats(values: list[float]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    arr = np.asarray(vals)
    return float(arr.mean()), float(arr.std(ddof=0)), len(vals)


def layer_table(records_by_seed: dict[int, list[dict[str, Any]]], split: str) -> list[dict[str, Any]]:
    """One row per layer: ``<metric>_mean`` / ``<metric>_sd`` (population sd over seeds) / ``n_seeds``.

    Layers are matched by name; the order is that of the first seed's records.
    """
    finals = {s: {r["layer"]: r for r in final_records(recs, split)} for s, recs in records_by_seed.items()}
    if not finals:
        return []
    first = next(iter(finals.values()))
    rows = []
    for layer, rec in first.items():
        row: dict[str, Any] = {"layer": layer, "index": rec.get("index"), "dim": rec.get("dim"),
                               "epoch": rec.get("epoch")}
        for metric in SEED_METRICS:
            mean, sd, n = _stats([f[layer].get(metric) for f in finals.values() if layer in f])
            if n:
                row[f"{metric}_mean"], row[f"{metric}_sd"] = mean, sd
        row["n_seeds"] = sum(layer in f for f in finals.values())
        rows.append(row)
    return rows


def depth_trend(records: list[dict[str, Any]], split: str = "train", metric: str = "within_share") -> dict[str, Any]:
    """Spearman's ρ (and two-sided p) of ``metric`` against the layer index at the last measured epoch."""
    from scipy.stats import spearmanr

    final = [r for r in final_records(records, split) if r.get(metric) is not None]
    if len(final) < 3:
        return {"metric": metric, "rho": None, "p": None, "layers": len(final)}
    res = spearmanr([r["index"] for r in final], [r[metric] for r in final])
    rho, p = float(res.statistic), float(res.pvalue)
    return {"metric": metric, "rho": rho if math.isfinite(rho) else None, "p": p if math.isfinite(p) else None,
            "layers": len(final), "first": final[0][metric], "last": final[-1][metric],
            "ratio_first_last": final[0][metric] / final[-1][metric] if final[-1][metric] else None}


def fixed_etf_table(tables_by_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per number of fixed layers: mean and sd over seeds of train and test accuracy."""
    by_fixed: dict[int, list[dict[str, Any]]] = {}
    for rows in tables_by_seed.values():
        for row in rows:
            by_fixed.setdefault(int(row["num_fixed"]), []).append(row)
    out = []
    for num_fixed in sorted(by_fixed):
        rows = by_fixed[num_fixed]
        entry: dict[str, Any] = {"num_fixed": num_fixed, "num_trained": rows[0].get("num_trained"),
                                 "n_seeds": len(rows)}
        for key in ("train_accuracy", "test_accuracy", "within_share_last"):
            mean, sd, n = _stats([r.get(key) for r in rows])
            if n:
                entry[f"{key}_mean"], entry[f"{key}_sd"] = mean, sd
        out.append(entry)
    return out


def aggregate_seeds(run: RunFolder, seeds: list[int]) -> dict[str, Any]:
    """Aggregate the seed sub-runs of ``run`` (see the module docstring); writes the files when ``run.writer``."""
    folders = seed_folders(run, seeds)
    layers = {s: f.read_jsonl("layers.jsonl") for s, f in folders.items()}
    histories = {s: f.read_jsonl("history.jsonl") for s, f in folders.items()}
    fixed = {s: f.read_json("fixed_etf.json")["rows"] for s, f in folders.items() if f.exists("fixed_etf.json")}
    out: dict[str, Any] = {"seeds": sorted(folders)}
    out["layers"] = {split: layer_table(layers, split) for split in ("train", "test")
                     if any(r.get("split") == split for recs in layers.values() for r in recs)}
    out["trend"] = [dict(seed=s, **depth_trend(recs, "train", metric)) for s, recs in layers.items()
                    for metric in ("within_share", "within_share_classavg") if recs]
    accuracy: dict[str, Any] = {}
    for key in ("train_accuracy", "test_accuracy"):
        mean, sd, n = _stats([h[-1].get(key) for h in histories.values() if h])
        if n:
            accuracy[f"{key}_mean"], accuracy[f"{key}_sd"] = mean, sd
    out["accuracy"] = accuracy
    if fixed:
        out["fixed_etf"] = fixed_etf_table(fixed)
    if run.writer:
        run.write_json(SEEDS_TABLE, out)
        rows = [dict(split=split, **row) for split, table in out["layers"].items() for row in table]
        if rows:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            run.write_csv("seeds_layers.csv", rows, columns)
        if fixed:
            run.write_csv("seeds_fixed_etf.csv", out["fixed_etf"],
                          list(dict.fromkeys(k for row in out["fixed_etf"] for k in row)))
    return out
