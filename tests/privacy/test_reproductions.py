"""Slow reproductions (``pytest -m slow``): the claims of Wang et al. (ICML 2024), reduced scale, through the runner."""

from __future__ import annotations

import pytest

from nclens.runs.experiment import run
from nclens.runs.folder import RunFolder

pytestmark = pytest.mark.slow


def test_dimension_claims(tmp_path):
    out = run("dp_dimension", overrides=["model.trials=300", "perturbs=[0.0, 0.1]", "seeds=[0, 1]"],
              out=tmp_path / "d", progress=False, log=lambda s: None)
    rows = {(r["perturb"], r["arm"], r["dim"]): r for r in RunFolder(out).summary()["results"]["rows"]}
    exact = [rows[(0.0, "no PCA", p)]["accuracy"] for p in (10, 100, 1000, 10000)]
    closed = rows[(0.0, "no PCA", 10)]["accuracy_closed_form"]
    assert max(abs(a - closed) for a in exact) < 0.03  # exact features: dimension-independent, = closed form
    assert rows[(0.1, "no PCA", 10000)]["accuracy"] < 0.2  # τ√p = 10: DP collapses ...
    assert rows[(0.1, "no PCA", 10000)]["accuracy_nonprivate"] > 0.9  # ... non-private does not
    assert rows[(0.1, "PCA 9", 1000)]["accuracy"] > rows[(0.1, "no PCA", 1000)]["accuracy"] + 0.3  # PCA restores


def test_threshold_claims(tmp_path):
    out = run("dp_threshold", overrides=["model.trials=400", "betas=[0.0, 0.5, 2.0]", "dims=[10, 100, 3000]",
                                         "seeds=[0, 1, 2, 3, 4]",
                                         "variants=[{name: base}, {name: imbalance-10, imbalance: 10.0}, "
                                         "{name: loss-mse, loss: mse}, {name: steps-10, steps: 10}, "
                                         "{name: w0-steps-10, init_norm: 3.0, steps: 10}, "
                                         "{name: structured, perturb_kind: structured}]"],
              out=tmp_path / "t", progress=False, log=lambda s: None)
    results = RunFolder(out).summary()["results"]
    rows = {(r["variant"], r["beta"], r["dim"]): r for r in results["rows"]}
    flat = {(r["variant"], r["beta"]): r["flat"] for r in results["flat"]}
    assert flat[("base", 0.0)] and flat[("imbalance-10", 0.0)] and flat[("loss-mse", 0.0)]  # exact: flat in p
    assert not flat[("base", 0.5)]  # a fixed-norm shift of 0.5 matters at small p (p = K) ...
    assert rows[("base", 0.5, 10)]["error"] > rows[("base", 0.5, 3000)]["error"] + 0.01  # ... where it is worse
    big = rows[("base", 2.0, 3000)]
    assert abs(big["error"] - big["error_large_p"]) < 0.05  # the p → ∞ form
    assert big["error"] > rows[("base", 0.0, 3000)]["error"] + 0.3 and big["error_nonprivate"] < 0.05
    # the registry's mse (mean over N·K) has a K/2 times smaller gradient than mse_sum: worse under fixed C
    assert rows[("loss-mse", 0.0, 100)]["error"] > rows[("base", 0.0, 100)]["error"] + 0.2
    # W0 of norm 3 in the features' span: 10 non-private steps undo it, 10 NoisyGD steps lose accuracy to it
    for p in (10, 3000):
        assert rows[("w0-steps-10", 0.0, p)]["error_nonprivate"] == 0.0
        assert rows[("w0-steps-10", 0.0, p)]["error"] > rows[("steps-10", 0.0, p)]["error"] + 0.03
    # structured shifts of norm β in the ETF's span: the same geometry at every p, flat, and worse with β
    assert all(flat[("structured", b)] for b in (0.0, 0.5, 2.0))
    assert rows[("structured", 2.0, 100)]["error_closed_form"] > rows[("structured", 0.0, 100)]["error_closed_form"]
