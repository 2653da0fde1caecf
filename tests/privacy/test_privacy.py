"""NC meets DP (no Opacus needed): feature shift, accounting, layer-peeled simulator, closed form, PCA remedy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import linalg, stats

from nclens.core.geometry import random_orthonormal, simplex_etf
from nclens.core.stats import ClassStats
from nclens.data import gaussian_features
from nclens.privacy import (
    DEFAULT_ORDERS,
    FeaturePreprocessor,
    SimulationConfig,
    closed_form_error,
    etf_alignment,
    feature_shift,
    feature_shift_from_stats,
    gaussian_rdp,
    ideal_etf,
    l2_normalise,
    layer_feature_shift,
    noisy_gd_epsilon,
    noisy_gd_linear,
    one_step_threshold,
    pca_basis,
    rdp_to_epsilon,
    simulate_noisy_gd,
)


# ------------------------------------------------------------------ feature shift
def test_exact_etf_has_zero_shift_for_any_rotation_scale_offset():
    k, d = 5, 12
    means = simplex_etf(k, d, radius=2.5, seed=3) + 7.0  # rotated, scaled, offset
    y = torch.arange(5 * 8) % k
    x = means[y]
    for normalise in ("global", "sample"):
        s = feature_shift(x, y, normalise=normalise)
        assert s.rms < 1e-10 and s.max < 1e-10
    assert feature_shift_from_stats(ClassStats(num_classes=k).update(x, y)).rms < 1e-10


def test_alignment_equals_scipy_orthogonal_procrustes():
    g = torch.Generator().manual_seed(0)
    k, d = 4, 7
    m = torch.randn(k, d, generator=g, dtype=torch.float64)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    ideal = etf_alignment(m, w)
    ours = float((w * (m - ideal).square().sum(1)).sum())
    # scipy: min_R ||A R - B||_F over orthogonal R (D×D); pad the ETF with zeros to D columns.
    e = np.zeros((k, d))
    e[:, : k - 1] = ideal_etf(k).numpy()
    sw = np.sqrt(w.numpy())[:, None]
    r, _ = linalg.orthogonal_procrustes(sw * e, sw * m.numpy())
    ref = float(np.square(sw * e @ r - sw * m.numpy()).sum())
    assert ours == pytest.approx(ref, rel=1e-10, abs=1e-12)
    # the aligned rows are unit-norm ETF vertices
    gram = ideal @ ideal.T
    assert torch.allclose(gram, (k / (k - 1)) * (torch.eye(k, dtype=torch.float64) - 1.0 / k), atol=1e-12)


def test_shift_stats_equals_samples_and_is_rotation_invariant():
    f = gaussian_features(num_classes=6, dim=10, per_class=[30, 40, 50, 20, 35, 25], sigma=0.3, seed=1)
    x, y = f.features.double(), f.labels
    s_samples = feature_shift(x, y)
    s_stats = feature_shift_from_stats(ClassStats(num_classes=6).update(x, y))
    assert s_samples.rms == pytest.approx(s_stats.rms, rel=1e-10)
    assert s_samples.rms**2 == pytest.approx(s_samples.means**2 + s_samples.within**2, rel=1e-10)
    assert float(s_samples.per_sample.square().mean()) == pytest.approx(s_samples.rms**2, rel=1e-10)
    q = random_orthonormal(10, 10, seed=5)
    s_rot = feature_shift(3.0 * x @ q.T - 2.0, y)
    assert s_rot.rms == pytest.approx(s_samples.rms, rel=1e-9)
    # streaming (merged halves) gives the same shift
    a = ClassStats(num_classes=6).update(x[:100], y[:100]).merge(ClassStats(num_classes=6).update(x[100:], y[100:]))
    assert feature_shift_from_stats(a).rms == pytest.approx(s_stats.rms, rel=1e-10)
    assert layer_feature_shift({"penultimate": a})["penultimate"].rms == pytest.approx(s_stats.rms, rel=1e-10)


def test_within_shift_matches_gaussian_ground_truth():
    sigma, d = 0.2, 16
    f = gaussian_features(num_classes=5, dim=d, per_class=4000, sigma=sigma, seed=2)
    s = feature_shift_from_stats(ClassStats(num_classes=5).update(f.features, f.labels))
    # within² = E||σ ε||² / r² = σ² D (r = 1); means term → 0 as n grows
    assert s.within == pytest.approx(sigma * math.sqrt(d), rel=0.01)
    assert s.means < 0.02


def test_shift_errors():
    with pytest.raises(ValueError, match="normalise"):
        feature_shift(torch.randn(6, 3), torch.arange(6) % 2, normalise="bogus")
    with pytest.raises(ValueError, match="D >= K-1"):
        etf_alignment(torch.randn(5, 2))
    with pytest.raises(TypeError, match="ClassStats"):
        feature_shift_from_stats(torch.randn(3, 3))
    with pytest.raises(ValueError, match="coincide"):
        feature_shift(torch.ones(6, 3), torch.arange(6) % 2)


# ------------------------------------------------------------------ accounting
def test_rdp_is_gaussian_alpha_over_two_sigma_squared():
    for alpha in (1.5, 2.0, 10.0, 32.0):
        assert gaussian_rdp(alpha, noise_multiplier=3.0, steps=7) == pytest.approx(7 * alpha / 18.0)
    # ε from the conversion, checked by direct minimisation over a dense grid
    sigma, steps, delta = 4.0, 10, 1e-5
    eps = noisy_gd_epsilon(sigma, steps=steps, delta=delta)
    a = np.array(DEFAULT_ORDERS)
    direct = steps * a / (2 * sigma**2) + np.log((a - 1) / a) - (np.log(delta) + np.log(a)) / (a - 1)
    assert eps == pytest.approx(direct.min(), rel=1e-12)
    assert rdp_to_epsilon([2.0], [0.0], 0.5)[0] == 0.0  # clipped at 0
    assert noisy_gd_epsilon(0.0, steps=1, delta=1e-5) == math.inf
    with pytest.raises(ValueError, match="delta"):
        noisy_gd_epsilon(1.0, steps=1, delta=1.5)
    with pytest.raises(ValueError, match="noise_multiplier"):
        gaussian_rdp(2.0, noise_multiplier=-1.0)


# ------------------------------------------------------------------ closed form
def test_closed_form_two_classes_and_limits():
    for t in (0.0, 0.5, 1.7, 4.0):
        assert closed_form_error(t, 2) == pytest.approx(stats.norm.sf(t / math.sqrt(2)), abs=1e-10)
    assert closed_form_error(0.0, 7) == pytest.approx(6 / 7, abs=1e-9)  # chance level
    assert closed_form_error(math.inf, 7) == 0.0
    errs = [closed_form_error(t, 10) for t in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    # the form: t = 1/((K−1) s), s = σC/n when C >= sqrt((K−1)/K), r = 1
    assert one_step_threshold(10, 100, 5.0, 1.0) == pytest.approx(1 / (9 * 5.0 * 1.0 / 100))


@pytest.mark.parametrize("dim", [10, 1000])
def test_closed_form_matches_monte_carlo(dim):
    cfg = SimulationConfig(num_classes=10, dim=dim, samples=100, noise_multiplier=5.0, clip=1.0, trials=2000, seed=1)
    res = simulate_noisy_gd(cfg)
    assert res.error_closed_form is not None
    assert abs(res.error - res.error_closed_form) < 3 * res.error_stderr
    assert res.error_nonprivate == 0.0 and res.feature_shift < 1e-10
    assert res.epsilon == pytest.approx(noisy_gd_epsilon(5.0, steps=1, delta=1e-5))


def test_closed_form_with_active_clipping_and_radius():
    # C < sqrt((K−1)/K) r: every gradient is clipped (a < 1), the closed form still holds
    cfg = SimulationConfig(num_classes=4, dim=30, samples=40, noise_multiplier=8.0, clip=0.3, radius=2.0,
                           trials=3000, seed=2)
    res = simulate_noisy_gd(cfg)
    t = one_step_threshold(4, 40, 8.0, 0.3, radius=2.0)
    assert t == pytest.approx(0.3 / math.sqrt(0.75) * 40 / (3 * 8.0 * 0.3))
    assert 0.05 < res.error < 0.9
    assert abs(res.error - closed_form_error(t, 4)) < 3 * res.error_stderr


def test_noisy_gd_linear_matches_per_sample_autograd_reference():
    g = torch.Generator().manual_seed(0)
    n, p, k = 12, 5, 3
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = torch.arange(n) % k
    w = noisy_gd_linear(x, y, k, steps=3, lr=0.7, clip=0.5, noise_multiplier=0.0, trials=1, generator=g)[0]
    ref = torch.zeros(k, p, dtype=torch.float64)
    for _ in range(3):
        total = torch.zeros_like(ref)
        for i in range(n):  # independent per-sample autograd reference
            wi = ref.clone().requires_grad_(True)
            torch.nn.functional.cross_entropy((wi @ x[i])[None], y[i : i + 1]).backward()
            gi = wi.grad
            total += gi * min(1.0, 0.5 / float(gi.norm()))
        ref = ref - 0.7 * total / n
    assert torch.allclose(w, ref, atol=1e-12)


def test_pca_restores_accuracy_under_perturbation():
    base = dict(num_classes=5, dim=2000, samples=50, noise_multiplier=2.0, clip=1.0, perturb=0.1,
                trials=300, test_per_class=20, public_samples=500, seed=0)
    exact = simulate_noisy_gd(SimulationConfig(**{**base, "perturb": 0.0}))
    raw = simulate_noisy_gd(SimulationConfig(**base))
    pca = simulate_noisy_gd(SimulationConfig(**base, pca=4))
    assert raw.error > exact.error_closed_form + 0.3  # perturbation hurts DP in high dimension
    assert pca.error < raw.error - 0.3  # PCA restores it
    assert pca.error < exact.error_closed_form + 0.1
    assert raw.error_nonprivate < 0.05  # non-private training is robust to the same perturbation


def test_perturbation_dimension_dependence_and_exact_independence():
    common = dict(num_classes=5, samples=50, noise_multiplier=8.0, clip=1.0, trials=400, seed=0)
    e_small = simulate_noisy_gd(SimulationConfig(dim=10, **common))
    e_big = simulate_noisy_gd(SimulationConfig(dim=500, **common))
    assert e_small.error_closed_form == e_big.error_closed_form
    assert abs(e_small.error - e_big.error) <= 3 * math.hypot(e_small.error_stderr, e_big.error_stderr) + 1e-3
    assert 0.05 < e_small.error_closed_form < 0.6
    p_small = simulate_noisy_gd(SimulationConfig(dim=10, perturb=0.1, **common))
    p_big = simulate_noisy_gd(SimulationConfig(dim=500, perturb=0.1, **common))
    assert p_big.error > p_small.error + 0.2
    assert p_big.feature_shift > p_small.feature_shift


def test_simulation_is_seeded_and_validates():
    cfg = SimulationConfig(num_classes=3, dim=8, samples=30, perturb=0.2, perturb_kind="structured", offset=0.5,
                           steps=3, trials=50, seed=4)
    assert simulate_noisy_gd(cfg).to_dict() == simulate_noisy_gd(cfg).to_dict()
    with pytest.raises(ValueError, match="multiple of K"):
        SimulationConfig(num_classes=3, samples=31)
    with pytest.raises(ValueError, match="clip=None"):
        SimulationConfig(clip=None, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="pca"):
        SimulationConfig(dim=20, pca=30)
    with pytest.raises(ValueError, match="dim"):
        SimulationConfig(num_classes=10, dim=5)


# ------------------------------------------------------------------ remedies
def test_pca_basis_matches_sklearn_and_normalise():
    from sklearn.decomposition import PCA

    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * torch.arange(1, 7)
    mean, comps = pca_basis(x, 3)
    sk = PCA(n_components=3).fit(x.numpy())
    assert np.allclose(np.abs(comps.numpy() @ sk.components_.T), np.eye(3), atol=1e-8)
    z = FeaturePreprocessor(pca=3).fit(x).transform(x).double()
    assert np.allclose(np.abs(z.numpy()), np.abs(sk.transform(x.numpy())), atol=1e-5)
    assert torch.allclose(l2_normalise(x).norm(dim=1), torch.ones(80, dtype=torch.float64))
    with pytest.raises(ValueError, match="not fitted"):
        FeaturePreprocessor().transform(x)


# ------------------------------------------------------------------ CLI
def test_cli_dp_simulate_and_feature_shift(tmp_path):
    from typer.testing import CliRunner

    from nclens.cli import app

    out = tmp_path / "sim.json"
    r = CliRunner().invoke(app, ["dp-simulate", "--classes", "4", "--dim", "20", "--samples", "40",
                                 "--noise-multiplier", "2", "--clip", "1", "--trials", "200", "--seed", "0",
                                 "--json", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    rec = json.loads(out.read_text())
    for key in ("error", "error_stderr", "error_closed_form", "epsilon", "delta"):
        assert key in rec
    r = CliRunner().invoke(app, ["dp-simulate", "--classes", "4", "--samples", "41"])
    assert r.exit_code == 2 and "multiple of K" in r.output

    f = gaussian_features(num_classes=3, dim=5, per_class=20, sigma=0.1, seed=0)
    path = tmp_path / "f.npz"
    np.savez(path, features=f.features.numpy(), labels=f.labels.numpy())
    r = CliRunner().invoke(app, ["dp-feature-shift", str(path), "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "s.json").read_text())
    assert rec["feature_shift"] == pytest.approx(feature_shift(f.features, f.labels).rms) and "nc1" in rec


def test_logreg_reference_matches_a_direct_cross_validated_fit():
    """The logistic-regression reference = scikit-learn fitted at the C that 3-fold CV picks, computed here directly."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from nclens.data import gaussian_features
    from nclens.privacy.finetune import LOGREG_CS, logreg_accuracy

    f = gaussian_features(num_classes=4, dim=60, per_class=65, sigma=0.3, seed=0)
    rank = torch.zeros_like(f.labels)
    for c in range(4):
        rank[f.labels == c] = torch.arange(int((f.labels == c).sum()))
    tr, te = rank < 15, rank >= 15  # 15 training samples per class in 60 dimensions: regularisation matters
    out = logreg_accuracy(f.features[tr], f.labels[tr], f.features[te], f.labels[te], seed=0)
    x, y = f.features[tr].double().numpy(), f.labels[tr].numpy()
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = [cross_val_score(LogisticRegression(C=c, max_iter=5000), x, y, cv=cv).mean() for c in LOGREG_CS]
    best = LOGREG_CS[scores.index(max(scores))]
    ref = LogisticRegression(C=best, max_iter=5000).fit(x, y).score(f.features[te].double().numpy(),
                                                                    f.labels[te].numpy())
    assert out["logreg_c"] == best and out["accuracy"] == pytest.approx(ref, abs=1e-12)
    assert out["epsilon_spent"] is None and out["noise_multiplier"] == 0.0
