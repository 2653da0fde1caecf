"""Orthogonal-frame (OF) variants and the official NC tracker's other metrics of Kothapalli, Tirer & Bruna (2023).

Pure functions of :class:`~nclens.core.stats.ClassStats` (and classifier weights W, K×D). The official
tracker (``gnn_collapse/utils/tracker.py``, class ``GUFMMetricTracker``) measures, beside the simplex-ETF
distances that the registry already holds (``nc2_etf``, ``nc2_etf_w``, ``nc3_etf``), the distance to an
*orthogonal frame*: with OF_K = I_K/√K (the unit-Frobenius identity),

* ``nc2_of``  = ‖M Mᵀ/‖M Mᵀ‖_F − I/√K‖_F, M = [μ_c] (K×D) the class means **not** centred
  (``get_weights_or_feat_OF_relation`` on ``scatter(H, labels, reduce="mean")``, ``plot_NC2``);
* ``nc2_of_w`` = ‖W Wᵀ/‖W Wᵀ‖_F − I/√K‖_F (``get_weights_or_feat_OF_relation(W)``);
* ``nc3_of``  = ‖W Mᵀ/‖W Mᵀ‖_F − I/√K‖_F, uncentred means (``compute_W_H_OF_relation``);
* ``nc3_duality_uncentred`` = ‖W/‖W‖_F − M/‖M‖_F‖_F, uncentred and not squared (``compute_W_H_alignment``,
  the tracker's "plain alignment"; nclens's ``nc3_duality`` centres the means and squares);
* ``nc1_snr`` = ‖W μ_{y_i}‖ / ‖W (h_i − μ_{y_i})‖ summed over samples: signal² = Σ_c n_c ‖W μ_c‖²,
  noise² = Tr(W S_W Wᵀ) with S_W the pooled within-class scatter (``get_W_feat_NC1_SNR``).

An orthogonal frame is the collapsed geometry of *uncentred* means when the classifier has no bias
(the gUFM of the paper): e.g. for K = 2 the simplex ETF of centred means is the antipodal pair, while
the minimiser's uncentred means are orthogonal. Every metric here is 0 at its ideal geometry.

These are registered with ``default=False``: :func:`~nclens.core.metrics.compute_metrics` computes them
when named (``names=[...]``), so the default metric set of every other caller is unchanged.

Example:
    >>> import torch
    >>> from nclens.core.stats import ClassStats
    >>> from nclens.core.metrics.orthogonal import nc2_of, nc2_of_w
    >>> x = torch.eye(3, dtype=torch.float64).repeat(4, 1)   # class means e_0, e_1, e_2: an orthogonal frame
    >>> s = ClassStats(num_classes=3).update(x, torch.arange(12) % 3)
    >>> round(nc2_of(s), 12), round(nc2_of_w(torch.eye(3)), 12)
    (0.0, 0.0)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nclens.core.errors import UndefinedMetricError
from nclens.core.metrics.multiclass import _check_weight, _checked
from nclens.core.metrics.registry import register_metric
from nclens.core.stats import ClassStats

__all__ = ["of_dist", "nc2_of", "nc2_of_w", "nc3_of", "nc3_duality_uncentred", "nc1_snr"]

_SOURCE = "Kothapalli, Tirer & Bruna 2023; official code gnn_collapse/utils/tracker.py (GUFMMetricTracker"


def of_dist(matrix: Tensor) -> float:
    """OFdist(G) = ‖G/‖G‖_F − I_K/√K‖_F for a K×K matrix G (0 when G is a positive multiple of I).

    Raises:
        UndefinedMetricError: G = 0.
    """
    g = matrix.to(torch.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"of_dist needs a square matrix, got shape {tuple(g.shape)}")
    norm = torch.linalg.matrix_norm(g)
    if not math.isfinite(float(norm)) or float(norm) == 0.0:
        raise UndefinedMetricError("the matrix compared with the orthogonal frame is 0 (or not finite)")
    k = g.shape[0]
    return float(torch.linalg.matrix_norm(g / norm - torch.eye(k, dtype=torch.float64, device=g.device) / math.sqrt(k)))


def nc2_of(stats: ClassStats) -> float:
    """‖MMᵀ/‖MMᵀ‖_F − I/√K‖_F of the uncentred class means M (K×D) (official ``plot_NC2``, OF)."""
    means = _checked(stats).means
    return of_dist(means @ means.T)


def nc2_of_w(weight: Tensor) -> float:
    """‖WWᵀ/‖WWᵀ‖_F − I/√K‖_F of the classifier W (K×D) (official ``get_weights_or_feat_OF_relation``)."""
    w = _check_weight(weight)
    return of_dist(w @ w.T)


def nc3_of(stats: ClassStats, weight: Tensor) -> float:
    """‖WMᵀ/‖WMᵀ‖_F − I/√K‖_F, M the uncentred class means (official ``compute_W_H_OF_relation``)."""
    means = _checked(stats).means
    w = _check_weight(weight, *means.shape).to(means.device)
    return of_dist(w @ means.T)


def nc3_duality_uncentred(stats: ClassStats, weight: Tensor) -> float:
    """‖W/‖W‖_F − M/‖M‖_F‖_F with M the uncentred class means, not squared (official ``compute_W_H_alignment``)."""
    means = _checked(stats).means
    w = _check_weight(weight, *means.shape).to(means.device)
    nm, nw = float(torch.linalg.matrix_norm(means)), float(torch.linalg.matrix_norm(w))
    if nm == 0.0 or nw == 0.0:
        raise UndefinedMetricError("nc3_duality_uncentred is undefined: the class means or the classifier are 0")
    return float(torch.linalg.matrix_norm(w / nw - means / nm))


def nc1_snr(stats: ClassStats, weight: Tensor) -> float:
    """‖W μ_{y_i}‖ / ‖W (h_i − μ_{y_i})‖ over all samples (official ``get_W_feat_NC1_SNR``; larger = more collapsed).

    signal² = Σ_c n_c ‖W μ_c‖² (uncentred means), noise² = Tr(W S_W Wᵀ) with S_W the pooled scatter.

    Raises:
        UndefinedMetricError: the noise is 0 (exact collapse: the ratio is infinite), or no D×D scatter.
    """
    stats = _checked(stats)
    if stats.scatter_w is None:
        raise UndefinedMetricError("nc1_snr needs the full scatter; these statistics were kept with scatter='trace'")
    means = stats.means
    w = _check_weight(weight, *means.shape).to(means.device)
    signal = float((stats.counts.to(torch.float64) * (means @ w.T).square().sum(1)).sum())
    noise = float(((w @ stats.scatter_w) * w).sum().clamp_min(0.0))
    if noise == 0.0:
        raise UndefinedMetricError("nc1_snr is undefined: the within-class noise W(h − μ) is 0 (exact collapse)")
    return math.sqrt(signal / noise)


_R = {"default": False}
register_metric("nc2_of", lambda s, w: nc2_of(s), family="NC2", source=_SOURCE + ".plot_NC2)",
                definition="‖MMᵀ/‖MMᵀ‖_F − I/√K‖_F, M = uncentred class means (orthogonal frame)", **_R)
register_metric("nc2_of_w", lambda s, w: nc2_of_w(w), needs={"weight"}, family="NC2",
                source=_SOURCE + ".get_weights_or_feat_OF_relation)",
                definition="‖WWᵀ/‖WWᵀ‖_F − I/√K‖_F (orthogonal frame)", **_R)
register_metric("nc3_of", nc3_of, needs={"weight"}, family="NC3", source=_SOURCE + ".compute_W_H_OF_relation)",
                definition="‖WMᵀ/‖WMᵀ‖_F − I/√K‖_F, M = uncentred class means", **_R)
register_metric("nc3_duality_uncentred", nc3_duality_uncentred, needs={"weight"}, family="NC3",
                source=_SOURCE + ".compute_W_H_alignment)",
                definition="‖W/‖W‖_F − M/‖M‖_F‖_F, M = uncentred class means (not squared)", **_R)
register_metric("nc1_snr", nc1_snr, needs={"weight", "full_scatter"}, family="NC1",
                source=_SOURCE + ".get_W_feat_NC1_SNR)",
                definition="√(Σ_c n_c‖Wμ_c‖² / Tr(W S_W Wᵀ)), uncentred means, pooled scatter S_W", **_R)
