"""The metric registry: one entry per metric — name, function, what it needs, family, definition, source.

Everything that lists or computes metrics derives from this table: :func:`compute_metrics` and
:func:`compute_multilabel_metrics <nclens.core.metrics.multilabel.compute_multilabel_metrics>`, the
column order of console tables and DataFrames, ``nclens measure --json`` and ``nclens metrics`` (the
README's metric table is that command's Markdown output, and a test keeps the two equal).

What a metric needs (``needs``):

* ``"weight"`` — the classifier W (K×D), row k for the k-th class in ascending label order;
* ``"bias"`` — the classifier's bias b (K,) (with W): ``fn(stats, weight, bias)``;
* ``"scatter"`` — Σ_W on the span of the centred class means (the full D×D scatter, or the projected
  scatter of a two-pass measurement);
* ``"full_scatter"`` — the whole D×D scatter (e.g. an eigen-spectrum);
* ``"samples"`` — a pass over the samples (nc4, NCC accuracy): computed by :func:`nclens.core.measure.measure`
  in its second pass, never by :func:`compute_metrics`;
* ``"layer"`` — a module's weights and its un-pooled class-mean inputs (the alignment metrics):
  computed by the callers that hold the module (the intermediate-NC experiment).

One policy for undefined metrics (:class:`~nclens.core.errors.UndefinedMetricError`: coinciding
means, too few samples per class): ``on_undefined="nan"`` reports NaN (``null`` in JSON) and issues
one :class:`~nclens.core.errors.UndefinedMetricWarning` per call naming each metric and why;
``on_undefined="raise"`` lets the first error propagate. A metric whose *needs* are not met (no W,
a trace-only scatter) is left out, not NaN.

Example:
    >>> from nclens.core.metrics.registry import get_metric, metric_names
    >>> get_metric("nc1").needs
    frozenset({'scatter'})
    >>> metric_names()[:3]
    ('nc1', 'nc1_trace', 'within_share')
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nclens.core.errors import UndefinedMetricError, UndefinedMetricWarning

__all__ = [
    "MetricSpec",
    "NEEDS",
    "KINDS",
    "ON_UNDEFINED",
    "register_metric",
    "get_metric",
    "metric_specs",
    "metric_names",
    "metric_table",
    "metric_table_markdown",
    "evaluate",
    "order_columns",
]

NEEDS = ("weight", "bias", "scatter", "full_scatter", "samples", "layer")
KINDS = ("multiclass", "multilabel")
ON_UNDEFINED = ("nan", "raise")


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    Attributes:
        name: the key under which the value is reported (unique within ``kind``).
        fn: ``fn(stats, weight) -> float`` (or a mapping of names to floats for a metric that
            expands into several keys, e.g. one per label-set multiplicity); ``None`` for metrics
            computed elsewhere (``needs`` holds ``"samples"`` or ``"layer"``).
        kind: ``"multiclass"`` (statistics are a :class:`~nclens.core.stats.ClassStats`) or
            ``"multilabel"`` (a :class:`~nclens.core.multilabel.MultiLabelStats`).
        needs: what the metric needs beyond class counts and means (see the module docstring).
        family: ``NC1`` … ``NC4``, ``spread``, ``alignment``, ``tag-wise``: for grouping in tables.
        definition: the formula, in the notation of the README.
        source: the paper (and, for official variants, the file of the official code).
        min_per_class: the fewest samples every class needs (2 for metrics with a class variance).
        default: computed by :func:`compute_metrics` when no names are given.
    """

    name: str
    fn: Callable[..., Any] | None
    kind: str = "multiclass"
    needs: frozenset[str] = field(default_factory=frozenset)
    family: str = ""
    definition: str = ""
    source: str = ""
    min_per_class: int = 1
    default: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"metric kind must be one of {KINDS}, got {self.kind!r}")
        bad = sorted(set(self.needs) - set(NEEDS))
        if bad:
            raise ValueError(f"metric {self.name!r}: unknown needs {bad}; valid: {NEEDS}")
        if self.fn is None and not (set(self.needs) & {"samples", "layer"}):
            raise ValueError(f"metric {self.name!r} has no function (only 'samples'/'layer' metrics may)")


_REGISTRY: dict[tuple[str, str], MetricSpec] = {}


def register_metric(
    name: str,
    fn: Callable[..., Any] | None = None,
    *,
    kind: str = "multiclass",
    needs: Iterable[str] = (),
    family: str = "",
    definition: str = "",
    source: str = "",
    min_per_class: int = 1,
    default: bool = True,
) -> MetricSpec:
    """Add a metric to the registry (names are unique per kind; registering a name twice is an error)."""
    spec = MetricSpec(name, fn, kind, frozenset(needs), family, definition, source, min_per_class, default)
    key = (kind, name)
    if key in _REGISTRY:
        raise ValueError(f"metric {name!r} ({kind}) is already registered")
    _REGISTRY[key] = spec
    return spec


