"""Losses: PAL against torch's CrossEntropyLoss and per-label CE; BCE, normalised PAL, MSE; input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nclens.nn.losses import (
    LOSSES,
    PickAllLabelLoss,
    binary_cross_entropy,
    get_loss,
    normalized_pick_all_label_ce,
    one_hot_mse,
    pick_all_label_ce,
)


def _data(n: int = 64, k: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = 3.0 * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = (torch.rand(n, k, generator=g) < 0.3).long()
    y[torch.arange(n), torch.randint(0, k, (n,), generator=g)] = 1  # non-empty sets
    return z, y


def test_pal_equals_torch_cross_entropy_with_multi_hot_targets():
    z, y = _data()
    ref = torch.nn.CrossEntropyLoss()(z, y.double())
    assert torch.allclose(pick_all_label_ce(z, y), ref, rtol=1e-13, atol=0)
    assert torch.allclose(pick_all_label_ce(z, y.bool(), reduction="sum"),
                          torch.nn.CrossEntropyLoss(reduction="sum")(z, y.double()), rtol=1e-13)


def test_pal_equals_sum_of_per_label_cross_entropies():
    z, y = _data(seed=1)
    rows, cols = y.nonzero(as_tuple=True)  # one CE term per (sample, positive label)
    per_term = F.cross_entropy(z[rows], cols, reduction="none")
    ref = torch.zeros(z.shape[0], dtype=torch.float64).index_add_(0, rows, per_term)
    assert torch.allclose(pick_all_label_ce(z, y, reduction="none"), ref, rtol=1e-13)


def test_pal_reduces_to_multiclass_ce_and_has_closed_form_gradient():
    z, _ = _data(seed=2)
    labels = torch.arange(z.shape[0]) % z.shape[1]
    onehot = F.one_hot(labels, z.shape[1])
    assert torch.allclose(pick_all_label_ce(z, onehot), F.cross_entropy(z, labels), rtol=1e-13)
    # d/dz Σ_{k∈Y} −log softmax(z)_k = |Y| softmax(z) − y (per sample; batch mean divides by N)
    z, y = _data(seed=3)
    zz = z.clone().requires_grad_(True)
    pick_all_label_ce(zz, y).backward()
    expected = (y.sum(1, keepdim=True) * torch.softmax(z, 1) - y) / z.shape[0]
    assert torch.allclose(zz.grad, expected, atol=1e-15)


def test_normalized_variant_bce_and_mse_against_references():
    z, y = _data(seed=4)
    m = y.sum(1).double()
    assert torch.allclose(normalized_pick_all_label_ce(z, y, reduction="none"),
                          pick_all_label_ce(z, y, reduction="none") / m, rtol=1e-13)
    assert torch.allclose(normalized_pick_all_label_ce(z, y),
                          torch.nn.CrossEntropyLoss()(z, y.double() / m[:, None]), rtol=1e-13)
    p = torch.sigmoid(z)
    bce_ref = -(y * torch.log(p) + (1 - y) * torch.log1p(-p)).sum(1).mean()
    assert torch.allclose(binary_cross_entropy(z, y), bce_ref, rtol=1e-10)
    assert torch.allclose(one_hot_mse(z, y), 0.5 * ((z - y) ** 2).sum(1).mean(), rtol=1e-13)
    labels = torch.arange(z.shape[0]) % z.shape[1]
    assert torch.allclose(one_hot_mse(z, labels), one_hot_mse(z, F.one_hot(labels, z.shape[1])), rtol=1e-14)
    assert torch.allclose(PickAllLabelLoss()(z, y), pick_all_label_ce(z, y))
    assert torch.allclose(PickAllLabelLoss(normalized=True)(z, y), normalized_pick_all_label_ce(z, y))


def test_loss_registry_one_meaning_per_name():
    """Each registered name against an independent reference: torch's own modules or float64 formulas."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(9, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (9,), generator=g)
    onehot = F.one_hot(y, 5).double()
    assert set(LOSSES) == {"ce", "mse", "mse_sum", "mse_half", "pal", "pal_normalized", "bce"}
    assert torch.allclose(get_loss("ce")(z, y), torch.nn.CrossEntropyLoss()(z, y), rtol=1e-14)
    assert torch.allclose(get_loss("ce")(z, y, label_smoothing=0.1),
                          torch.nn.CrossEntropyLoss(label_smoothing=0.1)(z, y), rtol=1e-14)
    assert torch.allclose(get_loss("mse")(z, y), torch.nn.MSELoss()(z, onehot), rtol=1e-14)  # mean over N·K
    assert torch.allclose(get_loss("mse_sum")(z, y), ((z - onehot) ** 2).sum(1).mean(), rtol=1e-14)
    assert torch.allclose(get_loss("mse_half")(z, y), 0.5 * ((z - onehot) ** 2).sum(1).mean(), rtol=1e-14)
    smooth = onehot * 0.8 + 0.2 / 5
    assert torch.allclose(get_loss("mse")(z, y, label_smoothing=0.2), torch.nn.MSELoss()(z, smooth), rtol=1e-14)
    # sum = N * mean for every loss (what exact DDP weighting relies on)
    for name, spec in LOSSES.items():
        targets = onehot.long() if spec.targets == "multi_hot" else y
        fn = get_loss(name)
        assert torch.allclose(fn(z, targets, reduction="sum"), 9 * fn(z, targets), rtol=1e-13), name
    with pytest.raises(ValueError, match="unknown loss 'hinge'; valid losses: ce, mse"):
        get_loss("hinge")
    with pytest.raises(ValueError, match="takes no label smoothing"):
        get_loss("pal")(z, onehot, label_smoothing=0.1)


def test_bad_inputs_are_clear_errors():
    z, y = _data(n=4, k=3)
    empty = y.clone()
    empty[2] = 0
    with pytest.raises(ValueError, match="empty label set"):
        pick_all_label_ce(z, empty)
    with pytest.raises(ValueError, match="0/1"):
        pick_all_label_ce(z, y.double() * 0.5 + 0.5 * y.double() + 0.3)
    with pytest.raises(ValueError, match="shape"):
        pick_all_label_ce(z, y[:, :2])
    with pytest.raises(TypeError, match="floating"):
        pick_all_label_ce(z.long(), y)
    with pytest.raises(ValueError, match="reduction"):
        pick_all_label_ce(z, y, reduction="avg")
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        one_hot_mse(z, torch.tensor([0, 1, 3, 0]))
    # BCE accepts an empty label set (all-negative samples are meaningful there)
    assert torch.isfinite(binary_cross_entropy(z, empty))
