"""Out-of-distribution (OOD) detection scores, detection metrics and linear probes on frozen features.

Scores follow one convention: **higher = more in-distribution (ID)** (the "confidence" convention of
the papers below and of Harun et al. 2025). pytorch-ood returns *outlier* scores (higher = more
OOD); :func:`pytorch_ood_score` negates them so both read the same.

=============  ===================================================================  ==========================
score          formula (logits f = W h + b, K classes)                               source
=============  ===================================================================  ==========================
energy         T · log Σ_k exp(f_k / T)   (negative free energy)                     Liu et al., NeurIPS 2020
msp            max_k softmax(f)_k                                                    Hendrycks & Gimpel 2017
max_logit      max_k f_k                                                             Hendrycks et al. 2022
mahalanobis    −min_c (h − μ_c)ᵀ Σ_W⁺ (h − μ_c), μ_c and Σ_W from ClassStats         Lee et al., NeurIPS 2018
nci            (h − μ_G)·w_ĉ / ‖h − μ_G‖ + α‖h‖₁, ĉ = argmax f, μ_G = ID mean        Liu & Qin, CVPR 2025
neco           ‖P_d(h̃ − m)‖ / ‖h̃‖ (· max_k f_k optionally), h̃ standardised,          Ammar et al., ICLR 2024
               P_d = top-d principal directions of the ID training features
=============  ===================================================================  ==========================

Metrics (:func:`ood_metrics`) with a selectable convention:

* ``positive="id"`` (Harun et al. 2025, OpenOOD): ID is the positive class, scored by the ID score.
  AUPR is AUPR-In; FPR95 is the fraction of OOD samples accepted when 95% of ID samples are.
* ``positive="ood"`` (pytorch-ood): OOD is the positive class, scored by the outlier score −s.
  AUPR is AUPR-Out; FPR95 is the fraction of ID samples rejected when 95% of OOD samples are.

AUROC is the same in both conventions; AUPR and FPR95 differ.

Example:
    >>> import torch
    >>> from nclens.ood import energy_score, ood_metrics
    >>> g = torch.Generator().manual_seed(0)
    >>> id_logits = torch.randn(200, 5, generator=g) * 3 + torch.eye(5)[torch.arange(200) % 5] * 6
    >>> ood_logits = torch.randn(200, 5, generator=g)
    >>> m = ood_metrics(energy_score(id_logits), energy_score(ood_logits))
    >>> m["auroc"] > 0.9
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nclens.core.stats import ClassStats, validate_features, validate_labels

__all__ = [
    "SCORES",
    "LOGIT_SCORES",
    "FEATURE_SCORES",
    "energy_score",
    "msp_score",
    "max_logit_score",
    "mahalanobis_whitener",
    "mahalanobis_score",
    "Mahalanobis",
    "nci_score",
    "NECO",
    "ood_metrics",
    "official_detection_metrics",
    "auroc",
    "aupr",
    "fpr_at_tpr",
    "pytorch_ood_score",
    "summarise_sets",
]

#: Scores computed from logits alone.
LOGIT_SCORES: tuple[str, ...] = ("energy", "msp", "max_logit")
#: Scores that need features (and fitted ID statistics).
FEATURE_SCORES: tuple[str, ...] = ("mahalanobis", "nci", "neco")
#: Every score name, default first.
SCORES: tuple[str, ...] = LOGIT_SCORES + FEATURE_SCORES

_POSITIVES = ("id", "ood")


# ------------------------------------------------------------------ checks
def _logits(logits: Any, name: str = "logits") -> Tensor:
    logits = validate_features(torch.as_tensor(logits) if not isinstance(logits, Tensor) else logits, name)
    if logits.shape[1] < 2:
        raise ValueError(f"{name} need at least 2 classes (columns), got shape {tuple(logits.shape)}")
    return logits


# ------------------------------------------------------------- logit scores
def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy T·logsumexp(f/T) (Liu, Wang, Owens & Li, NeurIPS 2020): higher = more ID.

    Args:
        logits: (N, K) logits.
        temperature: T > 0.

    Returns:
        (N,) float64 scores.

    Example:
        >>> float(energy_score(torch.zeros(1, 4)))  # log 4
        1.3862943611198906
    """
    logits = _logits(logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return temperature * torch.logsumexp(logits.to(torch.float64) / temperature, dim=1)


def msp_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Maximum softmax probability max_k softmax(f/T)_k (Hendrycks & Gimpel, ICLR 2017).

    Example:
        >>> float(msp_score(torch.zeros(1, 4)))
        0.25
    """
    logits = _logits(logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return torch.softmax(logits.to(torch.float64) / temperature, dim=1).max(dim=1).values


def max_logit_score(logits: Tensor) -> Tensor:
    """Maximum logit max_k f_k (Hendrycks et al., ICML 2022, "Scaling OOD detection").

    Example:
        >>> max_logit_score(torch.tensor([[1.0, 3.0, 2.0]])).tolist()
        [3.0]
    """
    return _logits(logits).to(torch.float64).max(dim=1).values


# --------------------------------------------------------------- Mahalanobis
def mahalanobis_whitener(stats: ClassStats, rcond: float = 1e-10) -> Tensor:
    """A (D×r) matrix A with A Aᵀ = Σ_W⁺ (pseudo-inverse of the shared within-class covariance).

    Σ_W = S_W / N from the statistics. Eigenvalues below ``rcond · λ_max`` are treated
    as zero, so a singular Σ_W (collapsed features, D > N) uses its pseudo-inverse.

    Example:
        >>> s = ClassStats(num_classes=2).update(torch.tensor([[0.0, 0], [2, 0], [0, 4], [2, 4]]),
        ...                                       torch.tensor([0, 0, 1, 1]))
        >>> a = mahalanobis_whitener(s)            # Σ_W = diag(1, 0): pseudo-inverse diag(1, 0)
        >>> torch.allclose(a @ a.T, torch.tensor([[1.0, 0], [0, 0]], dtype=torch.float64))
        True
    """
    if not isinstance(stats, ClassStats):
        raise TypeError(f"stats must be a ClassStats, got {type(stats).__name__}")
    if not stats.initialized or stats.total == 0:
        raise ValueError("stats are empty: update them with ID training features first")
    if stats.scatter_w is None:
        raise ValueError("the Mahalanobis score needs Σ_W: keep the statistics with scatter='full'")
    sigma = stats.scatter_w / stats.total
    evals, evecs = torch.linalg.eigh((sigma + sigma.T) / 2)
    top = float(evals.max())
    if top <= 0:
        raise ValueError("Σ_W is zero (every class fully collapsed): the Mahalanobis distance is undefined")
    keep = evals > rcond * top
    return evecs[:, keep] / evals[keep].sqrt()  # (D, r): A Aᵀ = V Λ⁻¹ Vᵀ = Σ_W⁺


def mahalanobis_score(features: Tensor, stats: ClassStats, rcond: float = 1e-10) -> Tensor:
    """−min_c (h − μ_c)ᵀ Σ_W⁺ (h − μ_c) with class means and shared Σ_W from ``stats`` (Lee et al. 2018).

    Only observed classes (count > 0) compete. Computed in whitened coordinates (h A, μ_c A) with
    exact differences (no ‖a‖² − 2ab + ‖b‖² cancellation).

    Args:
        features: (N, D) features of the samples to score.
        stats: ID *training* statistics of the same layer (scatter="full").
        rcond: relative eigenvalue cut-off of the pseudo-inverse.

    Returns:
        (N,) float64 scores (≤ 0; 0 = on a class mean).
    """
    return Mahalanobis(rcond).fit(stats).score(features)


class Mahalanobis:
    """Fitted form of :func:`mahalanobis_score`: the whitener and class means computed once.

    Args:
        rcond: relative eigenvalue cut-off of Σ_W⁺.

    Attributes:
        whitener_: (D, r) A with A Aᵀ = Σ_W⁺.  means_: (K', D) means of the observed classes.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(100, 3, generator=g), torch.arange(100) % 2
        >>> m = Mahalanobis().fit(ClassStats(num_classes=2).update(x, y))
        >>> torch.allclose(m.score(x), mahalanobis_score(x, m.stats_))
        True
    """

    def __init__(self, rcond: float = 1e-10) -> None:
        if not rcond >= 0:
            raise ValueError(f"rcond must be >= 0, got {rcond!r}")
        self.rcond = rcond

    def fit(self, stats: ClassStats) -> Mahalanobis:
        """Take Σ_W and the class means from ID training statistics."""
        self.whitener_ = mahalanobis_whitener(stats, self.rcond)
        self.means_ = stats.means[stats.counts > 0]
        self.stats_ = stats
        return self

    def score(self, features: Tensor) -> Tensor:
        """(N,) scores −min_c (h − μ_c)ᵀ Σ_W⁺ (h − μ_c) (higher = more ID)."""
        if not hasattr(self, "whitener_"):
            raise RuntimeError("Mahalanobis is not fitted: call fit(stats) first")
        features = validate_features(features)
        a = self.whitener_.to(features.device)
        if features.shape[1] != a.shape[0]:
            raise ValueError(f"features have dimension {features.shape[1]}, the statistics have D={a.shape[0]}")
        zh = features.to(torch.float64) @ a  # (N, r)
        zm = self.means_.to(features.device) @ a  # (K', r)
        d2 = torch.cdist(zh, zm, compute_mode="donot_use_mm_for_euclid_dist").square()  # (N, K')
        return -d2.min(dim=1).values


# ----------------------------------------------------------------------- NCI
def nci_score(
    features: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    global_mean: Tensor,
    alpha: float = 0.0,
) -> Tensor:
    """NCI (Liu & Qin, "Detecting Out-of-distribution through the Lens of Neural Collapse", CVPR 2025).

    s(h) = (h − μ_G)·w_ĉ / ‖h − μ_G‖₂ + α‖h‖₁ with ĉ = argmax (W h + b) and μ_G the mean of the ID
    training features. The first term (pScore) rewards features aligned with their predicted
    class's weight; the second rejects features near the origin. As in pytorch-ood, ‖w_ĉ‖ is not
    divided out (under NC the rows of W are equinorm).

    Args:
        features: (N, D).
        weight: (K, D) classifier weight; bias: (K,) or ``None``.
        global_mean: (D,) μ_G of the ID training features (``stats.sums.sum(0) / stats.total``).
        alpha: α ≥ 0.

    Returns:
        (N,) float64 scores.
    """
    features = validate_features(features)
    h = features.to(torch.float64)
    w = torch.as_tensor(weight).to(h.device, torch.float64)
    if w.ndim != 2 or w.shape[1] != h.shape[1]:
        raise ValueError(f"weight must be (K, {h.shape[1]}), got shape {tuple(w.shape)}")
    mu = torch.as_tensor(global_mean).to(h.device, torch.float64)
    if mu.shape != (h.shape[1],):
        raise ValueError(f"global_mean must have shape ({h.shape[1]},), got {tuple(mu.shape)}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    logits = h @ w.T
    if bias is not None:
        logits = logits + torch.as_tensor(bias).to(h.device, torch.float64)
    w_hat = w[logits.argmax(dim=1)]  # (N, D) predicted class's weight row
    z = h - mu
    p_score = (z * w_hat).sum(1) / z.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    return p_score + alpha * h.abs().sum(1) if alpha > 0 else p_score


# ---------------------------------------------------------------------- NECO
class NECO:
    """NECO score (Ammar et al., "NECO: NEural Collapse Based Out-of-distribution detection", ICLR 2024).

    NECO(h) = ‖P_dᵀ (h̃ − m)‖₂ / ‖h̃‖₂, optionally × max_k f_k, where h̃ is h standardised per
    dimension with the ID training mean and std (population, as scikit-learn's StandardScaler), m
    the mean of the standardised training features and P_d (D×d) the top-d eigenvectors of their
    covariance. Under neural collapse ID features live in the (K−1)-dimensional span of the class
    means while OOD features are near-orthogonal to it, so the ratio is large for ID inputs.

    Args:
        n_components: d (≤ D; ``None`` = K−1 from ``fit``'s labels, or the number of components that
            explain ``variance`` of the training variance when no labels are given).
        standardize: standardise per dimension first (the reference implementation does).
        use_max_logit: multiply by the maximum logit (the paper does this for ViT backbones).
        variance: explained-variance share used when ``n_components`` is ``None`` and no labels.

    Attributes:
        mean_, scale_: (D,) standardisation statistics (zeros / ones without ``standardize``).
        pca_mean_: (D,) m.  components_: (D, d) P_d.  explained_variance_: (D,) all eigenvalues.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> train = torch.randn(300, 2, generator=g) @ torch.tensor([[5.0, 0, 0], [0, 5.0, 0]])
        >>> neco = NECO(n_components=2, standardize=False).fit(train + 0.1 * torch.randn(300, 3, generator=g))
        >>> bool(neco.score(torch.tensor([[3.0, 3.0, 0.0]])) > neco.score(torch.tensor([[0.0, 0.0, 3.0]])))
        True
    """

    def __init__(
        self,
        n_components: int | None = None,
        *,
        standardize: bool = True,
        use_max_logit: bool = False,
        variance: float = 0.9,
    ) -> None:
        if n_components is not None and (not isinstance(n_components, int) or n_components < 1):
            raise ValueError(f"n_components must be a positive integer or None, got {n_components!r}")
        if not 0.0 < variance <= 1.0:
            raise ValueError(f"variance must lie in (0, 1], got {variance!r}")
        self.n_components = n_components
        self.standardize = standardize
        self.use_max_logit = use_max_logit
        self.variance = variance

    def fit(self, features: Tensor, labels: Tensor | None = None) -> NECO:
        """Fit the standardisation and the principal subspace on ID training features (N, D)."""
        h = validate_features(features).to(torch.float64)
        n, d = h.shape
        if n < 2:
            raise ValueError(f"NECO needs at least 2 training samples, got {n}")
        if self.standardize:
            self.mean_ = h.mean(0)
            std = h.std(0, unbiased=False)
            self.scale_ = torch.where(std > 1e-12, std, torch.ones_like(std))
        else:
            self.mean_ = torch.zeros(d, dtype=h.dtype, device=h.device)
            self.scale_ = torch.ones(d, dtype=h.dtype, device=h.device)
        ht = (h - self.mean_) / self.scale_  # (N, D) standardised
        self.pca_mean_ = ht.mean(0)
        centred = ht - self.pca_mean_
        evals, evecs = torch.linalg.eigh(centred.T @ centred / (n - 1))
        order = torch.argsort(evals, descending=True)
        self.explained_variance_ = evals[order].clamp_min(0)
        if self.n_components is not None:
            k = self.n_components
            if k > d:
                raise ValueError(f"n_components={k} exceeds the feature dimension D={d}")
        elif labels is not None:
            k = max(1, int(torch.unique(validate_labels(labels, n)).numel()) - 1)
        else:
            share = torch.cumsum(self.explained_variance_, 0) / self.explained_variance_.sum()
            k = int(torch.searchsorted(share, torch.tensor(self.variance, dtype=share.dtype, device=share.device))) + 1
        self.n_components_ = min(k, d)
        self.components_ = evecs[:, order[: self.n_components_]]  # (D, d)
        return self

    def score(self, features: Tensor, logits: Tensor | None = None) -> Tensor:
        """(N,) NECO scores (higher = more ID); ``logits`` are needed with ``use_max_logit``."""
        if not hasattr(self, "components_"):
            raise RuntimeError("NECO is not fitted: call fit(train_features) first")
        h = validate_features(features).to(self.components_.device, torch.float64)
        if h.shape[1] != self.components_.shape[0]:
            raise ValueError(f"features have dimension {h.shape[1]}, NECO was fitted on D={self.components_.shape[0]}")
        ht = (h - self.mean_) / self.scale_
        ratio = ((ht - self.pca_mean_) @ self.components_).norm(dim=1) / ht.norm(dim=1).clamp_min(1e-300)
        if self.use_max_logit:
            if logits is None:
                raise ValueError("use_max_logit=True needs the logits")
            ratio = ratio * max_logit_score(logits).to(ratio.device)
        return ratio


# ------------------------------------------------------------------- metrics
def _pair(id_scores: Any, ood_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, s in (("id_scores", id_scores), ("ood_scores", ood_scores)):
        arr = s.detach().cpu().numpy() if isinstance(s, Tensor) else np.asarray(s)
        arr = arr.astype(np.float64).reshape(-1) if arr.ndim <= 1 else None
        if arr is None:
            raise ValueError(f"{name} must be 1-D, got shape {np.shape(s)}")
        if arr.size == 0:
            raise ValueError(f"{name} is empty")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contain NaN or Inf values")
        out.append(arr)
    return out[0], out[1]


def _labelled(id_scores: Any, ood_scores: Any, positive: str) -> tuple[np.ndarray, np.ndarray]:
    """(binary labels, decision scores) of the positive class under the chosen convention."""
    if positive not in _POSITIVES:
        raise ValueError(f"positive must be one of {_POSITIVES}, got {positive!r}")
    s_id, s_ood = _pair(id_scores, ood_scores)
    scores = np.concatenate([s_id, s_ood])
    is_id = np.concatenate([np.ones(s_id.size), np.zeros(s_ood.size)])
    if positive == "id":
        return is_id, scores
    return 1.0 - is_id, -scores  # OOD positive, outlier score = −(ID score)


def auroc(id_scores: Any, ood_scores: Any, positive: str = "id") -> float:
    """Area under the ROC curve (scikit-learn ``roc_auc_score``); equal in both conventions."""
    from sklearn.metrics import roc_auc_score

    y, s = _labelled(id_scores, ood_scores, positive)
    return float(roc_auc_score(y, s))


def aupr(id_scores: Any, ood_scores: Any, positive: str = "id") -> float:
    """Average precision of the positive class (``average_precision_score``): AUPR-In or AUPR-Out."""
    from sklearn.metrics import average_precision_score

    y, s = _labelled(id_scores, ood_scores, positive)
    return float(average_precision_score(y, s))


def fpr_at_tpr(id_scores: Any, ood_scores: Any, positive: str = "id", tpr: float = 0.95) -> float:
    """False-positive rate at the first ROC operating point whose true-positive rate is ≥ ``tpr``.

    ``positive="id"``: share of OOD samples scored at or above the threshold that keeps ``tpr`` of
    the ID samples. ``positive="ood"``: share of ID samples flagged when ``tpr`` of OOD are caught.
    """
    from sklearn.metrics import roc_curve

    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr!r}")
    y, s = _labelled(id_scores, ood_scores, positive)
    fpr_curve, tpr_curve, _ = roc_curve(y, s, drop_intermediate=False)
    idx = int(np.searchsorted(tpr_curve, tpr - 1e-12, side="left"))
    return float(fpr_curve[min(idx, fpr_curve.size - 1)])


def ood_metrics(id_scores: Any, ood_scores: Any, positive: str = "id", tpr: float = 0.95) -> dict[str, float]:
    """``{"auroc", "aupr", "fpr95"}`` of ID-convention scores (higher = more ID) for one OOD set.

    Args:
        id_scores: (N_id,) scores of ID test samples.
        ood_scores: (N_ood,) scores of OOD samples.
        positive: ``"id"`` (paper / OpenOOD: AUPR-In, FPR of OOD at 95% ID TPR) or ``"ood"``
            (pytorch-ood: AUPR-Out, FPR of ID at 95% OOD TPR).
        tpr: the TPR of the FPR metric (0.95 → ``fpr95``).

    Example:
        >>> ood_metrics([3.0, 2.0, 1.0], [0.0, -1.0])
        {'auroc': 1.0, 'aupr': 1.0, 'fpr95': 0.0}
    """
    return {
        "auroc": auroc(id_scores, ood_scores, positive),
        "aupr": aupr(id_scores, ood_scores, positive),
        "fpr95": fpr_at_tpr(id_scores, ood_scores, positive, tpr),
    }


def _official_curve(known: np.ndarray, novel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) of the official ``get_curve``, vectorised.

    State l (0 ≤ l ≤ N, N = N_k + N_n) counts the ID (tp) and OOD (fp) scores left above the
    threshold after the l smallest of all scores are removed (on a tie an ID score goes first); a
    state whose threshold would fall between two equal scores takes the state after the tie (the
    official loop ``if all[j] == all[j-1]: tp[j] = tp[j+1]``).
    """
    n_k, n_n = known.size, novel.size
    scores = np.concatenate([known, novel])
    is_known = np.concatenate([np.ones(n_k, dtype=bool), np.zeros(n_n, dtype=bool)])
    order = np.lexsort((~is_known, scores))  # ascending score; on a tie ID first
    s_sorted, k_sorted = scores[order], is_known[order]
    removed_k = np.concatenate([[0], np.cumsum(k_sorted)])  # (N+1,)
    tp = n_k - removed_k
    fp = n_n - (np.arange(n_k + n_n + 1) - removed_k)
    # tie fix: state l (1 ≤ l ≤ N−1) with s[l] == s[l−1] takes the state of the next l' that is not such a state
    tie = np.zeros(n_k + n_n + 1, dtype=bool)
    tie[1:-1] = s_sorted[1:] == s_sorted[:-1]
    idx = np.arange(n_k + n_n + 1)
    nxt = np.where(tie, n_k + n_n + 1, idx)  # for ties look forward to the first non-tie state
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    return tp[nxt], fp[nxt]


def official_detection_metrics(id_scores: Any, ood_scores: Any) -> dict[str, float]:
    """FPR, DTERR, AUROC, AUIN and AUOUT exactly as the official code of Harun et al. (ICML 2025) computes them.

    ``yousuf907/NC-OOD``, ``ood_det/metrics.py`` (``cal_metric`` / ``get_curve``, from the energy-OOD
    code of Liu et al. 2020), ID = positive, scores in the ID convention (higher = more ID); with
    (tp, fp) the ID / OOD counts above each threshold of the sorted pooled scores:

    * ``fpr`` — share of OOD scores ``>`` the ID score at index round(0.05·N_k) of the sorted ID
      scores (≈ FPR at 95 % TPR; differs from :func:`fpr_at_tpr` by that choice of threshold);
    * ``dterr`` — detection error min_t (FN(t) + FP(t)) / (N_k + N_n);
    * ``auroc`` — trapezoid area of the ROC with endpoints (1, 1) and (0, 0);
    * ``auin`` / ``auout`` — trapezoid areas under the precision–recall curves of ID (positive) and
      of OOD (positive), with the official end points (precision ½ at recall 1 and 0 at recall 0).

    Vectorised (no loop over samples); the tests check it against a transcription of the official loop.

    Example:
        >>> m = official_detection_metrics([3.0, 2.0, 1.0, 0.5], [0.0, -1.0])
        >>> m["auroc"], m["dterr"], m["fpr"]
        (1.0, 0.0, 0.0)
    """
    known, novel = _pair(id_scores, ood_scores)
    known, novel = np.sort(known), np.sort(novel)
    n_k, n_n = known.size, novel.size
    threshold = known[min(round(0.05 * n_k), n_k - 1)]
    tp, fp = _official_curve(known, novel)
    tp, fp = tp.astype(np.float64), fp.astype(np.float64)
    trapz = getattr(np, "trapezoid", None) or np.trapz
    tpr = np.concatenate([[1.0], tp / tp[0], [0.0]])
    fpr = np.concatenate([[1.0], fp / fp[0], [0.0]])
    out = {"fpr": float(np.sum(novel > threshold) / n_n)}
    out["dterr"] = float(((tp[0] - tp + fp) / (tp[0] + fp[0])).min())
    out["auroc"] = float(-trapz(1.0 - fpr, tpr))
    denom = tp + fp
    denom[denom == 0.0] = -1.0
    pin_ind = np.concatenate([[True], denom > 0.0, [True]])
    pin = np.concatenate([[0.5], tp / denom, [0.0]])
    out["auin"] = float(-trapz(pin[pin_ind], tpr[pin_ind]))
    denom = tp[0] - tp + fp[0] - fp
    denom[denom == 0.0] = -1.0
    pout_ind = np.concatenate([[True], denom > 0.0, [True]])
    pout = np.concatenate([[0.0], (fp[0] - fp) / denom, [0.5]])
    out["auout"] = float(trapz(pout[pout_ind], 1.0 - fpr[pout_ind]))
    return out


# ------------------------------------------------------- pytorch-ood cross-check
def pytorch_ood_score(
    name: str,
    *,
    logits: Tensor | None = None,
    features: Tensor | None = None,
    train_features: Tensor | None = None,
    train_labels: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.0,
    n_components: int | None = None,
) -> Tensor:
    """The same score computed by pytorch-ood (optional extra ``nclens[ood]``), in the ID convention.

    pytorch-ood's detectors return outlier scores; they are negated here, so the result is
    directly comparable with :data:`SCORES` from this module (a cross-check of both).

    Args:
        name: one of :data:`SCORES`.
        logits: (N, K) for the logit scores (and NECO with its max-logit factor).
        features, train_features, train_labels: for the feature scores.
        weight, bias: the classifier (NCI).
        temperature, alpha, n_components: as in this module's functions.

    Raises:
        ImportError: pytorch-ood (which needs torchvision) is not installed.
    """
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; valid: {list(SCORES)}")
    try:
        import pytorch_ood.detector as det
    except (ImportError, RuntimeError) as exc:  # pragma: no cover - absent, or torchvision built for another torch
        raise ImportError("pytorch_ood_score needs pytorch-ood and a torchvision built for the installed torch: "
                          "pip install 'nclens[ood]'") from exc
    with torch.no_grad():
        if name in LOGIT_SCORES:
            if logits is None:
                raise ValueError(f"score {name!r} needs logits")
            f = logits.float()
            if name == "energy":
                return -det.EnergyBased.score(f, t=temperature).double()
            if name == "msp":
                return -det.MaxSoftmax.score(f, t=temperature).double()
            return -det.MaxLogit.score(f).double()
        if features is None or train_features is None:
            raise ValueError(f"score {name!r} needs features and train_features")
        z, z_train = features.float(), train_features.float()
        if name == "mahalanobis":
            if train_labels is None:
                raise ValueError("mahalanobis needs train_labels")
            detector = det.Mahalanobis(model=None, eps=0.0).fit_features(z_train, train_labels)
            return -detector.predict_features(z).double()
        if name == "nci":
            if weight is None:
                raise ValueError("nci needs the classifier weight")
            head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            head.weight.data.copy_(weight.float())
            if bias is not None:
                head.bias.data.copy_(bias.float())
            detector = det.NCI(encoder=None, head=head, alpha=alpha).fit_features(z_train)
            return -detector.predict_features(z).double()
        if not hasattr(det, "NECO"):
            raise ImportError("this pytorch-ood has no NECO detector (0.4 has none); cross-check NECO against "
                              "scikit-learn's PCA instead")
        if train_labels is None:
            raise ValueError("neco needs train_labels (pytorch-ood ignores samples labelled < 0)")
        k = n_components if n_components is not None else max(1, int(torch.unique(train_labels).numel()) - 1)
        detector = det.NECO(encoder=None, head=None, d=k, use_max_logit=False).fit_features(z_train, train_labels)
        return -detector.predict_features(z).double()


def summarise_sets(
    per_set: Mapping[str, Mapping[str, float]], keys: Sequence[str] = ("auroc", "aupr", "fpr95")
) -> dict[str, float]:
    """Mean of each metric over OOD sets (the headline number of a layer)."""
    if not per_set:
        raise ValueError("no OOD sets to summarise")
    return {k: float(np.mean([m[k] for m in per_set.values()])) for k in keys if all(k in m for m in per_set.values())}
