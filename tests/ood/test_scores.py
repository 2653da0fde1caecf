"""OOD scores and detection metrics (both conventions, and the official ones), probes, transfer."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from sklearn.metrics import average_precision_score, roc_auc_score

from nclens.core.stats import ClassStats
from nclens.ood import (
    NECO,
    AdamWProbe,
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
    official_detection_metrics,
    ood_metrics,
    pytorch_ood_score,
)


def _loads(name: str) -> bool:
    """Installed *and* importable: a pytorch-ood whose torchvision was built for another torch fails on import."""
    if importlib.util.find_spec(name) is None:
        return False
    try:
        importlib.import_module(name)
    except (ImportError, RuntimeError):
        return False
    return True


HAS_PYTORCH_OOD = _loads("pytorch_ood")


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


# ------------------------------------------------ official detection metrics
def _official_cal_metric(known, novel):
    """A transcription of the official loop (yousuf907/NC-OOD ood_det/metrics.py, cal_metric + get_curve)."""
    trapz = getattr(np, "trapezoid", None) or np.trapz
    known, novel = np.sort(known), np.sort(novel)
    all_ = np.sort(np.concatenate((known, novel)))
    num_k, num_n = known.shape[0], novel.shape[0]
    threshold = known[round(0.05 * num_k)]
    tp = -np.ones([num_k + num_n + 1], dtype=int)
    fp = -np.ones([num_k + num_n + 1], dtype=int)
    tp[0], fp[0] = num_k, num_n
    k, n = 0, 0
    for l in range(num_k + num_n):  # noqa: E741 - the official names
        if k == num_k:
            tp[l + 1:] = tp[l]
            fp[l + 1:] = np.arange(fp[l] - 1, -1, -1)
            break
        elif n == num_n:
            tp[l + 1:] = np.arange(tp[l] - 1, -1, -1)
            fp[l + 1:] = fp[l]
            break
        elif novel[n] < known[k]:
            n += 1
            tp[l + 1], fp[l + 1] = tp[l], fp[l] - 1
        else:
            k += 1
            tp[l + 1], fp[l + 1] = tp[l] - 1, fp[l]
    j = num_k + num_n - 1
    for _ in range(num_k + num_n - 1):
        if all_[j] == all_[j - 1]:
            tp[j], fp[j] = tp[j + 1], fp[j + 1]
        j -= 1
    out = {"fpr": np.sum(novel > threshold) / float(num_n)}
    tpr = np.concatenate([[1.0], tp / tp[0], [0.0]])
    fpr = np.concatenate([[1.0], fp / fp[0], [0.0]])
    out["auroc"] = -trapz(1.0 - fpr, tpr)
    out["dterr"] = ((tp[0] - tp + fp) / (tp[0] + fp[0])).min()
    denom = (tp + fp).astype(float)
    denom[denom == 0.0] = -1.0
    pin_ind = np.concatenate([[True], denom > 0.0, [True]])
    pin = np.concatenate([[0.5], tp / denom, [0.0]])
    out["auin"] = -trapz(pin[pin_ind], tpr[pin_ind])
    denom = (tp[0] - tp + fp[0] - fp).astype(float)
    denom[denom == 0.0] = -1.0
    pout_ind = np.concatenate([[True], denom > 0.0, [True]])
    pout = np.concatenate([[0.0], (fp[0] - fp) / denom, [0.5]])
    out["auout"] = trapz(pout[pout_ind], 1.0 - fpr[pout_ind])
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_official_detection_metrics_equal_the_official_loop(ties):
    rng = np.random.default_rng(1 + ties)
    for _ in range(25):
        known = rng.normal(1.0, 1.0, rng.integers(5, 60))
        novel = rng.normal(0.0, 1.0, rng.integers(3, 60))
        if ties:
            known, novel = np.round(known, 1), np.round(novel, 1)
        ref, got = _official_cal_metric(known, novel), official_detection_metrics(known, novel)
        for key in ref:
            assert got[key] == pytest.approx(float(ref[key]), abs=1e-12), key
        assert got["auroc"] == pytest.approx(roc_auc_score(np.r_[np.ones(known.size), np.zeros(novel.size)],
                                                           np.r_[known, novel]), abs=0.5 / min(known.size, novel.size))


def test_official_detection_metrics_hand_cases():
    perfect = official_detection_metrics([3.0, 2.0, 1.0, 0.5], [0.0, -1.0])
    assert {k: perfect[k] for k in ("fpr", "dterr", "auroc")} == pytest.approx({"fpr": 0.0, "dterr": 0.0, "auroc": 1.0})
    # the official end points (precision ½ at recall 1 for AUIN, ½ at the far end for AUOUT) cap a perfect split below 1
    assert perfect["auin"] < 1.0 and perfect["auout"] < 1.0
    # one OOD score above every ID score: the best threshold errs on that one sample of 4
    m = official_detection_metrics([1.0, 2.0, 3.0], [5.0])
    assert m["dterr"] == pytest.approx(1 / 4) and m["fpr"] == 1.0 and m["auroc"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="empty"):
        official_detection_metrics([], [1.0])


# --------------------------------------------------------------- AdamW probe
def test_adamw_probe_equals_the_official_recipe_rederived():
    """nn.Linear(N(0, 0.01²), b = 0) + AdamW(1e-3, wd 0) + CE(label smoothing 0.1), 256-batches, one generator."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(600) % 4
    x = torch.randn(600, 5, generator=g) + 2.0 * torch.randn(4, 5, generator=g)[y]
    probe = AdamWProbe(epochs=3, seed=7).fit(x, y)
    gen = torch.Generator().manual_seed(7)
    lin = torch.nn.Linear(5, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, 5, generator=gen) * 0.01)
        lin.bias.zero_()
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3, weight_decay=0.0)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    for _ in range(3):
        order = torch.randperm(600, generator=gen)
        for start in range(0, 600, 256):
            idx = order[start:start + 256]
            opt.zero_grad()
            crit(lin(x[idx]), y[idx]).backward()
            opt.step()
    assert torch.allclose(probe.weight_, lin.weight.detach().double(), atol=1e-6)
    assert torch.allclose(probe.bias_, lin.bias.detach().double(), atol=1e-6)
    assert torch.equal(AdamWProbe(epochs=3, seed=7).fit(x, y).weight_, probe.weight_)  # a pure function of its seed
    again = AdamWProbe(epochs=4, seed=7).fit(x, y, eval_set=(x, y))
    assert len(again.accuracy_per_epoch_) == 4 and again.best_accuracy_ == max(again.accuracy_per_epoch_)
    with pytest.raises(ValueError, match="lr"):
        AdamWProbe(lr=float("nan"))
    with pytest.raises(ValueError, match="at least 2 classes"):
        AdamWProbe().fit(x, torch.zeros(600, dtype=torch.long))