def get_metric(name: str, kind: str = "multiclass") -> MetricSpec:
    """The registered metric ``name`` of ``kind``; an unknown name is an error listing the valid ones."""
    try:
        return _REGISTRY[(kind, name)]
    except KeyError:
        raise ValueError(f"unknown metric {name!r} ({kind}); valid names: {', '.join(metric_names(kind))}") from None


def metric_specs(kind: str = "multiclass") -> tuple[MetricSpec, ...]:
    """Every registered metric of ``kind``, in registration (table) order."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return tuple(spec for (k, _), spec in _REGISTRY.items() if k == kind)


def metric_names(kind: str = "multiclass") -> tuple[str, ...]:
    """The names of every registered metric of ``kind``, in table order."""
    return tuple(spec.name for spec in metric_specs(kind))


def metric_table(kind: str | None = None) -> list[dict[str, str]]:
    """Rows ``{name, kind, family, needs, definition, source}`` of the registry (all kinds by default)."""
    kinds = KINDS if kind is None else (kind,)
    return [
        {
            "name": s.name,
            "kind": s.kind,
            "family": s.family,
            "needs": ", ".join(sorted(s.needs)) or "-",
            "definition": s.definition,
            "source": s.source,
        }
        for k in kinds
        for s in metric_specs(k)
    ]


def metric_table_markdown(kind: str) -> str:
    """The registry of ``kind`` as a Markdown table (name, needs, definition, source)."""
    lines = ["| name | needs | definition | source |", "|---|---|---|---|"]
    for row in metric_table(kind):
        cells = [f"`{row['name']}`", row["needs"], row["definition"].replace("|", "\\|"), row["source"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def order_columns(columns: Iterable[str], kind: str = "multiclass") -> list[str]:
    """``columns`` in registry order (per-multiplicity keys after their family), others after, stable."""
    names = metric_names(kind)
    rank = {name: i for i, name in enumerate(names)}

    def key(col: str) -> tuple[int, str]:
        if col in rank:
            return rank[col], ""
        for name in names:  # expanded keys such as tagwise_scale_m2(_std) follow their stem tagwise_scale_m{m}
            if "{" in name and col.startswith(name.split("{")[0]):
                return rank[name], col
        return len(names), ""

    return sorted(dict.fromkeys(columns), key=key)


def _available(spec: MetricSpec, have: set[str]) -> bool:
    return not (set(spec.needs) - have)


def evaluate(
    stats: Any,
    weight: Any = None,
    *,
    kind: str,
    have: set[str],
    names: Iterable[str] | None = None,
    on_undefined: str = "nan",
    bias: Any = None,
) -> dict[str, float]:
    """Evaluate registered metrics of ``kind`` on ``stats`` (the engine of ``compute_metrics``).

    Args:
        stats: the statistics the metric functions take.
        weight: the classifier, or ``None``.
        kind: ``"multiclass"`` or ``"multilabel"``.
        have: what these statistics offer among :data:`NEEDS` (``"weight"`` when W is given, ...).
        names: restrict to these names (unknown names are an error listing the valid ones); a named
            metric whose needs are not met is an error saying what is missing.
        on_undefined: ``"nan"`` (NaN and one :class:`UndefinedMetricWarning`) or ``"raise"``.
        bias: the classifier's bias (metrics needing ``"bias"`` get ``fn(stats, weight, bias)``).
    """
    if on_undefined not in ON_UNDEFINED:
        raise ValueError(f"on_undefined must be one of {ON_UNDEFINED}, got {on_undefined!r}")
    computable = set(have) - {"samples", "layer"}
    if names is None:
        specs = [s for s in metric_specs(kind) if s.default and s.fn is not None and _available(s, computable)]
    else:
        specs = [get_metric(n, kind) for n in dict.fromkeys(names)]
        for s in specs:
            missing = sorted(set(s.needs) - computable)
            if missing or s.fn is None:
                raise ValueError(
                    f"metric {s.name!r} needs {', '.join(missing) or 'a pass over the samples'}, which "
                    f"compute_metrics does not have here"
                    + (" (pass weight=W)" if "weight" in missing else "")
                    + (" (pass bias=b)" if "bias" in missing else "")
                    + (" (these statistics keep no D×D scatter)" if set(missing) & {"scatter", "full_scatter"} else "")
                )
    out: dict[str, float] = {}
    undefined: dict[str, str] = {}
    for spec in specs:
        try:
            value = spec.fn(stats, weight, bias) if "bias" in spec.needs else spec.fn(stats, weight)
        except UndefinedMetricError as exc:
            if on_undefined == "raise":
                raise
            undefined[spec.name] = str(exc)
            out[spec.name] = math.nan
            continue
        if isinstance(value, Mapping):
            out.update({k: float(v) for k, v in value.items()})
        else:
            out[spec.name] = float(value)
    if undefined:
        detail = "; ".join(f"{name}: {why}" for name, why in undefined.items())
        warnings.warn(f"undefined metrics reported as NaN — {detail}", UndefinedMetricWarning, stacklevel=3)
    return out
