"""The layer-peeled simulator's extensions: losses of the registry, imbalance, fixed-norm shifts, W₀, several
steps, the exact reduced basis, and the general one-step closed form against Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch

from nclens.core.geometry import simplex_etf
from nclens.nn.losses import LOSSES
from nclens.privacy import (
    SIM_LOSSES,
    SimulationConfig,
    class_counts,
    closed_form_error,
    error_from_thresholds,
    loss_residual,
    noisy_gd_linear,
    one_step_error,
    one_step_threshold,
    one_step_thresholds,
    simulate_noisy_gd,
)


@pytest.mark.parametrize("loss", SIM_LOSSES)
def test_residual_is_the_registry_loss_gradient(loss):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    LOSSES[loss].fn(z, y, reduction="sum").backward()  # sum over samples: row i = ∂ℓ_i/∂z_i
    onehot = torch.nn.functional.one_hot(y, 4).double()
    assert torch.allclose(loss_residual(z.detach(), onehot, loss), z.grad, atol=1e-12)


def test_class_counts():
    assert class_counts(4, 40) == (10,) * 4
    counts = class_counts(10, 100, imbalance=10.0)
    assert sum(counts) == 100 and list(counts) == sorted(counts, reverse=True)
    assert 7 <= counts[0] / counts[-1] <= 14  # about ρ after rounding
    with pytest.raises(ValueError, match="multiple of K"):
        class_counts(3, 31)
    with pytest.raises(ValueError, match="imbalance"):
        class_counts(3, 30, imbalance=0.5)
    with pytest.raises(ValueError, match="empty"):
        class_counts(5, 6, imbalance=50.0)


def test_general_closed_form_reduces_to_the_balanced_etf_form():
    k, n, sigma = 10, 100, 5.0
    m = simplex_etf(k, 40, radius=1.0, seed=3)
    for clip in (1.0, 0.3):  # unclipped and clipped CE
        t = one_step_thresholds(m, [n // k] * k, noise_multiplier=sigma, clip=clip)
        off = t[~torch.eye(k, dtype=torch.bool)]
        assert torch.allclose(off, torch.full_like(off, one_step_threshold(k, n, sigma, clip)), rtol=1e-12)
        assert one_step_error(m, [n // k] * k, noise_multiplier=sigma, clip=clip) == pytest.approx(
            closed_form_error(one_step_threshold(k, n, sigma, clip), k), abs=1e-12)
    # MSE: α = min(c, C/r); clipped MSE losses all give t = n/((K−1)σ) whatever their scale c
    for loss, c in (("mse_sum", 2.0), ("mse_half", 1.0), ("mse", 2.0 / k)):
        for clip in (0.05, 5.0):
            t = one_step_thresholds(m, [n // k] * k, noise_multiplier=sigma, clip=clip, loss=loss)[0, 1]
            assert float(t) == pytest.approx(min(c, clip) * n / ((k - 1) * sigma * clip), rel=1e-12)
    # K = 2: 1 − Φ(t/√2) per class
    from scipy import stats

    t2 = torch.tensor([[0.0, 1.3], [0.4, 0.0]])
    assert error_from_thresholds(t2) == pytest.approx((stats.norm.sf(1.3 / 2**0.5) + stats.norm.sf(0.4 / 2**0.5)) / 2)


@pytest.mark.parametrize("extra", [
    dict(imbalance=4.0),
    dict(loss="mse"),
    dict(loss="mse_sum", clip=0.5, imbalance=3.0),
    dict(init_norm=2.0, lr=0.5),
    dict(init_norm=2.0, lr=3.0, loss="mse_half"),
    dict(perturb_kind="structured", shift_norm=1.0, dim=60),
    dict(offset=0.7, dim=20, normalise=True),
], ids=["imbalance", "mse", "mse_sum-clipped", "W0-lr0.5", "W0-lr3-mse_half", "structured", "offset-normalised"])
def test_one_step_closed_form_matches_monte_carlo(extra):
    cfg = SimulationConfig(**{**dict(num_classes=5, dim=10, samples=50, noise_multiplier=4.0, clip=1.0,
                                     trials=3000, test_per_class=4, seed=1), **extra})
    res = simulate_noisy_gd(cfg)
    assert res.error_closed_form is not None and res.error_large_p is None
    assert abs(res.error - res.error_closed_form) < 3.5 * res.error_stderr + 1e-3
    assert 0.01 < res.error_closed_form < 0.95  # a non-trivial regime


def test_reduced_basis_equals_the_full_dimensional_run():
    g = torch.Generator().manual_seed(0)
    n, m, p, k, steps, trials = 12, 6, 80, 3, 3, 4
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    xt = torch.randn(m, p, generator=g, dtype=torch.float64)
    y = torch.arange(n) % k
    init = torch.randn(k, p, generator=g, dtype=torch.float64)
    z = torch.randn(steps, trials, k, p, generator=g, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.cat([x, xt]).T)  # (p, n+m)
    for loss in ("ce", "mse"):
        common = dict(steps=steps, lr=0.7, clip=0.5, noise_multiplier=2.0, trials=trials, generator=g, loss=loss)
        full = noisy_gd_linear(x, y, k, init=init, noise=z, **common)
        reduced = noisy_gd_linear(x @ basis, y, k, init=init @ basis, noise=z @ basis, **common)
        assert torch.allclose(torch.einsum("mp,tkp->tmk", xt, full),
                              torch.einsum("mp,tkp->tmk", xt @ basis, reduced), atol=1e-10)


def test_exact_features_are_dimension_independent_for_any_loss_steps_imbalance():
    common = dict(num_classes=5, samples=50, noise_multiplier=6.0, clip=1.0, trials=1500, test_per_class=4, seed=2,
                  steps=5, lr=2.0, imbalance=3.0, loss="mse_sum")
    small, big = (simulate_noisy_gd(SimulationConfig(dim=d, **common)) for d in (5, 5000))
    assert abs(small.error - big.error) <= 3.5 * math.hypot(small.error_stderr, big.error_stderr)
    assert small.error_closed_form is None  # several steps: Monte Carlo only


def test_fixed_norm_shift_approaches_its_large_p_form_and_hurts_dp_more_than_non_private():
    common = dict(num_classes=10, samples=100, noise_multiplier=5.0, clip=1.0, trials=1000, test_per_class=5, seed=0)
    exact = simulate_noisy_gd(SimulationConfig(dim=2000, **common))
    shifted = simulate_noisy_gd(SimulationConfig(dim=20000, shift_norm=1.0, **common))
    assert shifted.error_large_p is not None and shifted.error_closed_form is None
    assert abs(shifted.error - shifted.error_large_p) < 4 * shifted.error_stderr + 0.01
    assert shifted.error > exact.error_closed_form + 0.2  # DP error grows with β ...
    assert shifted.error_nonprivate == 0.0  # ... the non-private head is unaffected
    # per-coordinate τ: the shift norm τ√p grows with p and the p → ∞ form follows E‖δ‖² = τ²p
    tau = simulate_noisy_gd(SimulationConfig(dim=400, perturb=0.05, **common))
    same = one_step_error(simplex_etf(10, 400, seed=0), [10] * 10, noise_multiplier=5.0, clip=1.0,
                          extra_sq_norm=0.05**2 * 400)
    assert tau.error_large_p == pytest.approx(same, rel=1e-9)


def test_simulation_config_refuses_bad_values():
    with pytest.raises(ValueError, match="not both"):
        SimulationConfig(perturb=0.1, shift_norm=1.0)
    with pytest.raises(ValueError, match="loss"):
        SimulationConfig(loss="pal")
    with pytest.raises(ValueError, match="init_norm"):
        SimulationConfig(init_norm=-1.0)
    with pytest.raises(ValueError, match="shift_norm"):
        SimulationConfig(shift_norm=float("nan"))
    with pytest.raises(ValueError, match="imbalance"):
        SimulationConfig(imbalance=0.0)
    with pytest.raises(ValueError, match="noise_multiplier > 0"):
        one_step_thresholds(simplex_etf(3, 4), [2, 2, 2], noise_multiplier=0.0, clip=1.0)


def test_gram_pca_equals_the_svd_pca():
    from nclens.privacy.simulate import _pca_fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 300, generator=g, dtype=torch.float64) * torch.linspace(3.0, 0.1, 300)
    mean, comps = _pca_fit(x, 6)  # p > n: through the Gram matrix
    _, _, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    assert torch.allclose(mean, x.mean(0))
    assert torch.allclose((comps @ vh[:6].T).abs(), torch.eye(6, dtype=torch.float64), atol=1e-9)
    mean_t, comps_t = _pca_fit(x[:, :20], 6)  # p <= n: the SVD itself
    assert comps_t.shape == (6, 20)
    with pytest.raises(ValueError, match="public samples"):
        _pca_fit(x[:5], 6)


def _centres_and_head(cfg):
    from nclens.privacy.simulate import _initial_head, layer_peeled_model

    model = layer_peeled_model(cfg)
    centres = model.means + model.offset + model.class_shift  # (K, p)
    return model, centres, _initial_head(cfg, centres)


def test_structured_shifts_have_norm_beta_and_the_same_geometry_for_every_p():
    grams, shifts, closed = [], [], []
    for p in (10, 300, 20000):
        cfg = SimulationConfig(num_classes=10, dim=p, samples=100, noise_multiplier=5.0, clip=1.0, trials=2,
                               perturb_kind="structured", shift_norm=0.5, seed=3)
        model, centres, _ = _centres_and_head(cfg)
        assert torch.allclose(model.class_shift.norm(dim=1), torch.full((10,), 0.5, dtype=torch.float64), rtol=1e-12)
        # v_c lies in span(μ): removing the projection on the ETF's span leaves nothing
        q, _ = torch.linalg.qr(model.means.T)
        assert float((model.class_shift - (model.class_shift @ q) @ q.T).norm()) < 1e-12
        res = simulate_noisy_gd(cfg)
        grams.append(centres @ centres.T)
        shifts.append(res.feature_shift)
        closed.append(res.error_closed_form)
    assert all(torch.allclose(g, grams[0], atol=1e-12) for g in grams)
    assert shifts[0] > 0.05 and max(shifts) - min(shifts) < 1e-9  # a real shift, the same at every p
    assert max(closed) - min(closed) < 1e-9


def test_initial_head_has_norm_eta_lies_in_the_features_span_and_acts_the_same_for_every_p():
    scores, closed = [], []
    for p in (10, 400, 20000):
        cfg = SimulationConfig(num_classes=10, dim=p, samples=100, noise_multiplier=5.0, clip=1.0, trials=2,
                               init_norm=3.0, seed=1)
        _, centres, w0 = _centres_and_head(cfg)
        assert float(w0.norm()) == pytest.approx(3.0, rel=1e-12)
        q, _ = torch.linalg.qr(centres.T)  # (p, K) holds span(centres)
        assert float((w0 - (w0 @ q) @ q.T).norm()) < 1e-10
        scores.append(w0 @ centres.T)  # (K, K) initial scores of the class centres
        closed.append(simulate_noisy_gd(cfg).error_closed_form)
    assert all(torch.allclose(s, scores[0], atol=1e-12) for s in scores)
    assert max(closed) - min(closed) < 1e-9
    assert closed[0] > simulate_noisy_gd(SimulationConfig(num_classes=10, dim=10, samples=100, noise_multiplier=5.0,
                                                          clip=1.0, trials=2, seed=1)).error_closed_form + 0.05


def test_noise_draws_are_independent_across_dimensions():
    common = dict(num_classes=5, samples=50, noise_multiplier=4.0, clip=1.0, trials=400, test_per_class=4, seed=0)
    a, b = (simulate_noisy_gd(SimulationConfig(dim=d, **common)) for d in (200, 2000))  # same reduced basis size
    assert a.error_closed_form == pytest.approx(b.error_closed_form, abs=1e-12)
    assert a.error != b.error  # different noise streams (the old shared stream gave equal errors here)
    for r in (a, b):
        assert abs(r.error - r.error_closed_form) < 3.5 * r.error_stderr + 1e-3
    again = simulate_noisy_gd(SimulationConfig(dim=200, **common))
    assert again.error == a.error  # and seeded
