"""Per-layer node-feature neural collapse of GNNs (Kothapalli, Tirer & Bruna, NeurIPS 2023).

For node features H^(l) (features as columns; here rows = nodes) at every depth l and for the
neighbour-averaged features H^(l) Â (Â = A D⁻¹, row i = mean of the neighbours of node i), the
canonical metrics of the registry are computed from :class:`~nclens.core.stats.ClassStats` with node masks:
nc1 = Tr(Σ_W Σ_B⁺)/C, nc1_trace = Tr Σ_W/Tr Σ_B, nc2_etf, and at the last hidden layer nc3 of H
against the head's W1 and of H Â against its W2.

Layer-to-layer variability (Section 5 of the paper): a GraphConv layer Z = W1 H + W2 H Â moves
the traces of the within- and between-class covariances by the ratios
Tr Σ_W(Z)/Tr Σ_W(H) and Tr Σ_B(Z)/Tr Σ_B(H), which the paper predicts from the weights as

    Tr(T_W Σ_W(H))/Tr Σ_W(H),  T_W = W1ᵀW1 + b2 (W2ᵀW1 + W1ᵀW2) + b3 W2ᵀW2,
    Tr(T_B Σ_B(H))/Tr Σ_B(H),  T_B = (W1 + b1 W2)ᵀ(W1 + b1 W2),

with, for C blocks of n nodes (the paper's C = 2 formulas, where C − 1 = 1):
b1 = (p − q)/(p + (C−1)q)  (the neighbour mean of a class-c node is b1 μ_c for centred means),
b2 = p/(n(p + (C−1)q))     (E Â_ij, i ≠ j in one class),
b3 = (p² + (C−1)q²)/(n(p + (C−1)q)²)  (E (ÂÂᵀ)_ij, i ≠ j in one class).

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
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from nclens.core.metrics import nc1, nc1_trace, nc2_etf, nc3_duality, nc3_etf, sigma_b, sigma_w
from nclens.core.stats import ClassStats
from nclens.graph.gnn import mean_aggregate

__all__ = [
    "node_stats",
    "node_nc",
    "sbm_coefficients",
    "transfer_matrices",
    "trace_ratios",
    "summarize",
]


def node_stats(
    features: Tensor, edge_index: Tensor, labels: Tensor, num_classes: int, mask: Tensor | None = None
) -> tuple[ClassStats, ClassStats]:
    """ClassStats of H and of H Â over the nodes selected by ``mask`` (neighbour means use all nodes)."""
    agg = mean_aggregate(features, edge_index, labels.shape[0])  # (N, d): row i = mean of N(i)
    s_h = ClassStats(num_classes=num_classes).update(features, labels, mask)
    s_ha = ClassStats(num_classes=num_classes).update(agg, labels, mask)
    return s_h, s_ha


def _safe(fn, *args) -> float:  # noqa: ANN001 - metric callable
    """A metric, or NaN where it is undefined (e.g. all class means coincide after a dead ReLU layer)."""
    try:
        return float(fn(*args))
    except ValueError:
        return math.nan


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

    Returns ``nc1, nc1_trace, nc2_etf`` of H, the same with suffix ``_ha`` for H Â, and when the head
    weights (C, d) are given ``nc3_w1`` = nc3_duality(H, W1), ``nc3_etf_w1``, ``nc3_w2`` =
    nc3_duality(H Â, W2), ``nc3_etf_w2``. Undefined values are NaN.
    """
    s_h, s_ha = node_stats(features, edge_index, labels, num_classes, mask)
    out: dict[str, float] = {}
    for suffix, s in (("", s_h), ("_ha", s_ha)):
        out["nc1" + suffix] = _safe(nc1, s)
        out["nc1_trace" + suffix] = _safe(nc1_trace, s)
        out["nc2_etf" + suffix] = _safe(nc2_etf, s)
    if w1 is not None:
        out["nc3_w1"] = _safe(nc3_duality, s_h, w1.detach())
        out["nc3_etf_w1"] = _safe(nc3_etf, s_h, w1.detach())
    if w2 is not None:
        out["nc3_w2"] = _safe(nc3_duality, s_ha, w2.detach())
        out["nc3_etf_w2"] = _safe(nc3_etf, s_ha, w2.detach())
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
    """Measured Tr Σ_W, Tr Σ_B ratios of a layer Z = W1 H + W2 H Â and their weight-based predictions.

    Returns ``{"tw_ratio", "tb_ratio", "tw_pred", "tb_pred"}``:
    tw_ratio = Tr Σ_W(Z)/Tr Σ_W(H), tw_pred = Tr(T_W Σ_W(H))/Tr Σ_W(H), and likewise for Σ_B.
    """
    s_in = ClassStats(num_classes=num_classes).update(h_in, labels, mask)
    s_out = ClassStats(num_classes=num_classes).update(z_out, labels, mask)
    t_b, t_w = transfer_matrices(w1, w2, p, q, n, num_classes)
    sw_in, sb_in = sigma_w(s_in), sigma_b(s_in)
    sw_out, sb_out = sigma_w(s_out), sigma_b(s_out)
    tr_w_in, tr_b_in = float(torch.trace(sw_in)), float(torch.trace(sb_in))
    t_b, t_w = t_b.to(sw_in.device), t_w.to(sw_in.device)
    return {
        "tw_ratio": float(torch.trace(sw_out)) / tr_w_in if tr_w_in > 0 else math.nan,
        "tb_ratio": float(torch.trace(sb_out)) / tr_b_in if tr_b_in > 0 else math.nan,
        "tw_pred": float((t_w * sw_in).sum()) / tr_w_in if tr_w_in > 0 else math.nan,
        "tb_pred": float((t_b * sb_in).sum()) / tr_b_in if tr_b_in > 0 else math.nan,
    }


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
