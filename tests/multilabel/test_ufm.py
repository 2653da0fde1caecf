"""UFM solvers: the PAL optimum is exact MLab NC with the predicted c_m; singletons match Zhu et al.'s closed
form; fixed-α theory against per-sample problems solved directly; within-multiplicity counts; the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from typer.testing import CliRunner

from nclens.multilabel.ufm import (
    UFMConfig,
    _data_loss,
    gap_implied_scale,
    scales_by_count,
    solve_ufm,
    ufm_labels,
    ufm_theory,
    zhu_ce_closed_form,
)
from nclens.nn.losses import mse_half, normalized_pick_all_label_ce, pick_all_label_ce

MLAB_ZERO = ("nc1", "nc1_sets", "nc2_etf", "nc2_equinorm", "nc2_equiangular", "nc2_etf_w", "nc3_duality",
             "tagwise_residual_m2", "tagwise_scale_m2_std", "tagwise_angle_ratio")


def test_pal_ufm_optimum_is_mlab_nc_with_the_predicted_scale():
    cfg = UFMConfig(loss="pal", num_classes=3, dim=4, per_set=(4, 2), wd_w=5e-3, wd_h=5e-3, wd_b=5e-3)
    sol = solve_ufm(cfg, progress=False)
    assert sol.grad_norm < 1e-10 and sol.converged
    for key in MLAB_ZERO:
        assert sol.metrics[key] < 1e-8, (key, sol.metrics[key])
    theory = ufm_theory("pal", 3, (4, 2), 5e-3, 5e-3)
    assert sol.metrics["tagwise_scale_m2"] == pytest.approx(theory["tagwise_scale"][2], rel=1e-9)
    assert sol.objective == pytest.approx(theory["objective"], rel=1e-12)
    assert float(sol.weight.norm(dim=1).mean()) == pytest.approx(theory["alpha"], rel=1e-8)
    assert float(sol.bias.norm()) < 1e-8  # b = 0 at the optimum when λ_b > 0
    assert 1.0 < theory["tagwise_scale"][2] < 2.0  # c_m < m (module doc)


def test_ce_ufm_matches_zhu_closed_form():
    k, n, lam_w, lam_h = 4, 5, 1e-2, 2e-3
    sol = solve_ufm(UFMConfig(loss="pal_normalized", num_classes=k, dim=5, per_set=(n,), wd_w=lam_w, wd_h=lam_h,
                              wd_b=1e-3), progress=False)
    zhu = zhu_ce_closed_form(k, n, lam_w, lam_h)
    assert not zhu["trivial"] and sol.grad_norm < 1e-10
    assert sol.objective == pytest.approx(zhu["objective"], rel=1e-12)
    assert torch.allclose(sol.weight.norm(dim=1), torch.full((k,), zhu["w_norm"], dtype=torch.float64), rtol=1e-8)
    assert torch.allclose(sol.features.norm(dim=1), torch.full((k * n,), zhu["h_norm"], dtype=torch.float64),
                          rtol=1e-8)
    for key in ("nc1", "nc2_etf", "nc2_etf_w", "nc3_duality", "nc3_etf"):
        assert sol.metrics[key] < 1e-8, key


def test_reduced_theory_agrees_with_closed_form_and_brute_force():
    # singletons only: the PAL/CE reduced problem is Zhu et al.'s (two independent derivations)
    for k, n, lw, lh in ((4, 20, 5e-3, 5e-3), (10, 3, 1e-3, 2e-2)):
        th, zhu = ufm_theory("pal", k, (n,), lw, lh), zhu_ce_closed_form(k, n, lw, lh)
        assert th["objective"] == pytest.approx(zhu["objective"], rel=1e-12)
        assert th["alpha"] == pytest.approx(zhu["w_norm"], rel=1e-9)
        assert th["feature_norms"][1] == pytest.approx(zhu["h_norm"], rel=1e-9)
    # multi-label: minimise F(α, δ) directly with a generic optimiser
    k, per, lw, lh = 5, (6, 3, 2), 4e-3, 3e-3
    n_m = {m: math.comb(k, m) * c for m, c in enumerate(per, start=1)}
    n = sum(n_m.values())

    def objective(p):
        alpha, d = math.exp(p[0]), p[1:]
        data = sum(n_m[m] * m * math.log(m + (k - m) * math.exp(-d[m - 1])) for m in n_m) / n
        reg = lh / (2 * alpha**2) * sum(n_m[m] * d[m - 1] ** 2 * m * (k - m) * (k - 1) / k**2 for m in n_m)
        return data + lw * k * alpha**2 / 2 + reg

    best = minimize(objective, [0.5, 1.0, 1.0, 1.0], method="Nelder-Mead",
                    options={"xatol": 1e-12, "fatol": 1e-15, "maxiter": 20000})
    th = ufm_theory("pal", k, per, lw, lh)
    assert th["objective"] == pytest.approx(best.fun, rel=1e-9)
    assert th["tagwise_scale"][3] == pytest.approx(3 * best.x[3] / best.x[1], rel=1e-4)


def test_triples_mse_and_trivial_regime():
    sol = solve_ufm(UFMConfig(loss="pal", num_classes=4, dim=4, per_set=(3, 2, 1)), progress=False)
    th = ufm_theory("pal", 4, (3, 2, 1), 5e-3, 5e-3)
    for m in (2, 3):
        assert sol.metrics[f"tagwise_scale_m{m}"] == pytest.approx(th["tagwise_scale"][m], rel=1e-9)
        assert sol.metrics[f"tagwise_residual_m{m}"] < 1e-8
    # MSE: the optimal features are linear in the targets, so c_m = m exactly
    mse = solve_ufm(UFMConfig(loss="mse_half", num_classes=3, dim=4, per_set=(3, 2)), progress=False)
    assert mse.metrics["tagwise_scale_m2"] == pytest.approx(2.0, rel=1e-9)
    # too much weight decay: the zero solution is optimal, in theory and numerically
    assert zhu_ce_closed_form(4, 20, 0.5, 0.5)["trivial"]
    assert ufm_theory("pal_normalized", 4, (20,), 0.5, 0.5)["trivial"]


def test_traceable_data_loss_equals_public_losses():
    y = ufm_labels(4, (2, 1))
    z = torch.randn(y.shape[0], 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name, fn in (("pal", pick_all_label_ce), ("pal_normalized", normalized_pick_all_label_ce),
                     ("mse_half", mse_half)):
        assert torch.allclose(_data_loss(name, z, y), fn(z, y), rtol=1e-14)


def test_fixed_alpha_theory_matches_the_per_sample_problems_solved_directly():
    # W fixed to a unit-row ETF scaled by α: each sample's feature solves min_h (1/N) L(W h) + λ_H/2 ‖h‖²
    k, per, lam_h, alpha = 4, (20, 10), 5e-3, 1.3
    n = k * per[0] + 6 * per[1]
    from nclens.multilabel.models import li_etf_weight

    w = alpha * li_etf_weight(k, k).double().numpy()
    for loss in ("pal", "pal_normalized"):
        gaps = {}
        for m, y in ((1, [1, 0, 0, 0]), (2, [1, 1, 0, 0])):
            yt = torch.tensor([y], dtype=torch.float64)

            def f(h, yt=yt, loss=loss):
                z = torch.from_numpy(w @ h)[None]
                return float(_data_loss(loss, z, yt)) / n + lam_h / 2 * float((h**2).sum())

            h = minimize(f, np.full(k, 0.1), method="BFGS", options={"gtol": 1e-14, "maxiter": 10000}).x
            z = w @ h
            gaps[m] = z[:m].mean() - z[m:].mean()
        th = ufm_theory(loss, k, per, 5e-3, lam_h, alpha=alpha)
        assert th["gaps"][1] == pytest.approx(gaps[1], rel=1e-5) and th["gaps"][2] == pytest.approx(gaps[2], rel=1e-5)
        assert th["tagwise_scale"][2] == pytest.approx(2 * gaps[2] / gaps[1], rel=1e-5)
        assert gap_implied_scale(loss, k, gaps[1]) == pytest.approx(th["tagwise_scale"][2], rel=1e-5)
    # the free optimum is a fixed point: the theory at its own α gives the same c_2
    free = ufm_theory("pal", k, per, 5e-3, 5e-3)
    assert ufm_theory("pal", k, per, 5e-3, 5e-3, alpha=free["alpha"])["tagwise_scale"][2] == pytest.approx(
        free["tagwise_scale"][2], rel=1e-12)


def test_imbalanced_multiplicities_and_within_multiplicity_counts():
    # balanced within each multiplicity: the theory covers it (c_2, c_3 exact); totals= gives the same
    sol = solve_ufm(UFMConfig(loss="pal", num_classes=4, dim=5, per_set=(6, 3, 2)), progress=False)
    th = ufm_theory("pal", 4, (6, 3, 2), 5e-3, 5e-3)
    assert th == ufm_theory("pal", 4, (6, 3, 2), 5e-3, 5e-3, totals={1: 24, 2: 18, 3: 8})
    for m in (2, 3):
        assert sol.metrics[f"tagwise_scale_m{m}"] == pytest.approx(th["tagwise_scale"][m], rel=1e-9)
    # pairs of 10 and 5 samples in turn (lexicographic order)
    y = ufm_labels(4, (2, 10), within=(10, 5))
    pair_rows = y[y.sum(1) == 2]
    codes, counts = torch.unique(pair_rows, dim=0, return_counts=True)
    assert sorted(counts.tolist()) == [5, 5, 5, 10, 10, 10]
    assert int(counts[(codes == torch.tensor([1.0, 1.0, 0.0, 0.0])).all(1)]) == 10  # {0,1} first: 10
    assert int(counts[(codes == torch.tensor([1.0, 0.0, 1.0, 0.0])).all(1)]) == 5  # {0,2}: 5
    sol = solve_ufm(UFMConfig(loss="pal", num_classes=4, dim=5, per_set=(8, 4), within=(4, 2)), progress=False)
    groups = scales_by_count(sol)[2]
    assert sorted(groups) == [2, 4] and all(len(v) == 3 for v in groups.values())
    assert sol.metrics["nc1_sets"] < 1e-8  # within-set collapse still holds
    with pytest.raises(ValueError, match="within_m"):
        UFMConfig(per_set=(20,), within=(3, 2))


def test_config_errors_and_cli(tmp_path):
    for bad, match in ((dict(loss="hinge"), "loss"), (dict(loss="ce"), "pal_normalized"),
                       (dict(num_classes=3, per_set=(2, 1, 1)), "below K"), (dict(wd_w=0.0), "wd_w"),
                       (dict(tol=float("nan")), "tol"), (dict(wd_h=float("inf")), "wd_h"),
                       (dict(per_set=(0, 3)), "per_set"), (dict(init_scale=0.0), "init_scale")):
        with pytest.raises(ValueError, match=match):
            UFMConfig(**bad)
    from nclens.cli import app

    out = tmp_path / "ufm.json"
    res = CliRunner().invoke(app, ["ufm", "--loss", "pal", "--classes", "3", "--dim", "4", "--per-set", "3,1",
                                   "--json", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["grad_norm"] < 1e-10 and report["nc1_sets"] < 1e-8
    assert report["theory"]["check"]["tagwise_scale_m2_abs_err"] < 1e-9
    for args, message in ((["--per-set", "2,x"], "--per-set must be comma-separated integers"),
                          (["--tol", "nan"], "--tol must be a finite number, got nan"),
                          (["--threads", "0"], "--threads must be a positive integer, got 0"),
                          (["--threads", "-1"], "--threads must be a positive integer, got -1"),
                          (["--loss", "mse"], "loss must be one of ['pal', 'pal_normalized', 'mse_half']"),
                          (["--json", str(tmp_path)], "is a directory")):
        bad = CliRunner().invoke(app, ["ufm", "--no-progress", *args])
        assert bad.exit_code == 2 and message in bad.output, (args, bad.output)
        assert "Traceback" not in bad.output
