"""Multi-label neural collapse with the pick-all-label losses (Li, Li, Wang & Qu, ICML 2024).

Kinds ``multilabel`` (training: learned vs fixed-ETF heads, PAL losses, MLab NC over training) and
``multilabel-ufm`` (the unconstrained feature model: restarts, λ sweeps, imbalanced counts) —
:mod:`nclens.multilabel.experiment`; configs in ``configs/`` (``nclens configs --kind multilabel``).

Example:
    >>> from nclens.multilabel import UFMConfig, solve_ufm, ufm_theory
    >>> round(ufm_theory("pal", 4, (20, 10), 5e-3, 5e-3)["tagwise_scale"][2], 3)
    1.71
"""

from nclens.multilabel.config import MultiLabelConfig, UFMStudyConfig
from nclens.multilabel.data import compose_li, load_ml_images
from nclens.multilabel.models import MLabNet, build_model, li_etf_head, li_etf_weight
from nclens.multilabel.scores import iou_li, multilabel_scores
from nclens.multilabel.ufm import (
    UFMConfig,
    UFMSolution,
    gap_implied_scale,
    solution_report,
    solve_ufm,
    ufm_theory,
    zhu_ce_closed_form,
)

__all__ = [
    "MultiLabelConfig",
    "UFMStudyConfig",
    "compose_li",
    "load_ml_images",
    "MLabNet",
    "build_model",
    "li_etf_head",
    "li_etf_weight",
    "iou_li",
    "multilabel_scores",
    "UFMConfig",
    "UFMSolution",
    "gap_implied_scale",
    "solution_report",
    "solve_ufm",
    "ufm_theory",
    "zhu_ce_closed_form",
]
