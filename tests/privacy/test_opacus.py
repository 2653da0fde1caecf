"""Private heads through Opacus: NoisyGD accounting = Gaussian RDP α/(2σ²) per step, clipping, seeding, ε targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

opacus = pytest.importorskip("opacus")

from nclens.data import gaussian_features  # noqa: E402
from nclens.privacy import (  # noqa: E402
    PrivateHeadConfig,
    PrivateLinearHead,
    gaussian_rdp,
    noisy_gd_epsilon,
    noisy_gd_linear,
    train_private_head,
)


@pytest.fixture(scope="module")
def feats():
    return gaussian_features(num_classes=4, dim=8, per_class=50, sigma=0.3, seed=0)


def test_opacus_full_batch_rdp_is_alpha_over_two_sigma_squared():
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    for sigma, steps in ((0.8, 1), (2.5, 40)):
        orders = [1.5, 2.0, 8.0, 40.0]
        rdp = compute_rdp(q=1.0, noise_multiplier=sigma, steps=steps, orders=orders)
        assert np.allclose(rdp, [gaussian_rdp(a, noise_multiplier=sigma, steps=steps) for a in orders], rtol=1e-12)
        acc = RDPAccountant()
        acc.history = [(sigma, 1.0, steps)]
        assert acc.get_epsilon(1e-5) == pytest.approx(noisy_gd_epsilon(sigma, steps=steps, delta=1e-5), rel=1e-12)


def test_noisygd_run_accounts_one_gaussian_mechanism_per_step(feats):
    cfg = PrivateHeadConfig(algorithm="noisygd", epochs=7, noise_multiplier=1.3, delta=1e-5, seed=0)
    res = train_private_head(feats.features, feats.labels, cfg)
    assert res.sample_rate == 1.0 and res.steps == 7 and res.noise_multiplier == 1.3
    assert res.epsilon == pytest.approx(noisy_gd_epsilon(1.3, steps=7, delta=1e-5), rel=1e-12)


@pytest.mark.filterwarnings("ignore:.*(Secure RNG|Full backward hook).*")
def test_opacus_clipped_step_equals_reference_noisy_gd(feats):
    # σ → 0: Opacus' clipped, averaged gradient step equals the simulator's NoisyGD (no bias, W_0 = 0)
    from opacus import PrivacyEngine

    x, y = feats.features.double(), feats.labels
    head = torch.nn.Linear(8, 4, bias=False).double()
    torch.nn.init.zeros_(head.weight)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=x.shape[0])
    model, opt, loader = PrivacyEngine().make_private(module=head, optimizer=opt, data_loader=loader,
                                                      noise_multiplier=0.0, max_grad_norm=0.2,
                                                      poisson_sampling=False)
    for _ in range(3):
        for xb, yb in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    ref = noisy_gd_linear(x, y, 4, steps=3, lr=0.5, clip=0.2, noise_multiplier=0.0, trials=1,
                          generator=torch.Generator().manual_seed(0))[0]
    assert torch.allclose(head.weight.detach(), ref, atol=1e-10)


def test_target_epsilon_seeding_and_dpsgd(feats):
    cfg = PrivateHeadConfig(algorithm="noisygd", epochs=20, target_epsilon=2.0, delta=1e-5, seed=3)
    a = train_private_head(feats.features, feats.labels, cfg)
    b = train_private_head(feats.features, feats.labels, cfg)
    assert torch.equal(a.weight, b.weight) and a.loss == b.loss
    assert a.epsilon <= 2.0 + 1e-6 and a.epsilon > 1.9
    dp = train_private_head(feats.features, feats.labels,
                            PrivateHeadConfig(algorithm="dpsgd", epochs=3, batch_size=50, noise_multiplier=1.0))
    assert dp.sample_rate == pytest.approx(50 / 200) and math.isfinite(dp.epsilon)
    nonp = train_private_head(feats.features, feats.labels, PrivateHeadConfig(algorithm="nonprivate", epochs=5))
    assert nonp.epsilon == math.inf and nonp.noise_multiplier == 0.0


def test_private_head_estimator_arbitrary_labels(feats):
    labels = torch.tensor([3, 7, 9, 42])[feats.labels]
    head = PrivateLinearHead(algorithm="noisygd", epochs=30, target_epsilon=8.0, seed=0).fit(feats.features, labels)
    assert head.classes_.tolist() == [3, 7, 9, 42]
    assert head.score(feats.features, labels) > 0.9 and head.epsilon_ <= 8.0 + 1e-6
    assert set(head.predict(feats.features).tolist()) <= {3, 7, 9, 42}
    with pytest.raises(ValueError, match="exactly one of"):
        PrivateHeadConfig(algorithm="noisygd")
    with pytest.raises(ValueError, match="algorithm"):
        PrivateHeadConfig(algorithm="sgd", noise_multiplier=1.0)
    with pytest.raises(ValueError, match="not fitted"):
        PrivateLinearHead().predict(feats.features)


@pytest.mark.filterwarnings("ignore:.*(Secure RNG|Full backward hook|Optimal order).*")
@pytest.mark.parametrize("bias, momentum", [(True, 0.0), (False, 0.5)])
def test_fused_engine_equals_opacus(feats, bias, momentum):
    # σ → 0 (the same clipped step) and a target ε (the same σ within Opacus' tolerance, the same ε accounting)
    common = dict(algorithm="noisygd", epochs=9, lr=0.7, clip=0.3, momentum=momentum, bias=bias, seed=1)
    a = train_private_head(feats.features, feats.labels, PrivateHeadConfig(noise_multiplier=1e-4, **common))
    b = train_private_head(feats.features, feats.labels, PrivateHeadConfig(noise_multiplier=1e-4, engine="fused",
                                                                           **common))
    assert torch.allclose(a.weight, b.weight, atol=1e-5) and a.steps == b.steps == 9
    assert (a.bias is None) == (b.bias is None) and (a.bias is None or torch.allclose(a.bias, b.bias, atol=1e-5))
    assert a.epsilon == pytest.approx(b.epsilon, rel=1e-9)
    a = train_private_head(feats.features, feats.labels, PrivateHeadConfig(target_epsilon=2.0, **common))
    b = train_private_head(feats.features, feats.labels,
                           PrivateHeadConfig(target_epsilon=2.0, engine="fused", **common))
    assert b.noise_multiplier == pytest.approx(a.noise_multiplier, rel=0.02)  # Opacus bisects to ε ± 0.01
    assert b.epsilon == pytest.approx(2.0, abs=1e-4) and abs(a.epsilon - 2.0) < 0.011


def test_fused_dpsgd_equals_a_per_sample_reference(feats):
    x, y = feats.features, feats.labels
    cfg = PrivateHeadConfig(algorithm="dpsgd", epochs=2, batch_size=50, lr=0.5, clip=0.4, noise_multiplier=0.8,
                            engine="fused", seed=3)
    res = train_private_head(x, y, cfg)
    n, d, k = x.shape[0], x.shape[1], 4
    q = 1.0 / 4  # ⌈200 / 50⌉ steps per epoch
    gen = torch.Generator().manual_seed(3)
    w, b = torch.zeros(k, d), torch.zeros(k)
    for _ in range(2 * 4):
        idx = torch.nonzero(torch.rand(n, generator=gen) < q).squeeze(1)
        gw, gb = torch.zeros(k, d), torch.zeros(k)
        for i in idx.tolist():  # per-sample autograd, clipped jointly over (W, b)
            wi, bi = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
            torch.nn.functional.cross_entropy((x[i] @ wi.T + bi)[None], y[i : i + 1]).backward()
            scale = min(1.0, 0.4 / float(torch.cat([wi.grad.flatten(), bi.grad]).norm()))
            gw, gb = gw + scale * wi.grad, gb + scale * bi.grad
        gw = gw + 0.8 * 0.4 * torch.randn(k, d, generator=gen)
        gb = gb + 0.8 * 0.4 * torch.randn(k, generator=gen)
        w, b = w - 0.5 * gw / int(n * q), b - 0.5 * gb / int(n * q)
    assert torch.allclose(res.weight, w, atol=1e-5) and torch.allclose(res.bias, b, atol=1e-5)
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(0.8, q, 8)]
    assert res.epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


def test_noisy_gd_noise_multiplier_matches_opacus():
    from opacus.accountants.utils import get_noise_multiplier

    from nclens.privacy import noisy_gd_noise_multiplier

    for eps, steps in ((0.5, 100), (8.0, 10)):
        ours = noisy_gd_noise_multiplier(eps, steps=steps, delta=1e-5)
        theirs = get_noise_multiplier(target_epsilon=eps, target_delta=1e-5, sample_rate=1.0, steps=steps,
                                      accountant="rdp", epsilon_tolerance=1e-4)
        assert ours == pytest.approx(theirs, rel=1e-3)
        assert noisy_gd_epsilon(ours, steps=steps, delta=1e-5) <= eps + 1e-12


@pytest.mark.parametrize("engine", ["fused", "opacus"])
def test_head_divergence_is_a_clear_error(feats, engine):
    cfg = PrivateHeadConfig(algorithm="noisygd", epochs=5, lr=1e38, noise_multiplier=1.0, engine=engine,
                            lr_key="heads.lr")
    with pytest.raises(FloatingPointError, match="lower heads.lr"):
        train_private_head(feats.features, feats.labels, cfg)
