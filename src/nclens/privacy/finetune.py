"""Private fine-tuning of a linear head on real features: one feature set's collapse, one head's accuracy.

* :func:`feature_set_record` — the collapse of a feature set on its private split (nc1, nc2_etf,
  within_share, cdnv from :class:`~nclens.core.stats.ClassStats`), its feature shift (global and
  per-sample normalisation, :mod:`~nclens.privacy.shift`) and the shift after each remedy;
* :func:`fit_remedy` — a remedy (centre, PCA, normalise) fitted on the *public* split;
* :func:`head_accuracy` — a private (NoisyGD / DP-SGD at ε) or non-private head trained on the
  private split, its test accuracy and the privacy actually spent. Two non-private references
  (:data:`NONPRIVATE`): ``"nonprivate"``, the private heads' own full-batch GD without clipping or noise
  (same steps and learning rate: what the noise and clipping cost), and ``"logreg"``, a converged
  L2-regularised multinomial logistic regression (scikit-learn, lbfgs, with bias; C picked from
  :data:`LOGREG_CS` by 3-fold stratified cross-validation on the private split): the best a linear
  head does without privacy.

Example:
    >>> import torch
    >>> from nclens.data import gaussian_features
    >>> from nclens.privacy.config import HeadsConfig, RemedyConfig
    >>> from nclens.privacy.data import Part
    >>> f = gaussian_features(num_classes=3, dim=6, per_class=60, sigma=0.2, seed=0)
    >>> part = Part(f.features, f.labels)
    >>> rec = feature_set_record("g", part, part, part, [RemedyConfig("centred")])
    >>> 0.0 < rec["feature_shift"] < 1.0, rec["dim"]
    (True, 6)
    >>> prep = fit_remedy(RemedyConfig("centred"), part.x)
    >>> z = prep.transform(part.x)
    >>> head_accuracy(z, part.y, z, part.y, 3, HeadsConfig(epochs=20, seeds=(0,)), "noisygd", 8.0, 0)["accuracy"] > 0.8
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from nclens.core.metrics import compute_metrics
from nclens.core.stats import ClassStats
from nclens.privacy.heads import FeaturePreprocessor, PrivateHeadConfig, train_private_head
from nclens.privacy.shift import feature_shift, feature_shift_from_stats

__all__ = ["COLLAPSE_METRICS", "NONPRIVATE", "LOGREG_CS", "fit_remedy", "feature_set_record", "head_accuracy",
           "logreg_accuracy"]

#: the collapse metrics recorded for every feature set (registry names)
COLLAPSE_METRICS = ("nc1", "within_share", "nc2_etf", "cdnv")
#: the non-private references: the private heads' GD without clipping and noise; converged logistic regression
NONPRIVATE = ("nonprivate", "logreg")
#: the inverse L2 strengths C the logistic-regression reference chooses from (3-fold CV on the private split)
LOGREG_CS = (0.01, 0.1, 1.0, 10.0, 100.0)


def fit_remedy(remedy: Any, public_x: Tensor) -> FeaturePreprocessor:
    """The remedy (:class:`~nclens.privacy.config.RemedyConfig`) fitted on public features."""
    return FeaturePreprocessor(centre=True, pca=remedy.pca, normalise=remedy.normalise).fit(public_x)


def feature_set_record(name: str, public: Any, private: Any, test: Any, remedies: Sequence[Any]) -> dict[str, Any]:
    """Collapse and feature shift of one feature set (on its private split), and the shift after each remedy."""
    k = int(torch.unique(private.y).numel())
    stats = ClassStats(num_classes=k).update(private.x, private.y)
    metrics = compute_metrics(stats, names=COLLAPSE_METRICS)
    shift = feature_shift_from_stats(stats)
    record: dict[str, Any] = {
        "feature_set": name,
        "dim": int(private.x.shape[1]),
        "n_public": int(public.x.shape[0]),
        "n_private": int(private.x.shape[0]),
        "n_test": int(test.x.shape[0]),
        "feature_shift": shift.rms,
        "feature_shift_means": shift.means,
        "feature_shift_within": shift.within,
        "feature_shift_public": feature_shift(public.x, public.y).rms,
        "feature_shift_sample_normalised": feature_shift(private.x, private.y, normalise="sample").rms,
        **{m: metrics.get(m) for m in COLLAPSE_METRICS},
        "remedies": {},
    }
    for remedy in remedies:
        z = fit_remedy(remedy, public.x).transform(private.x)
        shifted = feature_shift(z, private.y).rms if z.shape[1] >= k - 1 else None  # an ETF needs D >= K-1
        record["remedies"][remedy.name] = {"dim": int(z.shape[1]), "feature_shift": shifted}
    return record


def head_accuracy(z_private: Tensor, y_private: Tensor, z_test: Tensor, y_test: Tensor, num_classes: int,
                  heads: Any, algorithm: str, epsilon: float | None, seed: int) -> dict[str, Any]:
    """Train one head (``algorithm`` at ``epsilon``; ``"nonprivate"`` with ``epsilon=None``); its test accuracy.

    NoisyGD and the non-private head take ``heads.epochs`` full-batch steps; DP-SGD
    ``heads.dpsgd_epochs`` epochs of Poisson-sampled batches (``heads.batch_size``); ``"logreg"`` is
    :func:`logreg_accuracy` (deterministic; ``seed`` only fixes the CV folds).
    """
    if algorithm == "logreg":
        return logreg_accuracy(z_private, y_private, z_test, y_test, seed=seed)
    private = algorithm != "nonprivate"
    cfg = PrivateHeadConfig(
        algorithm=algorithm, epochs=heads.dpsgd_epochs if algorithm == "dpsgd" else heads.epochs, lr=heads.lr,
        momentum=heads.momentum, clip=heads.clip, target_epsilon=epsilon if private else None, delta=heads.delta,
        batch_size=heads.batch_size, accountant=heads.accountant, seed=seed, engine=heads.engine, lr_key="heads.lr",
    )
    res = train_private_head(z_private, y_private, cfg, num_classes=num_classes)
    scores = z_test @ res.weight.T + (res.bias if res.bias is not None else 0.0)
    accuracy = float((scores.argmax(1) == y_test).double().mean())
    return {
        "accuracy": accuracy,
        "epsilon_spent": res.epsilon if math.isfinite(res.epsilon) else None,
        "noise_multiplier": res.noise_multiplier,
        "steps": res.steps,
        "final_loss": res.loss[-1],
    }


def logreg_accuracy(z_private: Tensor, y_private: Tensor, z_test: Tensor, y_test: Tensor, *,
                    seed: int = 0) -> dict[str, Any]:
    """Test accuracy of a converged L2-regularised multinomial logistic regression (non-private reference).

    scikit-learn's ``LogisticRegression`` (lbfgs, with intercept, float64) minimising
    ½‖W‖² + C Σ_i CE(W h_i + b, y_i); C is the entry of :data:`LOGREG_CS` with the best mean
    accuracy over a 3-fold stratified split of the private features (ties: the smaller C; each fold
    walks the C path with warm starts), then refitted from zero on all of them.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = z_private.detach().cpu().double().numpy()
    y = y_private.detach().cpu().numpy()
    scores = np.zeros(len(LOGREG_CS))
    for tr, va in StratifiedKFold(3, shuffle=True, random_state=seed).split(x, y):
        clf = LogisticRegression(C=LOGREG_CS[0], max_iter=5000, warm_start=True)  # the C path, warm-started:
        for i, c in enumerate(LOGREG_CS):  # each fit converges to the same (strictly convex) optimum, faster
            scores[i] += clf.set_params(C=c).fit(x[tr], y[tr]).score(x[va], y[va])
    best = LOGREG_CS[int(np.argmax(scores))]
    clf = LogisticRegression(C=best, max_iter=5000).fit(x, y)
    accuracy = float(clf.score(z_test.detach().cpu().double().numpy(), y_test.detach().cpu().numpy()))
    return {"accuracy": accuracy, "epsilon_spent": None, "noise_multiplier": 0.0, "steps": int(clf.n_iter_.max()),
            "final_loss": None, "logreg_c": best}
