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


def test_real_features_experiment_tiny(tmp_path):
    from nclens.privacy.experiment import RealFeaturesConfig, RemedyConfig, load_experiment_config, run_real_features

    cfg = RealFeaturesConfig(pretrain_epochs=3, checkpoints=(0, 3), epsilons=(1.0,), head_epochs=10, seeds=(0,),
                             remedies=(RemedyConfig("normalised", normalise=True),))
    s1 = run_real_features(cfg, tmp_path, progress=False)
    assert {c["checkpoint"] for c in s1["checkpoints"]} == {0, 3}
    assert (tmp_path / "accuracy_vs_epsilon.png").stat().st_size > 0
    rows = (tmp_path / "results.jsonl").read_text().splitlines()
    s2 = run_real_features(cfg, tmp_path, progress=False)  # resumes: nothing recomputed
    assert (tmp_path / "results.jsonl").read_text().splitlines() == rows
    assert s1["accuracy"] == s2["accuracy"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in s1["accuracy"])
    with pytest.raises(ValueError, match="unknown key"):
        load_experiment_config({"kind": "real-features", "epsilon": [1.0]})
