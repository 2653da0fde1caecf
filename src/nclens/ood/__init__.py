"""Controlling neural collapse for OOD detection and transfer (Harun, Gallardo & Kanan, ICML 2025).

The scores and detection metrics (:mod:`nclens.ood.scores`) are re-exported here.
"""

from nclens.ood.scores import *  # noqa: F403
from nclens.ood.scores import __all__  # noqa: F401
