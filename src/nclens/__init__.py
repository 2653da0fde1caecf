"""nclens: measure, explain and exploit neural collapse.

The core at the top level::

    import nclens
    report = nclens.measure(model, loader, layers=["fc1", "fc2"])   # a CollapseReport
    stats = nclens.ClassStats(num_classes=10).update(features, labels)
    nclens.compute_metrics(stats)
"""

from nclens import measure
from nclens.measure import CollapseReport
from nclens.metrics import compute_metrics
from nclens.probe import Probe
from nclens.stats import ClassStats

__version__ = "0.1.0"

__all__ = ["ClassStats", "CollapseReport", "Probe", "compute_metrics", "measure", "__version__"]
