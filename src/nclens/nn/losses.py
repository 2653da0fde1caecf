"""Classification losses for neural-collapse studies: pick-all-label CE, BCE, normalised CE, one-hot MSE.

All losses take logits z (N×K) and targets; multi-label targets are multi-hot 0/1 rows (N×K, any
numeric or boolean dtype). Every loss returns the batch mean of a per-sample loss (``reduction=
"mean"``), their sum (``"sum"``) or the per-sample vector (``"none"``).

* **Pick-all-label CE** (PAL; Menon et al. 2019, Li et al. ICML 2024): for a sample with label set Y,

      L_PAL(z, Y) = Σ_{k∈Y} −log softmax(z)_k = |Y| · logsumexp(z) − Σ_{k∈Y} z_k,

  i.e. the sum of one multi-class CE term per positive label. It equals
  ``torch.nn.CrossEntropyLoss`` given the 0/1 multi-hot rows as (unnormalised) probability
  targets, and the multi-class CE when every |Y| = 1.
* **Normalised PAL** (a.k.a. soft-target CE): CE against the target distribution Y/|Y|,
  L = −(1/|Y|) Σ_{k∈Y} log softmax(z)_k = L_PAL/|Y|.
* **Binary CE** (one-vs-all): Σ_k BCE(σ(z_k), y_k) summed over the K labels.
* **One-hot MSE**: ½‖z − y‖² (Han, Papyan & Donoho 2022 with y one-hot or multi-hot).

Example:
    >>> import torch
    >>> from nclens.nn.losses import pick_all_label_ce
    >>> z = torch.tensor([[2.0, 0.0, 0.0]]); y = torch.tensor([[1, 1, 0]])
    >>> float(pick_all_label_ce(z, y)) == float(-torch.log_softmax(z, 1)[0, :2].sum())
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nclens.core.multilabel import validate_multi_hot

__all__ = [
    "validate_multi_hot",
    "pick_all_label_ce",
    "normalized_pick_all_label_ce",
    "binary_cross_entropy",
    "one_hot_mse",
    "PickAllLabelLoss",
    "LOSSES",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_logits(logits: Any) -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (N×K), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
    return logits


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def pick_all_label_ce(logits: Tensor, targets: Any, reduction: str = "mean") -> Tensor:
    """Pick-all-label cross-entropy Σ_{k∈Y} −log softmax(z)_k (Li et al. 2024, eq. PAL-CE).

    Args:
        logits: (N, K) scores z.
        targets: (N, K) multi-hot 0/1 label sets Y (non-empty rows).
        reduction: ``"mean"`` (batch mean, the default), ``"sum"`` or ``"none"`` (per sample).

    Returns:
        the reduced loss; per sample |Y|·logsumexp(z) − Σ_{k∈Y} z_k.

    Example:
        >>> import torch
        >>> z, y = torch.randn(5, 4), torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0]] + [[0, 0, 0, 1]] * 3)
        >>> torch.allclose(pick_all_label_ce(z, y), torch.nn.CrossEntropyLoss()(z, y.float()))
        True
    """
    logits = _check_logits(logits)
    y = validate_multi_hot(targets, tuple(logits.shape)).to(device=logits.device, dtype=logits.dtype)
    per_sample = -(y * torch.log_softmax(logits, dim=1)).sum(dim=1)  # (N,)
    return _reduce(per_sample, reduction)


def normalized_pick_all_label_ce(logits: Tensor, targets: Any, reduction: str = "mean") -> Tensor:
    """CE against the normalised target distribution Y/|Y|: −(1/|Y|) Σ_{k∈Y} log softmax(z)_k.

    Equals :func:`pick_all_label_ce` divided by |Y| per sample; the multi-class CE for |Y| = 1.
    """
    logits = _check_logits(logits)
    y = validate_multi_hot(targets, tuple(logits.shape)).to(device=logits.device, dtype=logits.dtype)
    y = y / y.sum(dim=1, keepdim=True)  # (N, K) rows sum to 1
    per_sample = -(y * torch.log_softmax(logits, dim=1)).sum(dim=1)
    return _reduce(per_sample, reduction)


def binary_cross_entropy(logits: Tensor, targets: Any, reduction: str = "mean") -> Tensor:
    """One-vs-all binary CE Σ_k [−y_k log σ(z_k) − (1−y_k) log(1−σ(z_k))] per sample.

    A thin wrapper of ``F.binary_cross_entropy_with_logits`` (numerically stable) that sums over
    labels and reduces over samples, so its scale matches :func:`pick_all_label_ce`. Empty label
    sets are allowed here (a sample with no positive label is meaningful for BCE).
    """
    logits = _check_logits(logits)
    y = validate_multi_hot(targets, tuple(logits.shape), allow_empty=True)
    y = y.to(device=logits.device, dtype=logits.dtype)
    per_sample = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(dim=1)
    return _reduce(per_sample, reduction)


def one_hot_mse(logits: Tensor, targets: Any, reduction: str = "mean") -> Tensor:
    """½‖z − y‖² per sample with y the one-hot (or multi-hot) target row (Han et al. 2022).

    ``targets`` may also be a 1-D integer class vector (N,), converted to one-hot.
    """
    logits = _check_logits(logits)
    if isinstance(targets, Tensor) and targets.ndim == 1:
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise TypeError(f"1-D targets must be integer class labels, got dtype {targets.dtype}")
        k = logits.shape[1]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= k):
            raise ValueError(f"class labels must lie in [0, {k - 1}], got [{int(targets.min())}, {int(targets.max())}]")
        if targets.shape[0] != logits.shape[0]:
            raise ValueError(f"targets has {targets.shape[0]} entries, logits {logits.shape[0]} rows")
        y = F.one_hot(targets.long(), k)
    else:
        y = validate_multi_hot(targets, tuple(logits.shape), allow_empty=True)
    y = y.to(device=logits.device, dtype=logits.dtype)
    per_sample = 0.5 * (logits - y).square().sum(dim=1)
    return _reduce(per_sample, reduction)


class PickAllLabelLoss(torch.nn.Module):
    """``nn.Module`` wrapper of :func:`pick_all_label_ce` (or of its ``normalized`` variant)."""

    def __init__(self, normalized: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.normalized = bool(normalized)
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        fn = normalized_pick_all_label_ce if self.normalized else pick_all_label_ce
        return fn(logits, targets, self.reduction)


#: Multi-label losses by name (used by configs and the UFM CLI).
LOSSES = {
    "pal": pick_all_label_ce,
    "ce": normalized_pick_all_label_ce,
    "bce": binary_cross_entropy,
    "mse": one_hot_mse,
}
