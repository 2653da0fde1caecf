"""Controlling neural collapse for OOD detection and transfer (Harun, Gallardo & Kanan, ICML 2025).

Library: the OOD scores and detection metrics (:mod:`nclens.ood.scores`), the linear probes
(:mod:`nclens.ood.probes`), transfer probes (:mod:`nclens.ood.transfer`), the data protocols
(:mod:`nclens.ood.protocols`), the networks (:mod:`nclens.ood.networks`) and the per-layer evaluation
(:mod:`nclens.ood.evaluation`). The experiment (kind ``ood``) is :mod:`nclens.ood.experiment`; its configs
ship in ``nclens/ood/configs`` (``nclens configs --kind ood``).
"""

from nclens.ood.probes import AdamWProbe, LinearProbe, make_probe
from nclens.ood.scores import *  # noqa: F403
from nclens.ood.scores import __all__ as _scores_all
from nclens.ood.transfer import few_shot_indices, transfer_accuracy

__all__ = [*_scores_all, "AdamWProbe", "LinearProbe", "make_probe", "few_shot_indices", "transfer_accuracy"]
