"""One-release aliases for the module paths of nclens 0.1 (before the layout by role).

``import nclens.stats`` still works and gives :mod:`nclens.core.stats`, with a DeprecationWarning
that names the new path. The table below is the only place that knows the old paths; the aliases
go away in the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

#: old module path -> new module path
MOVED: dict[str, str] = {
    "nclens.stats": "nclens.core.stats",
    "nclens.geometry": "nclens.core.geometry",
    "nclens.probe": "nclens.core.probe",
    "nclens.measure": "nclens.core.measure",
    "nclens.features": "nclens.core.features",
    "nclens.metrics": "nclens.core.metrics",
    "nclens.metrics.multiclass": "nclens.core.metrics.multiclass",
    "nclens.metrics.multilabel": "nclens.core.metrics.multilabel",
    "nclens.metrics.layers": "nclens.core.metrics.layers",
    "nclens.distributed": "nclens.core.distributed",
    "nclens.losses": "nclens.nn.losses",
    "nclens.heads": "nclens.nn.heads",
    "nclens.regularizers": "nclens.nn.regularizers",
    "nclens.config": "nclens.runs.config",
    "nclens.experiment": "nclens.intermediate.experiment",
    "nclens.mlab_experiment": "nclens.multilabel.experiment",
    "nclens.ufm": "nclens.multilabel.ufm",
    "nclens.ood_experiment": "nclens.ood.experiment",
    "nclens.privacy.experiments": "nclens.privacy.experiment",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} has moved to {self.new}; the old path works for one release only",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the target module is already executed; give it back its own spec (the import system set the alias's)
        module.__spec__ = self.spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None):  # noqa: ANN201
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
