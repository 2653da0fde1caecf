"""Per-layer node-feature neural collapse of GNNs (Kothapalli, Tirer & Bruna, NeurIPS 2023).

For node features H^(l) (features as columns; here rows = nodes) at every depth l and for the
neighbour-averaged features H^(l) Â (Â = A D⁻¹, row i = mean of the neighbours of node i), the
registry's metrics are computed from :class:`~nclens.core.stats.ClassStats` with node masks:
nc1 = Tr(Σ_W Σ_B⁺)/C, nc1_trace = Tr Σ_W/Tr Σ_B, nc2_etf, the orthogonal-frame ``nc2_of`` and the
traces Tr Σ_W, Tr Σ_B (:func:`node_nc`). Given the head's W1, W2 (C × d) also the official tracker's
NC2/NC3 set (``gnn_collapse/utils/tracker.py``): NC2 of W1 and of W2 (ETF and OF), NC3 of (H, W1) and
of (H Â, W2) (nclens's ``nc3_duality``, ``nc3_etf``; the official ``nc3_of`` and uncentred
alignment), the SNR ``nc1_snr``, and NC3 of the prediction Ŷ = W1 H + W2 H Â (:func:`yhat_nc3`).

Layer-to-layer variability (Section 5 of the paper): a GraphConv layer Z = W1 H + W2 H Â moves
the traces of the within- and between-class covariances by the ratios
Tr Σ_W(Z)/Tr Σ_W(H) and Tr Σ_B(Z)/Tr Σ_B(H), which the paper predicts from the weights as

    Tr(T_W Σ_W(H))/Tr Σ_W(H),  T_W = W1ᵀW1 + b2 (W2ᵀW1 + W1ᵀW2) + b3 W2ᵀW2,
    Tr(T_B Σ_B(H))/Tr Σ_B(H),  T_B = (W1 + b1 W2)ᵀ(W1 + b1 W2),

with, for C blocks of n nodes (the paper's C = 2 formulas, where C − 1 = 1):
b1 = (p − q)/(p + (C−1)q)  (the neighbour mean of a class-c node is b1 μ_c for centred means),
b2 = p/(n(p + (C−1)q))     (E Â_ij, i ≠ j in one class),
b3 = (p² + (C−1)q²)/(n(p + (C−1)q)²)  (E (ÂÂᵀ)_ij, i ≠ j in one class).

The official code reports bounds instead of the point prediction (``WeightTracker._compute_T_W_bound``,
``gnn_collapse/utils/weight_properties.py``): for symmetric positive semi-definite T and Σ (von Neumann's
trace inequality, with singular values s↓ descending and s↑ ascending),

    Σ_i s↓_i(T) s↑_i(Σ) / Tr Σ  ≤  Tr(T Σ)/Tr Σ  ≤  Σ_i s↓_i(T) s↓_i(Σ) / Tr Σ,

attained when T and Σ share eigenvectors with their eigenvalues ordered oppositely (lower) or alike
(upper) (:func:`trace_ratio_bounds`). T_B is PSD by construction and T_W too (b2² ≤ b3 for n ≥ 1).

Example:
    >>> import torch
    >>> from nclens.graph.sbm import sbm_graph, gaussian_node_features
    >>> from nclens.graph.nc import node_nc
    >>> ei, y = sbm_graph(200, 2, 0.1, 0.01, seed=0)
    >>> m = node_nc(gaussian_node_features(200, 4, seed=0), ei, y, 2)
    >>> sorted(m)[:3]
    ['nc1', 'nc1_ha', 'nc1_trace']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from nclens.core.metrics import nc1, nc1_trace, nc2_etf, nc2_etf_w, nc3_duality, nc3_etf, sigma_b, sigma_w
from nclens.core.metrics.orthogonal import nc1_snr, nc2_of, nc2_of_w, nc3_duality_uncentred, nc3_of, of_dist
from nclens.core.stats import ClassStats
from nclens.graph.gnn import mean_aggregate

__all__ = [
    "node_stats",
    "node_nc",
    "head_nc",
    "yhat_nc3",
    "sbm_coefficients",
    "transfer_matrices",
    "trace_ratio_bounds",
    "trace_ratios",
    "summarize",
    "mean_sd",
]


def node_stats(
    features: Tensor, edge_index: Tensor, labels: Tensor, num_classes: int, mask: Tensor | None = None
) -> tuple[ClassStats, ClassStats]:
    """ClassStats of H and of H Â over the nodes selected by ``mask`` (neighbour means use all nodes)."""
    features = features.detach().to(torch.float64)
    agg = mean_aggregate(features, edge_index, labels.shape[0])  # (N, d): row i = mean of N(i)
    s_h = ClassStats(num_classes=num_classes).update(features, labels, mask)
    s_ha = ClassStats(num_classes=num_classes).update(agg, labels, mask)
    return s_h, s_ha


def _safe(fn: Callable[..., float], *args: object) -> float:
    """A metric, or NaN where it is undefined (``UndefinedMetricError``, or a class without nodes under a mask).

    Node NC is computed per graph and layer and then summarised (:func:`summarize` counts the finite
    values in ``n``), so an undefined value is recorded as NaN rather than warned about each time.
    """
    try:
        return float(fn(*args))
    except ValueError:  # UndefinedMetricError subclasses ValueError
        return math.nan


def _traces(s: ClassStats) -> tuple[float, float]:
    return float(torch.trace(sigma_w(s))), float(torch.trace(sigma_b(s)))


def node_nc(
    features: Tensor,
    edge_index: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    w1: Tensor | None = None,
    w2: Tensor | None = None,
    mask: Tensor | None = None,
) -> dict[str, float]:
    """Node NC of one graph's features H (N, d) and of H Â.

    Returns ``nc1, nc1_trace, nc2_etf, nc2_of, tr_sw, tr_sb`` of H, the same with suffix ``_ha`` for
    H Â, and with the head weights (C, d) :func:`head_nc` (``w2`` given; a missing ``w1`` is W1 = 0, as
    the official tracker uses). Undefined values are NaN.
    """
    s_h, s_ha = node_stats(features, edge_index, labels, num_classes, mask)
    out: dict[str, float] = {}
    for suffix, s in (("", s_h), ("_ha", s_ha)):
        out["nc1" + suffix] = _safe(nc1, s)
        out["nc1_trace" + suffix] = _safe(nc1_trace, s)
        out["nc2_etf" + suffix] = _safe(nc2_etf, s)
        out["nc2_of" + suffix] = _safe(nc2_of, s)
        try:
            out["tr_sw" + suffix], out["tr_sb" + suffix] = _traces(s)
        except ValueError:
            out["tr_sw" + suffix] = out["tr_sb" + suffix] = math.nan
    if w2 is not None:
        out.update(head_nc(s_h, s_ha, w1, w2))
    return out


def head_nc(s_h: ClassStats, s_ha: ClassStats, w1: Tensor | None, w2: Tensor) -> dict[str, float]:
    """The official tracker's NC2/NC3 set for the head Ŷ = W1 H + W2 H Â (W1 = 0 when ``None``).

    Keys: ``nc2_etf_w1``, ``nc2_of_w1``, ``nc2_etf_w2``, ``nc2_of_w2`` (NC2 of the weights); per pair
    (H, W1) with suffix ``_w1`` and (H Â, W2) with suffix ``_w2``: ``nc3`` (= ``nc3_duality``), ``nc3_etf``,
    ``nc3_of``, ``nc3_uncentred`` (= ``nc3_duality_uncentred``, the tracker's plain alignment), ``nc1_snr``;
    and ``nc3_etf_yhat``, ``nc3_of_yhat`` (:func:`yhat_nc3`). Metrics of an all-zero W1 are NaN.
    """
    w2 = w2.detach().to(torch.float64)
    w1 = torch.zeros_like(w2) if w1 is None else w1.detach().to(torch.float64)
    out: dict[str, float] = {}
    for tag, w, s in (("w1", w1, s_h), ("w2", w2, s_ha)):
        out[f"nc2_etf_{tag}"] = _safe(nc2_etf_w, w)
        out[f"nc2_of_{tag}"] = _safe(nc2_of_w, w)
        out[f"nc3_{tag}"] = _safe(nc3_duality, s, w)
        out[f"nc3_etf_{tag}"] = _safe(nc3_etf, s, w)
        out[f"nc3_of_{tag}"] = _safe(nc3_of, s, w)
        out[f"nc3_uncentred_{tag}"] = _safe(nc3_duality_uncentred, s, w)
        out[f"nc1_snr_{tag}"] = _safe(nc1_snr, s, w)
    out.update(yhat_nc3(s_h, s_ha, w1, w2))
    return out


def yhat_nc3(s_h: ClassStats, s_ha: ClassStats, w1: Tensor, w2: Tensor) -> dict[str, float]:
    """NC3 of the predictions Ŷ = W1 H + W2 H Â (official ``plot_NC3``, "Z = W1H + W2HA_hat").

    The class means of Ŷ are linear in those of H and H Â: M_Ŷ[:, c] = W1 μ_c(H) + W2 μ_c(H Â)
    (C outputs × C classes). ``nc3_etf_yhat`` = ‖M̄_Ŷ/‖M̄_Ŷ‖_F − ETF_C‖_F with M̄_Ŷ centred over the
    classes, ``nc3_of_yhat`` = ‖M_Ŷ/‖M_Ŷ‖_F − I/√C‖_F (the official ``compute_W_H_ETF_relation`` /
    ``compute_W_H_OF_relation`` with W = I; the matrix itself, not a Gram).
    """
    from nclens.core.geometry import etf_gram

    m_h, m_ha = s_h.means, s_ha.means  # (C, d), rows in class order
    w1 = w1.to(torch.float64).to(m_h.device)
    w2 = w2.to(torch.float64).to(m_h.device)
    m = (w1 @ m_h.T + w2 @ m_ha.T)  # (C outputs, C classes)
    centred = m - m.mean(dim=1, keepdim=True)
    out = {}
    norm = float(torch.linalg.matrix_norm(centred))
    out["nc3_etf_yhat"] = (float(torch.linalg.matrix_norm(centred / norm - etf_gram(m.shape[0], device=m.device)))
                           if norm > 0 and math.isfinite(norm) else math.nan)
    out["nc3_of_yhat"] = _safe(of_dist, m)
    return out


def sbm_coefficients(p: float, q: float, n: int, num_classes: int = 2) -> tuple[float, float, float]:
    """(b1, b2, b3) of the module docstring for SBM(p, q) with C blocks of n nodes."""
    if n < 1 or num_classes < 2:
        raise ValueError(f"need n >= 1 and num_classes >= 2, got n={n}, num_classes={num_classes}")
    denom = p + (num_classes - 1) * q
    if denom <= 0:
        raise ValueError(f"p + (C-1) q must be positive, got p={p}, q={q}")
    b1 = (p - q) / denom
    b2 = p / (n * denom)
    b3 = (p * p + (num_classes - 1) * q * q) / (n * denom * denom)
    return b1, b2, b3


def transfer_matrices(
    w1: Tensor | None, w2: Tensor, p: float, q: float, n: int, num_classes: int = 2
) -> tuple[Tensor, Tensor]:
    """(T_B, T_W), each (d_in, d_in), of a GraphConv layer with weights W1, W2 (d_out, d_in), float64.

    T_B = (W1 + b1 W2)ᵀ(W1 + b1 W2);  T_W = W1ᵀW1 + b2 (W2ᵀW1 + W1ᵀW2) + b3 W2ᵀW2 (W1 = 0 if absent).
    """
    b1, b2, b3 = sbm_coefficients(p, q, n, num_classes)
    w2 = w2.detach().to(torch.float64)
    w1 = torch.zeros_like(w2) if w1 is None else w1.detach().to(torch.float64)
    mix = w1 + b1 * w2
    t_b = mix.T @ mix
    t_w = w1.T @ w1 + b2 * (w2.T @ w1 + w1.T @ w2) + b3 * (w2.T @ w2)
    return t_b, t_w


def trace_ratio_bounds(transfer: Tensor, sigma: Tensor) -> tuple[float, float]:
    """(lower, upper) bounds of Tr(T Σ)/Tr Σ from singular values (official ``_compute_T_W_bound``).

    lower = Σ_i s↓_i(T) s↑_i(Σ) / Σ_i s_i(Σ), upper = Σ_i s↓_i(T) s↓_i(Σ) / Σ_i s_i(Σ); for PSD T, Σ the
    singular values are the eigenvalues and Σ_i s_i(Σ) = Tr Σ (von Neumann's trace inequality).

    Raises:
        ValueError: T and Σ are not square of one size, or Σ = 0.
    """
    t, s = transfer.to(torch.float64), sigma.to(torch.float64)
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape != s.shape:
        raise ValueError(f"T and Σ must be square of one size, got {tuple(t.shape)} and {tuple(s.shape)}")
    st = torch.linalg.svdvals(t).sort(descending=True).values
    ss = torch.linalg.svdvals(s).sort(descending=True).values
    total = float(ss.sum())
    if total == 0.0:
        raise ValueError("trace-ratio bounds need Σ ≠ 0")
    return float((st * ss.flip(0)).sum()) / total, float((st * ss).sum()) / total


def trace_ratios(
    h_in: Tensor,
    z_out: Tensor,
    labels: Tensor,
    num_classes: int,
    w1: Tensor | None,
    w2: Tensor,
    p: float,
    q: float,
    n: int,
    mask: Tensor | None = None,
) -> dict[str, float]:
    """Measured Tr Σ_W, Tr Σ_B ratios of a layer Z = W1 H + W2 H Â, their predictions and bounds.

    Returns ``tw_ratio`` = Tr Σ_W(Z)/Tr Σ_W(H), ``tw_pred`` = Tr(T_W Σ_W(H))/Tr Σ_W(H), ``tw_lower``,
    ``tw_upper`` (:func:`trace_ratio_bounds` of T_W and Σ_W(H)) and the same four for Σ_B (``tb_*``).
    Undefined values (a zero trace) are NaN.
    """
    s_in = ClassStats(num_classes=num_classes).update(h_in.detach().to(torch.float64), labels, mask)
    s_out = ClassStats(num_classes=num_classes).update(z_out.detach().to(torch.float64), labels, mask)
    t_b, t_w = transfer_matrices(w1, w2, p, q, n, num_classes)
    out: dict[str, float] = {}
    pairs = (("tw", sigma_w(s_in), sigma_w(s_out), t_w), ("tb", sigma_b(s_in), sigma_b(s_out), t_b))
    for tag, sig_in, sig_out, t in pairs:
        t = t.to(sig_in.device)
        tr_in = float(torch.trace(sig_in))
        if tr_in > 0:
            out[f"{tag}_ratio"] = float(torch.trace(sig_out)) / tr_in
            out[f"{tag}_pred"] = float((t * sig_in).sum()) / tr_in
            out[f"{tag}_lower"], out[f"{tag}_upper"] = trace_ratio_bounds(t, sig_in)
        else:
            out.update({f"{tag}_{k}": math.nan for k in ("ratio", "pred", "lower", "upper")})
    return out


def mean_sd(values: Iterable[float | None]) -> dict[str, float]:
    """Mean, sample standard deviation (n − 1; 0 for one value) and count of the finite ``values`` (NaN if none).

    Example:
        >>> mean_sd([1.0, 3.0, None, float("nan")])
        {'mean': 2.0, 'sd': 1.4142135623730951, 'n': 2}
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": math.nan, "sd": math.nan, "n": 0}
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": len(vals)}


def summarize(records: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and population std over graphs of every key (NaNs ignored): ``{key: {"mean", "std", "n"}}``."""
    records = list(records)
    if not records:
        raise ValueError("summarize needs at least one record")
    keys = sorted({k for r in records for k in r})
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        vals = torch.tensor([float(r.get(key, math.nan)) for r in records], dtype=torch.float64)
        vals = vals[torch.isfinite(vals)]
        if vals.numel() == 0:
            out[key] = {"mean": math.nan, "std": math.nan, "n": 0}
        else:
            out[key] = {"mean": float(vals.mean()), "std": float(vals.std(correction=0)), "n": int(vals.numel())}
    return out