# ----------------------------------------------------- pytorch-ood optional
@pytest.mark.skipif(HAS_PYTORCH_OOD, reason="pytorch-ood is installed")
def test_pytorch_ood_cross_check_needs_the_extra():
    with pytest.raises(ImportError, match=r"nclens\[ood\]"):
        pytorch_ood_score("energy", logits=torch.zeros(2, 3))


@pytest.mark.skipif(not HAS_PYTORCH_OOD, reason="pytorch-ood (and a torchvision matching torch) is not installed")
def test_pytorch_ood_cross_check_agrees():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 4, generator=g)
    for name, fn in (("energy", energy_score), ("msp", msp_score), ("max_logit", max_logit_score)):
        assert torch.allclose(pytorch_ood_score(name, logits=logits), fn(logits), atol=1e-5)


def test_few_shot_indices_balanced_deterministic_and_uniform():
    from nclens.ood.transfer import few_shot_indices

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
    from nclens.ood.transfer import few_shot_indices

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

    from nclens.ood.transfer import few_shot_indices, transfer_accuracy

    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = torch.randn(300, 6, generator=g) + 1.2 * torch.randn(3, 6, generator=g)[y]
    xa, ya, xb, yb = x[:150], y[:150], x[150:], y[150:]

    def sk(rows):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=500))
        return model.fit(xa[rows].double().numpy(), ya[rows].numpy()).score(xb.double().numpy(), yb.numpy())

    probe = lambda r: LinearProbe(C=0.5, max_iter=500)  # noqa: E731
    acc, std = transfer_accuracy(xa, ya, xb, yb, probe=probe)
    assert acc == pytest.approx(sk(torch.arange(150))) and std == 0.0
    acc, std = transfer_accuracy(xa, ya, xb, yb, shots_per_class=3, draws=6, seed=4, probe=probe)
    ref = np.array([sk(rows) for rows in few_shot_indices(ya, 3, 6, seed=4)])
    assert acc == pytest.approx(ref.mean()) and std == pytest.approx(ref.std())
    assert 0.0 < acc < 1.0
