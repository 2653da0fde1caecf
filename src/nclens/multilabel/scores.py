"""Test scores of multi-label logits: Li et al.'s IoU (as their code computes it), mAP, example-based F1; logit gaps.

* ``iou`` — ``iou_measure`` of ``utility.py`` (github.com/Heimine/NC_MLab), averaged over samples as
  ``train_param_eff.py`` does (sum over the set / number of samples)::

      iou_i = (Σ_k softmax(z_i)_k · y_ik/|Y_i|) / 2 · |Y_i| · 2  =  Σ_{k∈Y_i} softmax(z_i)_k

  (the softmax mass on the true label set; PAL's optimum puts mass 1/m on each of the m tags).
* ``map`` — macro average precision of the softmax scores over tags with a positive sample
  (``sklearn.metrics.average_precision_score``).
* ``f1`` — example-based F1 of the predicted set P_i = {k : p_ik ≥ r·max_j p_ij} (r = ``f1_ratio``).

Example:
    >>> import torch
    >>> z = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.45, 0.45, 0.1]])); y = torch.tensor([[1, 0, 0], [1, 1, 0]])
    >>> round(multilabel_scores(z, y)["iou"], 6)
    0.8
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["iou_li", "multilabel_scores", "singleton_logit_gap"]


def iou_li(logits: Tensor, targets: Tensor) -> Tensor:
    """(N,) ``iou_measure`` of the official ``utility.py``, transcribed (targets 0/1 or 0.5/0.5 alike)."""
    num_class_sample = (targets != 0).sum(dim=1)  # tags per sample
    pred_prob = torch.softmax(logits.double(), dim=1)
    target = targets.double()
    target_prob = torch.nan_to_num(target / target.sum(dim=1)[:, None])
    iou = (pred_prob * target_prob).sum(dim=1) / 2
    return iou * num_class_sample * 2


def multilabel_scores(logits: Tensor, targets: Tensor, f1_ratio: float = 0.5) -> dict[str, float]:
    """``{"map", "f1", "iou"}`` of logits (N, K) against multi-hot targets (N, K) (module docstring)."""
    from sklearn.metrics import average_precision_score

    probs = torch.softmax(logits.double(), dim=1).cpu()
    y = (targets != 0).to(torch.float64).cpu()
    has_pos = y.sum(0) > 0
    ap = average_precision_score(y[:, has_pos].numpy(), probs[:, has_pos].numpy(), average="macro")
    pred = (probs >= f1_ratio * probs.max(dim=1, keepdim=True).values).to(torch.float64)
    inter = (pred * y).sum(1)
    f1 = (2 * inter / (pred.sum(1) + y.sum(1))).mean()
    return {"map": float(ap), "f1": float(f1), "iou": float(iou_li(logits, targets).mean())}


def singleton_logit_gap(logits: Tensor, targets: Tensor) -> float:
    """Mean over single-label samples of δ_1 = z_y − mean_{k≠y} z_k (the UFM's singleton logit gap); NaN if none."""
    y = (targets != 0)
    single = y.sum(1) == 1
    if not bool(single.any()):
        return float("nan")
    z, t = logits[single].double(), y[single]
    k = z.shape[1]
    z_in = (z * t).sum(1)
    return float((z_in - (z.sum(1) - z_in) / (k - 1)).mean())
