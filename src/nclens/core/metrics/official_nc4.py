"""Harun, Gallardo & Kanan's official NC4, which needs the classifier's bias b beside W.

* ``nc4_bias`` — NC4 as Harun, Gallardo & Kanan (ICML 2025) compute it: ‖W μ_G + b‖₂, the norm of
  the logits of the global mean μ_G (the mean of the K class means). Under neural collapse the
  classifier is centred on the class means (W μ_G + b → 0, the "bias" part of NC4 in the unconstrained
  feature model: b = −W μ_G at the optimum), so the value falls towards 0. Official code:
  ``yousuf907/NC-OOD``, ``nc_eval/nc_criteria.py``, ``compute_Wh_b_relation`` (called from
  ``nc_values`` with the class means of ``analysis`` and the linear probe's ``weight``/``bias``).
  nclens's own NC4, ``nc4_ncc_mismatch`` (the share of samples whose classifier prediction differs
  from the nearest-class-mean one, Papyan et al. 2020), needs a pass over the samples and stays the
  default; both are reported by the OOD experiment.

Example:
    >>> import torch
    >>> from nclens.core.stats import ClassStats
    >>> from nclens.core.metrics import compute_metrics
    >>> x = torch.tensor([[0.0, 0], [2, 0], [0, 4], [2, 4]], dtype=torch.float64)
    >>> s = ClassStats(num_classes=2).update(x, torch.tensor([0, 0, 1, 1]))
    >>> w, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([-1.0, 0.0])   # μ_G = (1, 2): W μ_G + b = (0, 2)
    >>> compute_metrics(s, w, bias=b, names=["nc4_bias"])
    {'nc4_bias': 2.0}
"""

from __future__ import annotations

import torch
from torch import Tensor

from nclens.core.metrics.multiclass import _check_weight, _checked
from nclens.core.metrics.registry import register_metric
from nclens.core.stats import ClassStats

__all__ = ["nc4_bias"]


def nc4_bias(stats: ClassStats, weight: Tensor, bias: Tensor) -> float:
    """‖W μ_G + b‖₂ with μ_G = (1/K) Σ_c μ_c (Harun et al. 2025, official ``compute_Wh_b_relation``).

    Args:
        stats: per-class statistics (means μ_c; every class observed).
        weight: (K, D) classifier W, row k for the k-th class.
        bias: (K,) classifier bias b.

    Raises:
        ValueError: shapes that do not match, or non-finite values.
    """
    stats = _checked(stats)
    means = stats.means  # (K, D) float64
    w = _check_weight(weight, *means.shape).to(means.device)
    b = torch.as_tensor(bias)
    if b.shape != (means.shape[0],):
        raise ValueError(f"bias must have shape ({means.shape[0]},), got {tuple(b.shape)}")
    if not bool(torch.isfinite(b).all()):
        raise ValueError("bias contains NaN or Inf")
    mu_g = means.mean(0)  # (D,) the mean of the class means, as the official analysis(): torch.mean(M, dim=1)
    return float(torch.linalg.vector_norm(w @ mu_g + b.to(means.device, torch.float64)))


register_metric(
    "nc4_bias", nc4_bias, needs=("weight", "bias"), family="NC4",
    definition="‖W μ_G + b‖₂, μ_G = mean of the class means (the logits of the global mean; → 0 under NC)",
    source="Harun, Gallardo & Kanan, ICML 2025 (official: yousuf907/NC-OOD nc_eval/nc_criteria.py, "
           "compute_Wh_b_relation)",
)
