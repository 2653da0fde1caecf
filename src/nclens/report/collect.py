"""``nclens.collect(run_dirs)``: every run folder's layer measurements as one long pandas DataFrame.

Each run folder's ``layers.jsonl`` holds one record per (epoch, split, layer) with one column per
metric; ``config.yaml`` (``kind``, ``name``) and ``summary.json`` tag the run. :func:`collect` returns
the long format papers are made from — one row per number, columns ``run, kind, name, epoch, split,
layer, index, module, dim, metric, value`` — ready for ``pivot_table``, seaborn, or LaTeX.

Example:
    >>> import tempfile, pathlib
    >>> from nclens.core.io import append_jsonl
    >>> run = pathlib.Path(tempfile.mkdtemp()) / "run_a"
    >>> _ = append_jsonl(run / "layers.jsonl", [{"epoch": 1, "split": "train", "layer": "fc", "nc1": 0.5}])
    >>> frame = collect([run])
    >>> frame[["run", "epoch", "layer", "metric", "value"]].values.tolist()
    [['run_a', 1, 'fc', 'nc1', 0.5]]
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nclens.core.io import read_json, read_jsonl

__all__ = ["collect", "long_records", "ID_COLUMNS"]

#: Columns of a layers.jsonl record that identify it rather than measure it.
ID_COLUMNS = ("epoch", "step", "split", "layer", "index", "kind", "dim")


def long_records(records: Iterable[dict[str, Any]], **tags: Any) -> list[dict[str, Any]]:
    """Wide records (one per epoch/split/layer, a column per metric) → long ``{tags, ids, metric, value}`` rows.

    Numeric columns that are not identifiers are metrics (``None`` → NaN); a record's module type
    (``kind`` in layers.jsonl) becomes ``module`` so that it does not clash with the run's kind.
    """
    out = []
    for rec in records:
        ids = {("module" if k == "kind" else k): v for k, v in rec.items() if k in ID_COLUMNS}
        for key, value in rec.items():
            if key in ID_COLUMNS or isinstance(value, (bool, str, list, dict)):
                continue
            if value is None or isinstance(value, (int, float)):
                out.append({**tags, **ids, "metric": key, "value": math.nan if value is None else float(value)})
    return out


def _run_dirs(run_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    items = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    paths: list[Path] = []
    for item in items:
        text = str(item)
        matches = sorted(glob.glob(text)) if any(ch in text for ch in "*?[") else [text]
        if not matches:
            raise FileNotFoundError(f"no run folder matches {text!r}")
        paths += [Path(m) for m in matches]
    if not paths:
        raise ValueError("collect() needs at least one run folder")
    return paths


def _tags(run: Path) -> dict[str, Any]:
    import yaml

    tags: dict[str, Any] = {"run": run.name, "kind": None, "name": None}
    config = run / "config.yaml"
    if config.is_file():
        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{config} is not valid YAML: {exc}") from exc
        if isinstance(data, dict):
            tags["kind"] = data.get("kind", tags["kind"])
            tags["name"] = data.get("name", tags["name"])
    summary = run / "summary.json"
    if summary.is_file():
        data = read_json(summary)
        if isinstance(data, dict):
            for key in ("kind", "name"):
                if tags[key] is None and isinstance(data.get(key), str):
                    tags[key] = data[key]
    return tags


def collect(run_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]):  # -> pandas.DataFrame
    """One long DataFrame of every run folder's ``layers.jsonl`` (glob patterns allowed).

    Raises:
        FileNotFoundError: a folder does not exist or has no ``layers.jsonl``.
        ValueError: a malformed ``layers.jsonl`` or ``config.yaml``.
    """
    import json

    import pandas as pd

    rows: list[dict[str, Any]] = []
    for run in _run_dirs(run_dirs):
        if not run.is_dir():
            raise FileNotFoundError(f"run folder not found: {run}")
        path = run / "layers.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{run} has no layers.jsonl (it is not a run folder that measured layers)")
        try:
            records = read_jsonl(path)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSONL: {exc}") from exc
        rows += long_records(records, **_tags(run))
    columns = ["run", "kind", "name", "epoch", "step", "split", "layer", "index", "module", "dim", "metric", "value"]
    frame = pd.DataFrame(rows)
    present = [c for c in columns if c in frame.columns] + [c for c in frame.columns if c not in columns]
    return frame[present] if len(frame) else pd.DataFrame(columns=["run", "kind", "name", "metric", "value"])
