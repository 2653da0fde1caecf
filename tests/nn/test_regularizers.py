"""KoLeo entropy regulariser: hand-computed configurations, invariances, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from nclens.nn.regularizers import KoLeoLoss, koleo_loss, nearest_neighbour_distances


def _on_circle(degrees: list[float], radii: list[float] | None = None) -> torch.Tensor:
    t = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    r = torch.ones_like(t) if radii is None else torch.tensor(radii, dtype=torch.float64)
    return torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)


def test_square_hand_computed():
    # four points at 0°, 90°, 180°, 270°: every nearest neighbour is at chord √2
    x = _on_circle([0, 90, 180, 270])
    assert float(koleo_loss(x, eps=0.0)) == pytest.approx(-math.log(math.sqrt(2.0)), abs=1e-12)


def test_asymmetric_hand_computed_with_scales():
    # angles 0°, 60°, 180° (chords 2 sin(Δ/2)): NN distances 1 (0↔60), 1 (60↔0), √3 (180→60)
    # radii differ: the loss normalises first, so they must not matter
    x = _on_circle([0, 60, 180], radii=[0.3, 5.0, 2.0])
    expected = -(math.log(1.0) + math.log(1.0) + math.log(math.sqrt(3.0))) / 3
    assert float(koleo_loss(x, eps=0.0)) == pytest.approx(expected, abs=1e-12)
    d, idx = nearest_neighbour_distances(x)
    assert idx.tolist() == [1, 0, 1]
    assert torch.allclose(d, torch.tensor([1.0, 1.0, math.sqrt(3.0)], dtype=torch.float64))


def test_eps_inside_the_log():
    x = _on_circle([0, 60, 180])
    eps = 0.25
    expected = -(2 * math.log(1.0 + eps) + math.log(math.sqrt(3.0) + eps)) / 3
    assert float(koleo_loss(x, eps=eps)) == pytest.approx(expected, abs=1e-12)


def test_matches_brute_force_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(37, 6, generator=g, dtype=torch.float64)
    z = x / x.norm(dim=1, keepdim=True)
    d = torch.cdist(z, z) + torch.diag(torch.full((37,), float("inf"), dtype=torch.float64))
    ref = -torch.log(d.min(dim=1).values + 1e-8).mean()
    assert float(koleo_loss(x)) == pytest.approx(float(ref), rel=1e-10)


def test_invariant_to_rotation_permutation_and_positive_scaling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    perm = torch.randperm(20, generator=g)
    scale = torch.rand(20, 1, generator=g, dtype=torch.float64) + 0.1
    base = float(koleo_loss(x))
    assert float(koleo_loss(x @ q)) == pytest.approx(base, rel=1e-10)
    assert float(koleo_loss(x[perm])) == pytest.approx(base, rel=1e-10)
    assert float(koleo_loss(x * scale)) == pytest.approx(base, rel=1e-10)


def test_spreading_lowers_the_loss_and_gradient_descent_spreads():
    g = torch.Generator().manual_seed(1)
    tight = torch.randn(16, 8, generator=g) * 0.05 + torch.ones(8)
    spread = torch.randn(16, 8, generator=g)
    assert float(koleo_loss(tight)) > float(koleo_loss(spread))
    x = tight.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.05)
    start = koleo_loss(x).item()
    for _ in range(20):
        opt.zero_grad()
        koleo_loss(x).backward()
        opt.step()
    assert koleo_loss(x).item() < start


def test_gradient_matches_finite_differences_and_duplicates_stay_finite():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: koleo_loss(t, eps=1e-3), (x,))
    dup = torch.cat([x.detach(), x.detach()[:1]]).requires_grad_(True)
    loss = koleo_loss(dup, eps=1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(dup.grad).all()


def test_module_weight_and_errors():
    x = torch.randn(5, 3)
    assert float(KoLeoLoss(weight=0.3)(x)) == pytest.approx(0.3 * float(koleo_loss(x)), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 samples"):
        koleo_loss(torch.randn(1, 3))
    with pytest.raises(ValueError, match="2-D"):
        koleo_loss(torch.randn(4))
    with pytest.raises(TypeError, match="floating"):
        koleo_loss(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="eps"):
        koleo_loss(x, eps=-1.0)
    with pytest.raises(ValueError, match="weight"):
        KoLeoLoss(weight=-0.1)
