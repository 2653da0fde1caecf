"""Integrations with the training frameworks researchers use, each an optional extra, imported lazily.

* :mod:`nclens.integrations.lightning` — ``NeuralCollapseCallback`` for (PyTorch) Lightning (extra
  ``lightning``);
* :mod:`nclens.integrations.hf` — ``NeuralCollapseCallback`` for ``transformers.Trainer`` (extra ``hf``);
* :mod:`nclens.integrations.torchmetrics` — ``NeuralCollapse``, a torchmetrics ``Metric`` (extra
  ``torchmetrics``).

Importing ``nclens.integrations`` imports none of these frameworks; importing a submodule without its
framework installed is an ``ImportError`` that names the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["lightning", "hf", "torchmetrics", "require"]

_EXTRAS = {"lightning": "lightning", "hf": "hf", "torchmetrics": "torchmetrics"}


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise an ImportError saying which nclens extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this integration needs {module!r}: pip install 'nclens[{extra}]' (or pip install {module})"
        ) from exc


def __getattr__(name: str) -> Any:
    if name in _EXTRAS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
