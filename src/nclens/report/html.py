"""A self-contained ``report.html`` for a run folder of any kind: figures embedded as base64 PNG, tables, config.

The page needs no network and no other file: every figure is a ``data:image/png;base64`` URI, the
style sheet is inline. It shows the kind's headline numbers and tables
(:class:`~nclens.runs.experiment.ReportContent`, from the kind's ``report()``), the figures (from its
``figures()``), the resolved config and the package versions. Everything read from the run folder is
HTML-escaped.

Example:
    >>> from nclens.report.html import html_table
    >>> "<td>0.5</td>" in html_table([{"a": 0.5}], ["a"])
    True
    >>> "<script>" in html_table([{"a": "<script>alert(1)</script>"}], ["a"])
    False
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

__all__ = ["html_table", "render_html"]

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
    head = "".join(f"<th>{html.escape(str(c)).replace('_', '_<wbr>')}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def render_html(run: Any, figures: dict[str, Path], content: Any) -> str:
    """The report page of ``run`` (a :class:`~nclens.runs.folder.RunFolder`): every value from the folder is
    HTML-escaped (a shared run folder cannot put markup or a script into the page)."""
    record = run.config_record() or {}
    summary = run.summary() or {}
    versions = run.read_json("versions.json") if run.exists("versions.json") else {}
    config_text = run.file("config.yaml").read_text(encoding="utf-8") if run.exists("config.yaml") else ""
    name = str(record.get("name", run.path.name))
    kind = str(record.get("kind", "?"))
    status = "complete" if summary.get("complete") else "incomplete (no summary.json: stopped or running)"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>nclens report – {html.escape(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>nclens report: {html.escape(name)}</h1>",
        f"<p class='muted'>{html.escape(content.title or kind)} — kind {html.escape(kind)}; run folder "
        f"{html.escape(str(run.path.resolve()))}; {html.escape(status)}.</p>",
    ]
    for row in content.headline:
        parts.append("<div class='cards'>" + "".join(
            f"<div class='card'>{html.escape(str(k))}<b>{html.escape(_fmt(v))}</b></div>"
            for k, v in row.items() if v is not None and not isinstance(v, (dict, list))
        ) + "</div>")
    for note in content.notes:
        parts.append(f"<p class='muted'>{html.escape(str(note))}</p>")
    if figures:
        parts.append("<h2>Figures</h2><div class='figs'>")
        for key, path in figures.items():
            title = _FIGURE_TITLES.get(key, key)
            parts.append(f"<figure>{_img(Path(path))}<figcaption class='muted'>{html.escape(str(title))}"
                         "</figcaption></figure>")
        parts.append("</div>")
    for title, rows in content.tables.items():
        if rows:
            columns = list(dict.fromkeys(c for r in rows for c in r))
            parts.append(f"<h2>{html.escape(str(title))}</h2>" + html_table(rows, columns))
    if config_text:
        parts.append(f"<h2>Resolved config</h2><pre>{html.escape(config_text)}</pre>")
    if versions:
        parts.append("<h2>Versions</h2>" + html_table([versions], list(versions)))
    parts.append("</body></html>")
    return "\n".join(parts)
