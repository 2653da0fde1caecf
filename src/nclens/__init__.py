"""nclens: measure, explain and exploit neural collapse.

The core at the top level::

    import nclens
    report = nclens.measure(model, loader, layers=["fc1", "fc2"])   # a CollapseReport
    stats = nclens.ClassStats(num_classes=10).update(features, labels)
    nclens.compute_metrics(stats)

The layout by role is described in ARCHITECTURE.md: :mod:`nclens.core` (the engine),
:mod:`nclens.nn`, :mod:`nclens.models`, :mod:`nclens.data`, :mod:`nclens.train`, :mod:`nclens.runs`,
:mod:`nclens.report`, one subpackage per research system, and :mod:`nclens.cli`.
"""

import sys

from nclens import _compat
from nclens.core import (
    labels,  # nclens.labels.next_token() for causal LMs
    measure,  # the module; callable as nclens.measure(model, loader, ...)
)
from nclens.core.measure import CollapseReport
from nclens.core.metrics import compute_metrics
from nclens.core.online import OnlineCollapse
from nclens.core.probe import LayerSpec, Probe
from nclens.core.stats import ClassStats
from nclens.report.collect import collect

__version__ = "0.1.0"

__all__ = [
    "ClassStats",
    "CollapseReport",
    "LayerSpec",
    "OnlineCollapse",
    "Probe",
    "collect",
    "compute_metrics",
    "labels",
    "measure",
    "__version__",
]

_compat.install()
sys.modules.setdefault(f"{__name__}.labels", labels)  # `from nclens.labels import next_token`
