"""``nclens measure FEATURES...``: NC metrics of feature files (.npz / .safetensors / .pt).

Several files, and several layers per file (``features/<layer>`` keys), in one table; the results as
a table, JSON, CSV, Markdown or LaTeX (``--format``), on stdout or in a file (``--out``); ``--json``
writes the full result with provenance (N, D, K, dtype, nclens version, the file's SHA-256 and
metadata) for every (file, layer).

Example:
    $ nclens measure feats.npz --json metrics.json
    $ nclens measure run_a.safetensors run_b.safetensors --format latex --out table.tex
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer

from nclens.cli._common import fail, user_errors

__all__ = ["register", "fail", "render", "FORMATS"]

FORMATS = ("table", "json", "csv", "markdown", "latex")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _latex_escape(text: str) -> str:
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
             "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
    return "".join(table.get(ch, ch) for ch in text)


def render(results: list[dict[str, Any]], fmt: str) -> str:
    """The results (one per file and layer) in ``fmt``: rows = file[:layer], columns = metrics."""
    from nclens.core.console import format_table
    from nclens.core.io import to_jsonable
    from nclens.core.metrics.registry import order_columns

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return json.dumps(to_jsonable({"results": results}), indent=2, allow_nan=False) + "\n"
    rows = {}
    for r in results:
        label = Path(r["file"]).name + (f":{r['layer']}" if r["layer"] else "")
        rows[label] = r["metrics"]
    columns = order_columns([c for row in rows.values() for c in row])
    if fmt == "table":
        if len(rows) == 1:
            (label, row), r = next(iter(rows.items())), results[0]
            title = f"{label}: N={r['n']}, D={r['d']}, K={r['k']}"
            return format_table({m: {"value": v} for m, v in row.items()}, title=title, row_header="metric").rstrip() \
                + "\n"
        return format_table(rows, title="neural collapse per file and layer", row_header="features").rstrip() + "\n"
    if fmt == "csv":
        from nclens.core.io import csv_text

        return csv_text([{"features": label, **row} for label, row in rows.items()], ["features", *columns])
    if fmt == "markdown":
        lines = ["| features | " + " | ".join(f"`{c}`" for c in columns) + " |",
                 "|---|" + "---:|" * len(columns)]
        for label, row in rows.items():
            lines.append(f"| {label.replace('|', '/')} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
        return "\n".join(lines) + "\n"
    lines = [r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule",
             "features & " + " & ".join(_latex_escape(c) for c in columns) + r" \\", r"\midrule"]
    for label, row in rows.items():
        lines.append(_latex_escape(label) + " & " + " & ".join(_cell(row.get(c)) for c in columns) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def register(app: typer.Typer) -> None:
    @app.command("measure")
    def measure_command(
        features: list[Path] = typer.Argument(
            ...,
            help="Feature files (.npz, .safetensors, .pt) holding 'features' (N×D) and/or 'features/<layer>' keys, "
            "'labels' (N integers, or N×K 0/1 for multi-label), optional 'weight' (K×D) and 'bias' (K).",
        ),
        json_out: Path | None = typer.Option(
            None, "--json", help="Write the results with provenance (N, D, K, dtype, version, SHA-256) as JSON."
        ),
        fmt: str = typer.Option("table", "--format", "-f", help="Output format: table, json, csv, markdown, latex."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Write the --format output to this file."),
        layer: list[str] = typer.Option([], "--layer", help="Measure only these layers ('features/<layer>' keys)."),
        metrics: str | None = typer.Option(
            None, "--metrics", help="Comma-separated metric names to compute instead of the defaults (see the README)."
        ),
        min_class_count: int = typer.Option(
            1, "--min-class-count", help="Exclude classes with fewer samples from every metric (reported)."
        ),
        batch_size: int = typer.Option(65536, help="Rows streamed through the statistics at a time."),
        trace_only: bool = typer.Option(
            False, "--trace-only", help="Keep no D×D scatter (huge D): every metric but nc1."
        ),
        max_memory: float | None = typer.Option(
            None, "--max-memory", help="Refuse files whose measurement needs more than this many GiB (default: 80% "
            "of RAM or NCLENS_MAX_BYTES)."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing (write --json / --out only)."),
    ) -> None:
        """Measure neural collapse of features computed anywhere.

        Without 'weight', labels may be any integers: the classes are the distinct values. With
        'weight', label k is row k of 'weight' (0 <= k < K) and the classifier metrics (nc2_*_w,
        nc3_*, nc4_ncc_mismatch) are added. Classes with fewer samples than a metric needs (2 for
        cdnv) are excluded from that metric and listed under 'excluded' in the JSON.
        """
        from nclens.core.features import feature_layers, measure_feature_file, read_feature_file
        from nclens.core.io import atomic_write_text, check_output_path, write_json

        with user_errors():
            if fmt not in FORMATS:
                raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
            if batch_size < 1:
                raise ValueError(f"--batch-size must be a positive integer, got {batch_size}")
            if min_class_count < 1:
                raise ValueError(f"--min-class-count must be a positive integer, got {min_class_count}")
            if max_memory is not None and not (math.isfinite(max_memory) and max_memory > 0):
                raise ValueError(f"--max-memory must be a positive number of GiB, got {max_memory}")
            for option, path in (("--json", json_out), ("--out", out)):
                if path is not None:
                    check_output_path(path, features, option=option)
            if json_out is not None and out is not None and Path(json_out).resolve() == Path(out).resolve():
                raise ValueError(f"--json and --out are the same file {json_out}; choose two paths")
            names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
            if names is not None:
                from nclens.core.metrics.registry import get_metric

                for name in names:
                    get_metric(name)  # unknown names: an error listing the valid ones
            results: list[dict[str, Any]] = []
            for path in features:
                available = feature_layers(path)
                wanted = available if not layer else [None if name in ("", "features") else name for name in layer]
                unknown = [w for w in wanted if w not in available]
                if unknown:
                    shown = [a or "features" for a in available]
                    raise ValueError(f"{path.name} has no layer(s) {unknown}; it has {shown}")
                loaded = read_feature_file(path, wanted, scatter="trace" if trace_only else "full",
                                           batch_size=batch_size,
                                           max_bytes=None if max_memory is None else int(max_memory * 2**30))
                for data in loaded.values():
                    values, info = measure_feature_file(data, batch_size=batch_size, min_class_count=min_class_count,
                                                        scatter="trace" if trace_only else "full", metrics=names)
                    results.append({**data.provenance, "metrics": values, "excluded": info.get("excluded", {}),
                                    "notes": info.get("notes", [])})
            text = render(results, fmt)
            if json_out is not None:
                write_json(json_out, {"results": results})
            if out is not None:
                atomic_write_text(out, text)
        if not quiet:
            if out is None:
                typer.echo(text.rstrip("\n"))
            for path in (json_out, out):
                if path is not None:
                    typer.echo(f"wrote {path}", err=fmt != "table")
