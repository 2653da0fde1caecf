"""The engine: one-pass statistics, the metrics, probes, ``measure`` and feature files.

Imports nothing above it (no trainer, no run folder, no research system, no CLI); everything else
in nclens builds on it.
"""

from nclens.core import measure  # the module; callable as measure(model, loader, ...)
from nclens.core.measure import CollapseReport
from nclens.core.metrics import compute_metrics
from nclens.core.probe import Probe
from nclens.core.stats import ClassStats

__all__ = ["ClassStats", "CollapseReport", "Probe", "compute_metrics", "measure"]
