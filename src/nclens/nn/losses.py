"""The losses of nclens, one registry with one meaning per name (:data:`LOSSES`, :func:`get_loss`).

Every loss takes logits z (N×K) and targets — class labels (N,) or multi-hot 0/1 rows (N×K) — and
returns the mean over samples of a per-sample loss (``reduction="mean"``), their sum (``"sum"``;
mean = sum/N, which exact DDP weighting relies on) or the per-sample vector (``"none"``).

=================  ==========================================  ===============================================
name               per-sample loss                              source
=================  ==========================================  ===============================================
``ce``             −log softmax(z)_y                            ``torch.nn.CrossEntropyLoss`` (label smoothing ε)
``mse``            (1/K) Σ_k (z_k − t_k)²                       ``torch.nn.MSELoss`` on one-hot t (mean over N·K);
                                                                Rangamani et al.'s official code
``mse_sum``        Σ_k (z_k − t_k)²                             K × ``mse`` (the 0.1 trainer's ``mse``)
``mse_half``       ½ Σ_k (z_k − t_k)²                           Han, Papyan & Donoho 2022 (UFM convention)
``pal``            Σ_{k∈Y} −log softmax(z)_k                    pick-all-label (Menon et al. 2019; Li et al. 2024)
``pal_normalized`` −(1/|Y|) Σ_{k∈Y} log softmax(z)_k            CE against Y/|Y| (0.5/0.5 targets for pairs)
``bce``            Σ_k −y_k log σ(z_k) − (1−y_k) log(1−σ(z_k))  one-vs-all binary CE
=================  ==========================================  ===============================================

For the MSE losses t = (1−ε) e_y + ε/K with label smoothing ε (or the given multi-hot rows).
PAL equals ``torch.nn.CrossEntropyLoss`` given the 0/1 rows as unnormalised probability targets,
and plain CE when every |Y| = 1.

Example:
    >>> import torch
    >>> from nclens.nn.losses import pick_all_label_ce
    >>> z = torch.tensor([[2.0, 0.0, 0.0]]); y = torch.tensor([[1, 1, 0]])
    >>> float(pick_all_label_ce(z, y)) == float(-torch.log_softmax(z, 1)[0, :2].sum())
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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
    "cross_entropy",
    "mse",
    "mse_sum",
    "mse_half",
    "LossSpec",
    "LOSSES",
    "get_loss",
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


def _class_targets(logits: Tensor, targets: Any) -> Tensor:
    """1-D integer class labels (N,) in [0, K) for single-label losses."""
    if not isinstance(targets, Tensor):
        targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be 1-D integer class labels (N,), got shape {tuple(targets.shape)} "
                         f"and dtype {targets.dtype}")
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets has {targets.shape[0]} entries, logits {logits.shape[0]} rows")
    k = logits.shape[1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= k):
        raise ValueError(f"class labels must lie in [0, {k - 1}], got [{int(targets.min())}, {int(targets.max())}]")
    return targets.long()


def _smoothed_targets(logits: Tensor, targets: Any, label_smoothing: float) -> Tensor:
    """(N, K) target rows: one-hot of class labels (or the given multi-hot rows), smoothed (1−ε)t + ε/K."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    k = logits.shape[1]
    if isinstance(targets, Tensor) and targets.ndim == 2:
        t = validate_multi_hot(targets, tuple(logits.shape), allow_empty=True)
    else:
        t = F.one_hot(_class_targets(logits, targets), k)
    t = t.to(device=logits.device, dtype=logits.dtype)
    return t * (1.0 - label_smoothing) + label_smoothing / k if label_smoothing else t


