"""A self-contained ``report.html`` for a run folder: figures embedded as base64 PNG, config, tables.

The page needs no network and no other file: every figure is a ``data:image/png;base64`` URI, the
style sheet is inline. It shows the run's headline numbers (final accuracies, the within_share ratio
between the first and the last measured layer, the top layers' subspace alignment), the per-layer
table at the last measured epoch (train and test data), the fixed-ETF-layers table when the run has
one, the resolved config and the package versions.

Example:
    >>> from nclens.report.html import html_table
    >>> "<td>0.5</td>" in html_table([{"a": 0.5}], ["a"])
    True
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any

from nclens.core.io import atomic_write_text, read_json, read_jsonl

__all__ = ["html_table", "headline", "write_html", "TABLE_COLUMNS"]

#: Per-layer columns of the final table, in order.
TABLE_COLUMNS = (
    "layer", "dim", "within_share", "nc1", "nc1_trace", "cdnv", "nc2_etf", "nc2_equinorm",
    "effective_rank", "ncc_accuracy", "subspace_alignment", "assoc_memory_alignment", "nc3_duality",
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#1d2330;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #d5d9e0}
table{border-collapse:collapse;font-size:0.86em;margin:8px 0}
th,td{border:1px solid #d5d9e0;padding:3px 8px;text-align:right}th{background:#f2f4f8}
td:first-child,th:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#f6f8fb;border:1px solid #d5d9e0;border-radius:6px;
padding:8px 14px;min-width:170px}.card b{display:block;font-size:1.3em}
.figs{display:flex;flex-wrap:wrap;gap:10px}.figs figure{margin:0;flex:1 1 540px}
img{max-width:100%;border:1px solid #e3e6eb}pre{background:#f6f8fb;padding:10px;font-size:0.82em;overflow:auto}
.muted{color:#6b7280;font-size:0.85em}.scroll{overflow-x:auto}th{max-width:110px;vertical-align:bottom}
"""

_FIGURE_TITLES = {
    "within_share_depth": "within_share = Tr Σ_W / (Tr Σ_W + Tr Σ_B) vs depth (train)",
    "within_share_depth_test": "within_share vs depth (test)",
    "nc1_epochs": "NC1 per layer over epochs (log scale)",
    "alignment": "subspace and associative-memory alignment per layer",
    "ncc_accuracy": "nearest-class-mean accuracy per layer",
    "spectra": "weight singular spectra",
    "training": "training curves",
    "fixed_etf": "fixed-ETF layers: accuracy vs trained layers",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def html_table(rows: list[dict[str, Any]], columns: list[str] | tuple[str, ...]) -> str:
    """An HTML table of ``rows`` restricted to ``columns`` (missing cells shown as –; values escaped)."""
    # headers may break after underscores (<wbr>) so that wide per-layer tables fit the page
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _final(records: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    recs = [r for r in records if r.get("split") == split]
    if not recs:
        return []
    last = max(r["epoch"] for r in recs)
    return sorted([r for r in recs if r["epoch"] == last], key=lambda r: r.get("index", 0))


def headline(records: list[dict[str, Any]], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's key numbers: final accuracies, within_share first/last ratio, top-layer alignments."""
    out: dict[str, Any] = {}
    if history:
        out["epochs"] = history[-1].get("epoch")
        out["train_accuracy"] = history[-1].get("train_accuracy")
        out["test_accuracy"] = history[-1].get("test_accuracy")
    final = _final(records, "train")
    if final:
        first, last = final[0].get("within_share"), final[-1].get("within_share")
        out["within_share_first"] = first
        out["within_share_last"] = last
        out["within_share_ratio"] = first / last if first and last else None
        aligned = [r for r in final if r.get("subspace_alignment") is not None]
        if aligned:
            out["subspace_alignment_last"] = aligned[-1]["subspace_alignment"]
            out["subspace_alignment_first"] = aligned[0]["subspace_alignment"]
    return out


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def write_html(run_dir: str | os.PathLike[str], figures: dict[str, Path]) -> Path:
    """Write ``run_dir/report.html`` (self-contained) from the logs and the rendered ``figures``."""
    run = Path(run_dir)
    records = read_jsonl(run / "layers.jsonl")
    history = read_jsonl(run / "history.jsonl")
    config_text = (run / "config.yaml").read_text(encoding="utf-8") if (run / "config.yaml").is_file() else ""
    versions = read_json(run / "versions.json") if (run / "versions.json").is_file() else {}
    fixed = read_json(run / "fixed_etf.json") if (run / "fixed_etf.json").is_file() else None
    name = run.name
    if (run / "config.json").is_file():
        name = read_json(run / "config.json").get("name", name)
    head = headline(records, history)
    cards = {
        "final train accuracy": head.get("train_accuracy"),
        "final test accuracy": head.get("test_accuracy"),
        "within_share first layer": head.get("within_share_first"),
        "within_share last layer": head.get("within_share_last"),
        "within_share first/last": head.get("within_share_ratio"),
        "subspace alignment (last layer)": head.get("subspace_alignment_last"),
    }
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>nclens report – {html.escape(str(name))}</title><style>{_CSS}</style></head><body>",
        f"<h1>nclens report: {html.escape(str(name))}</h1>",
        f"<p class='muted'>run folder {html.escape(str(run.resolve()))}; "
        f"epochs trained: {html.escape(_fmt(head.get('epochs')))}. "
        "Metrics are DESIGN.md's canonical definitions (Rangamani et al., ICML 2023, for within_share "
        "and the alignments), measured on each layer's input.</p>",
        "<div class='cards'>"
        + "".join(f"<div class='card'>{html.escape(k)}<b>{html.escape(_fmt(v))}</b></div>"
                  for k, v in cards.items() if v is not None)
        + "</div>",
    ]
    if figures:
        parts.append("<h2>Figures</h2><div class='figs'>")
        for key, path in figures.items():
            title = _FIGURE_TITLES.get(key, key)
            parts.append(f"<figure>{_img(Path(path))}<figcaption class='muted'>{html.escape(title)}"
                         "</figcaption></figure>")
        parts.append("</div>")
    for split in ("train", "test"):
        final = _final(records, split)
        if final:
            columns = [c for c in TABLE_COLUMNS if any(c in r for r in final)]
            parts.append(f"<h2>Per-layer collapse at epoch {final[0]['epoch']} ({split} data)</h2>")
            parts.append(html_table(final, columns))
    if fixed is not None:
        parts.append(f"<h2>Fixed-ETF layers ({fixed.get('epochs')} epochs each)</h2>")
        parts.append(html_table(fixed["rows"], ["num_fixed", "num_trained", "train_accuracy", "test_accuracy",
                                                "within_share_last"]))
    if history:
        step = max(1, len(history) // 12)
        picked = history[::step] + ([history[-1]] if history[-1] not in history[::step] else [])
        cols = [c for c in ("epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
                if any(c in r for r in picked)]
        parts.append("<h2>Training history</h2>" + html_table(picked, cols))
    if config_text:
        parts.append(f"<h2>Resolved config</h2><pre>{html.escape(config_text)}</pre>")
    if versions:
        parts.append("<h2>Versions</h2>" + html_table([versions], list(versions)))
    parts.append("</body></html>")
    return atomic_write_text(run / "report.html", "\n".join(parts))
