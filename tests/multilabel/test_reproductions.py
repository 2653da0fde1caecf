"""The shipped multi-label reproductions, end to end through the runner (slow: ``pytest -m slow``)."""

from __future__ import annotations

import pytest

from nclens.runs.experiment import load_run_config, run
from nclens.runs.folder import RunFolder

pytestmark = pytest.mark.slow


def _results(name: str, out, overrides=()):
    folder = run(load_run_config(name, overrides), out=out, progress=False, log=lambda s: None)
    return RunFolder(folder).summary()["results"]


def test_ufm_c2_values_of_the_closing_note(tmp_path):
    rows = {(r["loss"], r["lambda"]): r for r in _results("mlab_ufm_c2", tmp_path / "c2")["rows"]}
    for (loss, lam), c2 in {("pal", 5e-3): 1.710, ("pal", 1e-2): 1.676, ("pal", 2e-3): 1.752,
                            ("pal_normalized", 5e-3): 1.391}.items():
        row = rows[(loss, lam)]
        assert round(row["tagwise_scale_m2_mean"], 3) == c2
        assert row["tagwise_scale_m2_abs_err_max"] < 1e-9 and row["grad_norm_max"] < 1e-12
        assert row["nc1_sets_max"] < 1e-12 and row["tagwise_angle_li_max"] < 1e-9


def test_ufm_restarts_reach_one_optimum(tmp_path):
    for row in _results("mlab_ufm_restarts", tmp_path / "r")["rows"]:
        assert row["restarts"] == 10 and row["converged_all"]
        assert row["objective_spread"] < 1e-12
        assert row["gram_w_max_diff"] < 1e-8 and row["gram_sets_max_diff"] < 1e-8


def test_ufm_imbalanced_multiplicities_follow_the_theory(tmp_path):
    for row in _results("mlab_ufm_imbalanced", tmp_path / "i")["rows"]:
        assert row["tagwise_scale_m2_abs_err_max"] < 1e-9 and row["tagwise_scale_m3_abs_err_max"] < 1e-9
    for row in _results("mlab_ufm_imbalanced_pairs", tmp_path / "p")["rows"]:
        # outside the theorem: W leaves the ETF and the scarcer pairs get the larger c_S
        assert row["nc2_etf_w_max"] > 1e-3
        assert row["c_m2_count5_mean"] > row["c_m2_count10_mean"]
        assert row["c_m2_count5_spread"] < 1e-9 and row["c_m2_count10_spread"] < 1e-9


def test_mlab_digits_every_metric_falls_tenfold(tmp_path):
    results = _results("mlab_digits", tmp_path / "d")
    params = {r["variant"]: r["trainable_params"] for r in results["runs"]}
    assert params == {"learned": 205_098, "fixed_etf": 202_538, "fixed_etf_dimk": 139_316}
    for r in results["runs"]:
        assert r["min_fall"] >= 10.0, (r["variant"], r["min_fall_metric"], r["min_fall"])
        assert 1.7 < r["tagwise_scale_m2"] < 1.9
        assert r["test_map"] > 0.88