def cross_entropy(logits: Tensor, targets: Any, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Plain multi-class cross-entropy −log softmax(z)_y per sample (``F.cross_entropy``), label smoothing ε.

    ``mean`` is the mean over the N samples (``torch.nn.CrossEntropyLoss``).
    """
    logits = _check_logits(logits)
    per = F.cross_entropy(logits, _class_targets(logits, targets).to(logits.device),
                          label_smoothing=label_smoothing, reduction="none")
    return _reduce(per, reduction)


def mse(logits: Tensor, targets: Any, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """PyTorch's ``nn.MSELoss`` convention on one-hot targets: per sample (1/K) Σ_k (z_k − t_k)².

    ``mean`` over samples is then the mean over all N·K entries, exactly ``nn.MSELoss()(z, onehot(y))``
    (the loss of Rangamani et al.'s official code). t = (1−ε) e_y + ε/K with label smoothing ε;
    ``targets`` may also be multi-hot rows (N, K).
    """
    logits = _check_logits(logits)
    per = (logits - _smoothed_targets(logits, targets, label_smoothing)).square().mean(dim=1)
    return _reduce(per, reduction)


def mse_sum(logits: Tensor, targets: Any, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Squared error summed over classes, Σ_k (z_k − t_k)² per sample (K × :func:`mse`); nclens 0.1's ``mse``."""
    logits = _check_logits(logits)
    per = (logits - _smoothed_targets(logits, targets, label_smoothing)).square().sum(dim=1)
    return _reduce(per, reduction)


def mse_half(logits: Tensor, targets: Any, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """½ Σ_k (z_k − t_k)² per sample (Han, Papyan & Donoho 2022; the unconstrained-feature-model convention)."""
    logits = _check_logits(logits)
    per = 0.5 * (logits - _smoothed_targets(logits, targets, label_smoothing)).square().sum(dim=1)
    return _reduce(per, reduction)


def _no_smoothing(fn):  # noqa: ANN001, ANN202 - wraps a multi-label loss for the common signature
    def wrapped(logits: Tensor, targets: Any, reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
        if label_smoothing:
            raise ValueError(f"{fn.__name__} takes no label smoothing, got label_smoothing={label_smoothing!r}")
        return fn(logits, targets, reduction)

    wrapped.__name__, wrapped.__doc__ = fn.__name__, fn.__doc__
    return wrapped


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: ``fn(logits, targets, reduction="mean", label_smoothing=0.0)``.

    ``reduction="sum"`` is the sum over samples of the per-sample loss (so ``mean = sum / N``, which
    exact DDP weighting relies on); ``"none"`` the per-sample vector.
    """

    name: str
    fn: Callable[..., Tensor]
    targets: str  #: "class" (N,) integer labels, "multi_hot" (N, K) 0/1 rows, or "either"
    definition: str
    source: str


#: The losses of nclens by name — one meaning per name (the definition is the per-sample loss; batch = mean over N).
LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("ce", cross_entropy, "class", "−log softmax(z)_y", "torch.nn.CrossEntropyLoss"),
        LossSpec("mse", mse, "either", "(1/K) Σ_k (z_k − t_k)² (mean over N·K entries)",
                 "torch.nn.MSELoss; Rangamani et al. 2023 official code"),
        LossSpec("mse_sum", mse_sum, "either", "Σ_k (z_k − t_k)²", "nclens 0.1 trainer's 'mse'"),
        LossSpec("mse_half", mse_half, "either", "½ Σ_k (z_k − t_k)²", "Han, Papyan & Donoho 2022"),
        LossSpec("pal", _no_smoothing(pick_all_label_ce), "multi_hot", "Σ_{k∈Y} −log softmax(z)_k",
                 "Li et al. 2024 (pick-all-label)"),
        LossSpec("pal_normalized", _no_smoothing(normalized_pick_all_label_ce), "multi_hot",
                 "−(1/|Y|) Σ_{k∈Y} log softmax(z)_k (CE against Y/|Y|)", "Li et al. 2024 official code"),
        LossSpec("bce", _no_smoothing(binary_cross_entropy), "multi_hot",
                 "Σ_k −y_k log σ(z_k) − (1 − y_k) log(1 − σ(z_k))", "one-vs-all"),
    )
}


def get_loss(name: str) -> Callable[..., Tensor]:
    """The loss function registered as ``name``; an unknown name is an error listing the valid ones."""
    try:
        return LOSSES[name].fn
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}") from None
