"""OOD scores, detection metrics (both conventions), probes, the ETF projector and the experiment."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from sklearn.metrics import average_precision_score, roc_auc_score

from nclens.core.stats import ClassStats
from nclens.nn.heads import ETFProjector, etf_projector_weight
from nclens.ood import (
    NECO,
    LinearProbe,
    Mahalanobis,
    aupr,
    auroc,
    energy_score,
    fpr_at_tpr,
    mahalanobis_score,
    max_logit_score,
    msp_score,
    nci_score,
    ood_metrics,
    pytorch_ood_score,
)

HAS_PYTORCH_OOD = importlib.util.find_spec("pytorch_ood") is not None
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


# --------------------------------------------------------------- projector
def test_etf_projector_weights_exact():
    d = 6
    proj = ETFProjector(d)
    for w, (rows, cols) in ((proj.weight1, (4 * d, d)), (proj.weight2, (d, 4 * d))):
        c = rows
        ref = np.sqrt(c / (c - 1)) * (np.eye(rows, cols) - np.full((rows, cols), 1.0 / c))
        assert w.shape == (rows, cols)
        np.testing.assert_allclose(w.numpy(), ref, rtol=0, atol=1e-7)
    # square case: a simplex ETF of unit rows with cosine −1/(c−1)
    w = etf_projector_weight(5, 5, dtype=torch.float64)
    np.testing.assert_allclose((w @ w.T).numpy(), 1.25 * (np.eye(5) - 0.2), atol=1e-12)


def test_etf_projector_forward_matches_numpy_and_is_normalised():
    g = torch.Generator().manual_seed(0)
    proj = ETFProjector(4)
    x = torch.randn(7, 4, generator=g)
    w1, w2 = proj.weight1.double().numpy(), proj.weight2.double().numpy()
    h = np.maximum(x.double().numpy() @ w1.T, 0.0) @ w2.T
    ref = h / np.linalg.norm(h, axis=1, keepdims=True)
    np.testing.assert_allclose(proj(x).double().numpy(), ref, atol=1e-6)
    assert torch.allclose(proj(x).norm(dim=1), torch.ones(7), atol=1e-6)
    assert ETFProjector(4, normalize=False)(x).norm(dim=1).sub(1).abs().max() > 1e-3


def test_etf_projector_frozen_no_gradient():
    proj = ETFProjector(8)
    before = {k: v.clone() for k, v in proj.state_dict().items()}
    assert list(proj.parameters()) == []
    assert set(before) == {"weight1", "weight2"}
    assert not proj.weight1.requires_grad and not proj.weight2.requires_grad
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), proj, torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        opt.step()
    assert proj.weight1.grad is None and proj.weight2.grad is None
    assert model[0].weight.grad is not None  # gradient flows *through* the projector
    for k, v in proj.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="dim"):
        ETFProjector(1)
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        proj(torch.randn(2, 5))


# ------------------------------------------------------------ logit scores
def test_logit_scores_match_scipy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g, dtype=torch.float64) * 4
    z = logits.numpy()
    np.testing.assert_allclose(energy_score(logits).numpy(), logsumexp(z, axis=1), rtol=1e-12)
    np.testing.assert_allclose(energy_score(logits, 2.0).numpy(), 2.0 * logsumexp(z / 2.0, axis=1), rtol=1e-12)
    np.testing.assert_allclose(msp_score(logits).numpy(), softmax(z, axis=1).max(1), rtol=1e-12)
    np.testing.assert_allclose(max_logit_score(logits).numpy(), z.max(1))
    with pytest.raises(ValueError, match="temperature"):
        energy_score(logits, 0.0)
    with pytest.raises(ValueError, match="2-D"):
        msp_score(torch.zeros(5))


# ---------------------------------------------------------------- metrics
def _fpr_bruteforce(pos: np.ndarray, neg: np.ndarray, tpr: float = 0.95) -> float:
    """FPR at the largest threshold t with mean(pos >= t) >= tpr (independent of roc_curve)."""
    best = None
    for t in np.unique(np.concatenate([pos, neg])):
        if (pos >= t).mean() >= tpr:
            best = t if best is None else max(best, t)
    return float((neg >= best).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_against_sklearn_both_conventions(seed):
    rng = np.random.default_rng(seed)
    s_id = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounding creates ties
    s_ood = np.round(rng.normal(0.0, 1.2, 200), 1)
    y_id = np.r_[np.ones(300), np.zeros(200)]
    s = np.r_[s_id, s_ood]
    m_id = ood_metrics(s_id, s_ood, positive="id")
    m_ood = ood_metrics(torch.from_numpy(s_id), torch.from_numpy(s_ood), positive="ood")
    assert m_id["auroc"] == pytest.approx(roc_auc_score(y_id, s), abs=1e-12)
    assert m_ood["auroc"] == pytest.approx(m_id["auroc"], abs=1e-12)  # convention-free
    assert m_id["aupr"] == pytest.approx(average_precision_score(y_id, s), abs=1e-12)
    assert m_ood["aupr"] == pytest.approx(average_precision_score(1 - y_id, -s), abs=1e-12)
    assert m_id["fpr95"] == pytest.approx(_fpr_bruteforce(s_id, s_ood))
    assert m_ood["fpr95"] == pytest.approx(_fpr_bruteforce(-s_ood, -s_id))
    assert m_id["aupr"] != pytest.approx(m_ood["aupr"])


def test_metrics_hand_made_cases():
    assert ood_metrics([3.0, 2.0, 1.0], [0.0, -1.0]) == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    assert ood_metrics([3.0, 2.0, 1.0], [0.0, -1.0], positive="ood") == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    # ID scores 1..4 and one OOD sample at 2.5:
    s_id, s_ood = [1.0, 2.0, 3.0, 4.0], [2.5]
    assert auroc(s_id, s_ood) == 0.5  # 2 of 4 ID above the OOD sample
    # ID positive: ranks 4, 3, (2.5 OOD), 2, 1 -> precisions 1, 1, 3/4, 4/5 at the ID hits
    assert aupr(s_id, s_ood, "id") == pytest.approx((1 + 1 + 0.75 + 0.8) / 4)
    # OOD positive: outlier scores -1, -2, -2.5 (OOD), ... -> OOD at rank 3: precision 1/3
    assert aupr(s_id, s_ood, "ood") == pytest.approx(1 / 3)
    # keeping 95% of ID needs t = 1, which accepts the OOD sample: FPR 1
    assert fpr_at_tpr(s_id, s_ood, "id") == 1.0
    # catching the OOD sample flags ID scores <= 2.5: two of four
    assert fpr_at_tpr(s_id, s_ood, "ood") == 0.5
    # perfectly inverted detector
    assert ood_metrics([0.0, -1.0], [3.0, 2.0])["auroc"] == 0.0
    # all tied: chance
    assert auroc([1.0, 1.0], [1.0, 1.0]) == 0.5


def test_metric_errors():
    with pytest.raises(ValueError, match="positive"):
        ood_metrics([1.0], [0.0], positive="in")
    with pytest.raises(ValueError, match="empty"):
        ood_metrics([], [0.0])
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics([1.0, float("nan")], [0.0])
    with pytest.raises(ValueError, match="1-D"):
        ood_metrics(np.ones((2, 2)), [0.0])
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr([1.0], [0.0], tpr=0.0)


# ------------------------------------------------------------ Mahalanobis
def _maha_direct(x: np.ndarray, feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
    classes = np.unique(labels)
    means = np.stack([feats[labels == c].mean(0) for c in classes])
    centred = feats - means[np.searchsorted(classes, labels)]
    sigma = centred.T @ centred / len(feats)
    prec = np.linalg.pinv(sigma, hermitian=True)
    d = x[:, None, :] - means[None]
    return -np.einsum("nkd,de,nke->nk", d, prec, d).min(1)


def test_mahalanobis_from_classstats_equals_direct_computation():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(400) % 4
    feats = feats + 3 * torch.randn(4, 6, generator=g, dtype=torch.float64)[labels]
    stats = ClassStats(num_classes=4)
    for chunk in range(0, 400, 64):  # streaming statistics
        stats.update(feats[chunk : chunk + 64], labels[chunk : chunk + 64])
    x = torch.randn(30, 6, generator=g, dtype=torch.float64) * 2
    ref = _maha_direct(x.numpy(), feats.numpy(), labels.numpy())
    np.testing.assert_allclose(mahalanobis_score(x, stats).numpy(), ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(Mahalanobis().fit(stats).score(x.float()).numpy(), ref, rtol=1e-4)


def test_mahalanobis_singular_covariance_uses_pseudo_inverse():
    # features in a 3-D subspace of R^8 (Σ_W singular, rank 3): pinv, as numpy's
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(3, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(120) % 3
    feats = (
        torch.randn(120, 3, generator=g, dtype=torch.float64) + 4 * torch.eye(3, dtype=torch.float64)[labels]
    ) @ basis
    stats = ClassStats(num_classes=3).update(feats, labels)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64) @ basis
    ref = _maha_direct(x.numpy(), feats.numpy(), labels.numpy())
    np.testing.assert_allclose(mahalanobis_score(x, stats).numpy(), ref, rtol=1e-7, atol=1e-8)
    with pytest.raises(ValueError, match="scatter='full'"):
        mahalanobis_score(x, ClassStats(num_classes=3, scatter="trace").update(feats, labels))
    with pytest.raises(ValueError, match="dimension"):
        mahalanobis_score(torch.randn(2, 5, dtype=torch.float64), stats)


# ------------------------------------------------------------- NCI, NECO
def test_nci_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(40, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    mu = torch.randn(5, generator=g, dtype=torch.float64)
    hn, wn, bn, mun = h.numpy(), w.numpy(), b.numpy(), mu.numpy()
    pred = (hn @ wn.T + bn).argmax(1)
    z = hn - mun
    p = (z * wn[pred]).sum(1) / np.linalg.norm(z, axis=1)
    np.testing.assert_allclose(nci_score(h, w, b, mu).numpy(), p, rtol=1e-12)
    np.testing.assert_allclose(nci_score(h, w, b, mu, alpha=0.1).numpy(), p + 0.1 * np.abs(hn).sum(1), rtol=1e-12)
    with pytest.raises(ValueError, match="global_mean"):
        nci_score(h, w, b, mu[:3])


def test_neco_matches_sklearn_pca():
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(0)
    train = torch.randn(300, 10, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, 10, dtype=torch.float64)
    labels = torch.arange(300) % 4
    x = torch.randn(25, 10, generator=g, dtype=torch.float64)
    neco = NECO().fit(train, labels)  # d = K − 1 = 3
    assert neco.n_components_ == 3
    scaler = StandardScaler().fit(train.numpy())
    pca = PCA(n_components=3).fit(scaler.transform(train.numpy()))
    xs = scaler.transform(x.numpy())
    ref = np.linalg.norm(pca.transform(xs), axis=1) / np.linalg.norm(xs, axis=1)
    np.testing.assert_allclose(neco.score(x).numpy(), ref, rtol=1e-8)
    logits = torch.randn(25, 4, generator=g, dtype=torch.float64)
    with_ml = NECO(3, use_max_logit=True).fit(train).score(x, logits)
    np.testing.assert_allclose(with_ml.numpy(), ref * logits.numpy().max(1), rtol=1e-8)
    with pytest.raises(RuntimeError, match="not fitted"):
        NECO().score(x)


# ------------------------------------------------------------ linear probe
def test_linear_probe_matches_sklearn_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(0)
    y = torch.arange(150) % 3
    x = torch.randn(150, 4, generator=g) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + 2 * torch.randn(3, 4, generator=g)[y]
    probe = LinearProbe(C=0.5, seed=0).fit(x, y)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=1000, random_state=0)).fit(x.numpy(), y)
    np.testing.assert_allclose(probe.logits(x).numpy(), ref.decision_function(x.numpy()), rtol=1e-6, atol=1e-6)
    assert probe.score(x, y) == pytest.approx(ref.score(x.numpy(), y.numpy()))
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearProbe().fit(x, torch.zeros(150, dtype=torch.long))


# ----------------------------------------------------- pytorch-ood optional
@pytest.mark.skipif(HAS_PYTORCH_OOD, reason="pytorch-ood is installed")
def test_pytorch_ood_cross_check_needs_the_extra():
    with pytest.raises(ImportError, match=r"nclens\[ood\]"):
        pytorch_ood_score("energy", logits=torch.zeros(2, 3))


@pytest.mark.skipif(not HAS_PYTORCH_OOD, reason="pytorch-ood is not installed")
def test_pytorch_ood_cross_check_agrees():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 4, generator=g)
    for name, fn in (("energy", energy_score), ("msp", msp_score), ("max_logit", max_logit_score)):
        assert torch.allclose(pytorch_ood_score(name, logits=logits), fn(logits), atol=1e-5)


# -------------------------------------------------------------- experiment
def _tiny(**extra):
    from nclens.ood.experiment import OODExperimentConfig, replace_config

    items = [
        "train.epochs=2",
        "seeds=[0]",
        "variants=[baseline, both]",
        "model.hidden=[32]",
        "model.feature_dim=16",
        "eval.probe_max_iter=200",
    ]
    return replace_config(OODExperimentConfig(), items + [f"{k}={v}" for k, v in extra.items()])


def test_experiment_runs_writes_and_resumes(tmp_path):
    from nclens.ood.experiment import run_experiment

    cfg = _tiny()
    res = run_experiment(cfg, tmp_path / "run", progress=False)
    layers = [(r["variant"], r["layer"]) for r in res.rows]
    assert layers == [("baseline", "encoder"), ("both", "encoder"), ("both", "projector")]
    for r in res.rows:
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["fpr95"] <= 1.0 and 0.0 <= r["transfer_acc"] <= 1.0
        assert r["nc1"] > 0 and math.isfinite(r["nc3_duality"]) and 0.0 <= r["nc4_ncc_mismatch"] <= 1.0
        assert {"auroc_classes", "auroc_noise", "auroc_hflip", "auroc_rot90"} <= set(r)
    sets = {(d["score"], d["ood_set"]) for d in res.detection}
    assert ("neco", "noise") in sets and ("mahalanobis", "classes") in sets
    folder = tmp_path / "run"
    for name in (
        "config.json",
        "runs.jsonl",
        "results.csv",
        "detection.csv",
        "summary.csv",
        "correlations.json",
        "nc1_vs_detection_transfer.png",
        "variants_bars.png",
    ):
        assert (folder / name).exists(), name
    assert (folder / "nc1_vs_detection_transfer.png").read_bytes()[:4] == b"\x89PNG"
    n_lines = len((folder / "runs.jsonl").read_text().splitlines())
    again = run_experiment(cfg, folder, progress=False)  # resumes: nothing is retrained
    assert len((folder / "runs.jsonl").read_text().splitlines()) == n_lines == 2
    assert again.rows == json.loads(json.dumps(res.rows))
    with pytest.raises(ValueError, match="different config"):
        run_experiment(_tiny(**{"train.lr": 0.01}), folder, progress=False)


def test_correlations_signs():
    from scipy.stats import pearsonr

    from nclens.ood.experiment import correlations

    pts = [{"nc1": v, "auroc": 1 - v, "fpr95": v / 2, "transfer_acc": 0.5 + v / 3} for v in (0.1, 0.2, 0.4, 0.8)]
    c = correlations(pts)
    assert c["auroc"]["r"] == pytest.approx(-1.0) and c["auroc"]["agrees"] is True
    assert c["transfer_acc"]["agrees"] is True and c["fpr95"]["agrees"] is True
    ref = pearsonr(np.log([0.1, 0.2, 0.4, 0.8]), [0.9, 0.8, 0.6, 0.2])[0]
    assert c["auroc"]["r_log"] == pytest.approx(ref)
    flipped = correlations([{**p, "transfer_acc": 1 - p["transfer_acc"]} for p in pts])
    assert flipped["transfer_acc"]["agrees"] is False


def test_config_errors(tmp_path):
    from nclens.ood.experiment import OODExperimentConfig, load_config, replace_config

    with pytest.raises(ValueError, match="unknown key 'epochz'"):
        replace_config(OODExperimentConfig(), ["train.epochz=3"])
    with pytest.raises(ValueError, match="variants"):
        replace_config(OODExperimentConfig(), ["variants=[baseline, nope]"])
    with pytest.raises(ValueError, match="overlap"):
        replace_config(OODExperimentConfig(), ["data.ood_classes=[4, 5]"])
    with pytest.raises(ValueError, match="detection_score"):
        replace_config(OODExperimentConfig(), ["eval.scores=[msp]"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed")
def test_imagenet100_protocol_needs_torchvision(tmp_path):
    from nclens.ood.experiment import build_data, load_config

    cfg = load_config("experiments/ood_imagenet100.yaml", [f"data.root={tmp_path}"])
    with pytest.raises(ImportError, match="torchvision"):
        build_data(cfg.data)


def test_cli_runs_a_tiny_config(tmp_path):
    from typer.testing import CliRunner

    from nclens.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "name: tiny\nseeds: [0]\nvariants: [projector]\ntrain: {epochs: 1}\n"
        "model: {hidden: [16], feature_dim: 8}\neval: {scores: [energy, msp], probe_max_iter: 100}\n"
    )
    result = CliRunner().invoke(app, ["ood", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "projector" in result.output and (tmp_path / "r" / "summary.csv").exists()
    bad = CliRunner().invoke(app, ["ood", str(cfg), "--set", "train.nope=1"])
    assert bad.exit_code == 2


# ------------------------------------------------------ few-shot transfer
def test_few_shot_indices_balanced_deterministic_and_uniform():
    from nclens.ood.experiment import few_shot_indices

    labels = torch.tensor([2] * 10 + [0] * 4 + [7] * 6)[torch.randperm(20, generator=torch.Generator().manual_seed(3))]
    idx = few_shot_indices(labels, 2, draws=5, seed=11)
    assert idx.shape == (5, 6) and idx.dtype == torch.int64
    for row in idx:
        assert row.unique().numel() == 6  # no sample twice
        assert labels[row].tolist() == [0, 0, 2, 2, 7, 7]  # sorted by class, exactly 2 each
    assert torch.equal(idx, few_shot_indices(labels, 2, draws=5, seed=11))  # deterministic
    assert torch.equal(idx[3], few_shot_indices(labels, 2, draws=1, seed=14)[0])  # draw i uses seed + i
    assert len({tuple(r.tolist()) for r in idx}) > 1  # draws differ
    # each sample is included with probability shots / class size (uniform subsets)
    many = few_shot_indices(labels, 2, draws=3000, seed=0)
    freq = torch.bincount(many.flatten(), minlength=20).double() / 3000
    counts = torch.bincount(labels)[labels].double()
    np.testing.assert_allclose(freq.numpy(), (2 / counts).numpy(), atol=0.04)
    # shots = class size takes the whole class
    full = few_shot_indices(labels, 4, draws=2)
    assert set(full[0][labels[full[0]] == 0].tolist()) == set(torch.nonzero(labels == 0).flatten().tolist())


def test_few_shot_indices_errors():
    from nclens.ood.experiment import few_shot_indices

    labels = torch.tensor([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"shots_per_class=3 exceeds .*\{1: 2\}"):
        few_shot_indices(labels, 3, draws=1)
    with pytest.raises(ValueError, match="shots_per_class"):
        few_shot_indices(labels, 0, draws=1)
    with pytest.raises(ValueError, match="draws"):
        few_shot_indices(labels, 1, draws=0)
    with pytest.raises(TypeError, match="integer"):
        few_shot_indices(labels.float(), 1, draws=1)


def test_transfer_accuracy_matches_sklearn_on_the_same_subsets():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from nclens.ood.experiment import few_shot_indices, transfer_accuracy

    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 6, generator=g) + 1.2 * torch.randn(3, 6, generator=g)[y]
    xa, ya, xb, yb = x[:150], y[:150], x[150:], y[150:]

    def sk(rows):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=500))
        return model.fit(xa[rows].double().numpy(), ya[rows].numpy()).score(xb.double().numpy(), yb.numpy())

    acc, std = transfer_accuracy(xa, ya, xb, yb, probe_c=0.5, probe_max_iter=500)
    assert acc == pytest.approx(sk(torch.arange(150))) and std == 0.0
    acc, std = transfer_accuracy(xa, ya, xb, yb, shots_per_class=3, draws=6, seed=4, probe_c=0.5, probe_max_iter=500)
    ref = np.array([sk(rows) for rows in few_shot_indices(ya, 3, 6, seed=4)])
    assert acc == pytest.approx(ref.mean()) and std == pytest.approx(ref.std())
    assert 0.0 < acc < 1.0


def test_alpha_sweep_jobs_rows_and_summary(tmp_path):
    from nclens.ood.experiment import jobs, run_experiment, summarise

    cfg = _tiny(
        **{
            "variants": "[baseline, entropy]",
            "koleo_weights": "[0.1, 1.0]",
            "transfer.shots_per_class": 3,
            "transfer.draws": 2,
            "eval.scores": "[energy]",
        }
    )
    assert jobs(cfg) == [("baseline", 0.0, 0), ("entropy", 0.1, 0), ("entropy", 1.0, 0)]
    res = run_experiment(cfg, tmp_path / "sweep", progress=False)
    assert [(r["variant"], r["alpha"], r["layer"]) for r in res.rows] == [
        ("baseline", 0.0, "encoder"),
        ("entropy", 0.1, "encoder"),
        ("entropy", 1.0, "encoder"),
    ]
    for r in res.rows:
        assert 0.0 <= r["transfer_acc"] <= 1.0 and 0.0 <= r["transfer_acc_full"] <= 1.0
        assert r["transfer_draw_std"] >= 0.0 and r["transfer_acc_classes"] == r["transfer_acc"]
    # every training used its own α: loss = CE + α·KoLeo in every epoch
    records = [json.loads(line) for line in (tmp_path / "sweep" / "runs.jsonl").read_text().splitlines()]
    for rec in records:
        for h in rec["history"]:
            assert h["loss"] == pytest.approx(h["ce"] + rec["alpha"] * h["koleo"], rel=1e-5, abs=1e-6)
    assert records[0]["history"][0]["koleo"] == 0.0 and records[2]["history"][0]["koleo"] != 0.0
    summary = {(s["variant"], s["alpha"]): s for s in res.summary}
    assert set(summary) == {("baseline", 0.0), ("entropy", 0.1), ("entropy", 1.0)}
    assert summary[("entropy", 1.0)]["transfer_acc_full"] == pytest.approx(res.rows[2]["transfer_acc_full"])
    assert res.correlations["over_variant_layer_means"]["n_points"] == 3
    assert res.transfer == {"shots_per_class": 3, "draws": 2, "seed": 0}
    # summary over seeds groups by (variant, α, layer), α = None for rows without one
    pts = [
        {"variant": "entropy", "alpha": a, "layer": "encoder", "nc1": v}
        for a, v in ((0.5, 1.0), (0.5, 3.0), (2.0, 5.0))
    ]
    s = summarise(pts + [{"variant": "baseline", "layer": "encoder", "nc1": 7.0}], keys=("nc1",))
    assert [(e["variant"], e["alpha"], e["nc1"], e["nc1_std"]) for e in s] == [
        ("baseline", None, 7.0, 0.0),
        ("entropy", 0.5, 2.0, 1.0),
        ("entropy", 2.0, 5.0, 0.0),
    ]


def test_sweep_and_transfer_config_errors():
    from nclens.ood.experiment import OODExperimentConfig, load_config, replace_config

    with pytest.raises(ValueError, match="koleo_weights must all be > 0"):
        replace_config(OODExperimentConfig(), ["koleo_weights=[0.0, 1.0]"])
    with pytest.raises(ValueError, match="duplicates"):
        replace_config(OODExperimentConfig(), ["koleo_weights=[1.0, 1.0]"])
    with pytest.raises(ValueError, match="shots_per_class"):
        replace_config(OODExperimentConfig(), ["transfer.shots_per_class=0"])
    with pytest.raises(ValueError, match="draws"):
        replace_config(OODExperimentConfig(), ["transfer.draws=0"])
    with pytest.raises(ValueError, match="unknown key 'shots'"):
        replace_config(OODExperimentConfig(), ["transfer.shots=5"])
    cfg = load_config("experiments/ood_digits_sweep.yaml")
    assert cfg.koleo_weights == (0.1, 0.5, 1.0, 2.0) and cfg.transfer.shots_per_class == 5
    assert load_config("experiments/ood_digits.yaml").transfer.draws == 20
