"""The Papyan-style four-panel figure: NC1, NC2, NC3 and NC4 over epochs (Papyan, Han & Donoho 2020, Fig. 6–9).

:func:`fig_nc_over_epochs` takes *long* records (``{epoch, layer, metric, value, ...}``, as
:meth:`CollapseReport.to_records`, :func:`nclens.collect` or a callback's ``history`` give them; wide
``layers.jsonl`` records are converted) and draws one line per layer (or per run, when the records
come from several runs):

* NC1 — ``nc1`` = Tr(Σ_W Σ_B⁺)/K, log scale;
* NC2 — equinorm ``nc2_equinorm`` (solid) and equiangularity ``nc2_equiangular`` (dashed);
* NC3 — self-duality ``nc3_duality``;
* NC4 — ``nc4_ncc_mismatch`` (or ``ncc_accuracy`` mismatch 1 − acc when nc4 was not measured).

Example:
    >>> recs = [{"epoch": e, "split": "train", "layer": "fc", "metric": m, "value": v / (1 + e)}
    ...         for e in range(3) for m, v in [("nc1", 1.0), ("nc2_equinorm", 0.3), ("nc2_equiangular", 0.2),
    ...                                          ("nc3_duality", 0.5), ("nc4_ncc_mismatch", 0.1)]]
    >>> fig = fig_nc_over_epochs(recs)
    >>> [ax.get_title() for ax in fig.axes]
    ['NC1: Tr(Σ_W Σ_B⁺)/K', 'NC2: equinorm / equiangular', 'NC3: self-duality', 'NC4: classifier ≠ NCC']
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["fig_nc_over_epochs", "PANELS"]

#: (title, [(metric, line style)], log scale) of each panel.
PANELS = (
    ("NC1: Tr(Σ_W Σ_B⁺)/K", [("nc1", "-")], True),
    ("NC2: equinorm / equiangular", [("nc2_equinorm", "-"), ("nc2_equiangular", "--")], False),
    ("NC3: self-duality", [("nc3_duality", "-")], False),
    ("NC4: classifier ≠ NCC", [("nc4_ncc_mismatch", "-")], False),
)


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _as_long(records: Any) -> list[dict[str, Any]]:
    if hasattr(records, "to_dict") and hasattr(records, "columns"):  # a pandas DataFrame
        records = records.to_dict("records")
    records = list(records)
    if records and "metric" not in records[0]:
        from nclens.report.collect import long_records

        records = long_records(records)
    return records


def fig_nc_over_epochs(records: Iterable[dict[str, Any]] | Any, *, split: str | None = "train",
                       layers: Iterable[str] | None = None) -> Figure:
    """NC1–NC4 over epochs in four panels, one line per layer (and run).

    Args:
        records: long records (or a DataFrame from :func:`nclens.collect`, or wide layers.jsonl records).
        split: keep records of this split (``None``: all; records without a split are kept).
        layers: the layers to draw (default: those with at least one of the panels' metrics).

    Raises:
        ValueError: no record holds any of the four panels' metrics.
    """
    rows = [r for r in _as_long(records) if split is None or r.get("split", split) == split]
    wanted = {m for _, metrics, _ in PANELS for m, _ in metrics}
    rows = [r for r in rows if r.get("metric") in wanted and _finite(r.get("value")) and _finite(r.get("epoch"))]
    if layers is not None:
        keep = set(layers)
        rows = [r for r in rows if r.get("layer") in keep]
    if not rows:
        where = f" for split {split!r}" if split else ""
        raise ValueError(f"no records with epoch and any of {sorted(wanted)}{where}")
    runs = {r.get("run") for r in rows}
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        label = str(r.get("layer")) if len(runs) == 1 else f"{r.get('run')}:{r.get('layer')}"
        series[(label, r["metric"])].append((float(r["epoch"]), float(r["value"])))
    labels = list(dict.fromkeys(label for label, _ in series))
    colours = {label: plt.cm.viridis(i / max(1, len(labels) - 1)) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (title, metrics, log) in zip(axes, PANELS):
        for label in labels:
            for metric, style in metrics:
                points = sorted(series.get((label, metric), []))
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], style, color=colours[label], marker=".",
                            label=label if style == "-" else None)
        if log and any(v > 0 for (_, m), pts in series.items() if m == "nc1" for _, v in pts):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        if not handles:
            handles, names = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="center right", fontsize="small", title="layer")
        fig.subplots_adjust(right=0.88)
    fig.tight_layout(rect=(0, 0, 0.88 if handles else 1, 1))
    return fig
