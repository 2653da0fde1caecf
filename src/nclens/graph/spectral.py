"""Spectral community-detection baselines, iterate by iterate, for comparison with GNN layers.

Two operators of an undirected graph with adjacency A and degrees D:

* Bethe Hessian (Saade, Krzakala & Zdeborová 2014): H(r) = (r² − 1) I − r A + D with r = √(mean
  degree) for homophilic graphs (communities in the eigenvectors of its most negative eigenvalues)
  and r = −√(mean degree) for heterophilic ones.
* Normalised Laplacian L = I − D^{-1/2} A D^{-1/2} (spectrum in [0, 2]): communities in its smallest
  eigenvectors for homophilic graphs, its largest for heterophilic ones.

Two iterations, each iterate playing the part of a GNN layer's features (its NC1 with the true
labels is measured like any layer's; Kothapalli et al. 2023, Section 6):

* :func:`power_iteration` (nclens) — *projected subspace iteration*: with P a positive
  semi-definite operator whose top eigenvectors are the wanted ones (σI − H(r) with σ a Gershgorin
  bound; 2I − L; or L itself), X_{t+1} = orth(P X_t) for a seeded N(0, 1) start X_0 (N × C); rows
  clustered by k-means (scikit-learn) for the overlap. Any C; heterophilic variants.
* :func:`official_power_iteration` — the official method (``SpectralOperator.pi_fiedler_pred``,
  ``gnn_collapse/models/baselines.py``; C = 2 only): single-vector power iteration on
  M̂ = ‖M‖_F I − M (M the Bethe Hessian with r = +√(mean degree), or L), deflated against the top
  eigenvector v of M̂ (the smallest of M): y_t = M̂ w_{t−1}, w_t = (y_t − (y_t·v) v)/‖·‖, for a
  seeded N(0, 1) start; the communities are the signs, pred = [y_t < 0]. NC1 of the (N × 1)
  features y_t and w_t per iteration, overlap of the sign prediction.

Example:
    >>> from nclens.graph.sbm import sbm_graph
    >>> from nclens.graph.spectral import power_iteration
    >>> ei, y = sbm_graph(200, 2, 0.15, 0.01, seed=0)
    >>> curve = power_iteration(ei, y, 2, method="bethe", iterations=30, every=30)
    >>> curve[-1]["overlap"] > 0.9
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nclens.core.metrics import nc1, nc1_trace
from nclens.core.stats import ClassStats
from nclens.graph.gnn import overlap

__all__ = ["bethe_hessian", "normalized_laplacian", "power_operator", "power_iteration", "kmeans_overlap",
           "spectral_matrix", "official_power_iteration"]


def _adjacency(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    a = torch.sparse_coo_tensor(
        edge_index, torch.ones(edge_index.shape[1], dtype=torch.float64, device=edge_index.device),
        (num_nodes, num_nodes), check_invariants=False,
    ).coalesce()
    deg = torch.zeros(num_nodes, dtype=torch.float64, device=edge_index.device).index_add_(
        0, edge_index[1], torch.ones(edge_index.shape[1], dtype=torch.float64, device=edge_index.device)
    )
    return a, deg


def bethe_hessian(edge_index: Tensor, num_nodes: int, r: float | None = None) -> Tensor:
    """Dense (N, N) float64 Bethe Hessian (r² − 1) I − r A + D; r = √(mean degree) by default."""
    a, deg = _adjacency(edge_index, num_nodes)
    if r is None:
        r = math.sqrt(float(deg.mean()))
    return (r * r - 1.0) * torch.eye(num_nodes, dtype=torch.float64) - r * a.to_dense() + torch.diag(deg)


def normalized_laplacian(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Dense (N, N) float64 I − D^{-1/2} A D^{-1/2} (isolated nodes: a 1 on the diagonal)."""
    a, deg = _adjacency(edge_index, num_nodes)
    s = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    return torch.eye(num_nodes, dtype=torch.float64) - s[:, None] * a.to_dense() * s[None, :]


def power_operator(edge_index: Tensor, num_nodes: int, method: str, *, homophilic: bool = True):  # noqa: ANN201
    """The linear map X ↦ P X (sparse, O(E·C) per call) whose top eigenvectors carry the communities.

    bethe: P = σI − H(r), r = ±√(mean degree), σ = max_i (|r² − 1| + D_i + |r| D_i) ≥ λ_max(H).
    laplacian: P = 2I − L (homophilic) or P = L (heterophilic), L = I − D^{-1/2} A D^{-1/2}.
    """
    a, deg = _adjacency(edge_index, num_nodes)
    if method == "bethe":
        r = math.sqrt(float(deg.mean())) * (1.0 if homophilic else -1.0)
        sigma = float((abs(r * r - 1.0) + deg + abs(r) * deg).max())

        def apply(x: Tensor) -> Tensor:  # (σ − r² + 1 − D) x + r A x
            return (sigma - r * r + 1.0 - deg)[:, None] * x + r * torch.sparse.mm(a, x)

        return apply
    if method == "laplacian":
        s = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
        sign = 1.0 if homophilic else -1.0

        def apply(x: Tensor) -> Tensor:  # (I ± D^{-1/2} A D^{-1/2}) x
            return x + sign * s[:, None] * torch.sparse.mm(a, s[:, None] * x)

        return apply
    raise ValueError(f"spectral method must be 'bethe' or 'laplacian', got {method!r}")


def kmeans_overlap(x: Tensor, labels: Tensor, num_classes: int, *, seed: int = 0) -> float:
    """Overlap of k-means (C clusters, scikit-learn) on the rows of ``x`` with the true labels."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=num_classes, n_init=4, random_state=seed)
    pred = torch.as_tensor(km.fit_predict(x.detach().cpu().numpy()), dtype=torch.long)
    return overlap(pred, labels.cpu(), num_classes)


def power_iteration(
    edge_index: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    method: str = "bethe",
    iterations: int = 50,
    homophilic: bool = True,
    dim: int | None = None,
    seed: int = 0,
    every: int = 1,
) -> list[dict[str, float]]:
    """Projected power iteration X_{t+1} = orth(P X_t); overlap and NC1 of every ``every``-th iterate.

    Args:
        edge_index: (2, E) undirected graph (both directions).
        labels: (N,) true communities, used only to score the iterates.
        num_classes: C.
        method: ``"bethe"`` or ``"laplacian"``.
        iterations: number of power steps.
        homophilic: p > q (else the heterophilic variant of the operator).
        dim: columns of X (default C).
        seed: seed of X_0 ~ N(0, 1).
        every: score iterates 0, every, 2·every, ... and the last one.

    Returns:
        ``[{"iteration", "overlap", "nc1", "nc1_trace"}]``.
    """
    if iterations < 0 or every < 1:
        raise ValueError(f"need iterations >= 0 and every >= 1, got {iterations}, {every}")
    n = labels.shape[0]
    apply = power_operator(edge_index, n, method, homophilic=homophilic)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim or num_classes, generator=gen, dtype=torch.float64).to(edge_index.device)
    out = []
    for t in range(iterations + 1):
        if t % every == 0 or t == iterations:
            s = ClassStats(num_classes=num_classes).update(x, labels)
            out.append({
                "iteration": t,
                "overlap": kmeans_overlap(x, labels, num_classes, seed=seed),
                "nc1": _nc1_or_nan(s),
                "nc1_trace": _nc1_or_nan(s, nc1_trace),
            })
        if t < iterations:
            x, _ = torch.linalg.qr(apply(x))  # (N, C) orthonormal columns
    return out


def spectral_matrix(edge_index: Tensor, num_nodes: int, method: str) -> Tensor:
    """The sparse (COO, float64) operator M of the official baselines: Bethe Hessian (r = √(mean degree)) or L."""
    a, deg = _adjacency(edge_index, num_nodes)
    idx = torch.arange(num_nodes, device=edge_index.device)
    diag_idx = torch.stack([idx, idx])
    if method == "bethe":
        r = math.sqrt(float(deg.mean()))
        diag = (r * r - 1.0) + deg
        values, indices = -r * a.values(), a.indices()
    elif method == "laplacian":
        s = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
        diag = torch.ones(num_nodes, dtype=torch.float64, device=edge_index.device)
        indices = a.indices()
        values = -(s[indices[0]] * a.values() * s[indices[1]])
    else:
        raise ValueError(f"spectral method must be 'bethe' or 'laplacian', got {method!r}")
    m = torch.sparse_coo_tensor(torch.cat([indices, diag_idx], 1), torch.cat([values, diag]),
                                (num_nodes, num_nodes), check_invariants=False)
    return m.coalesce()


def official_power_iteration(
    edge_index: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    method: str = "bethe",
    iterations: int = 32,
    seed: int = 0,
    every: int = 1,
) -> list[dict[str, float]]:
    """The official deflated power iteration on M̂ = ‖M‖_F I − M (see the module docstring); C = 2 only.

    The top eigenvector v of M̂ (= the eigenvector of M's smallest eigenvalue) is found with ARPACK
    (``scipy.sparse.linalg.eigsh`` on the sparse operator, seeded start), where the official code
    takes a dense ``torch.linalg.eig``; its sign is irrelevant (only v vvᵀ enters).

    Args:
        edge_index: (2, E) undirected graph (both directions).
        labels: (N,) true communities in {0, 1}, used only to score the iterates.
        num_classes: C (must be 2, as in the official code).
        method: ``"bethe"`` or ``"laplacian"``.
        iterations: power steps (the official configs use the GNN depth, 32/64/128).
        seed: seed of the start w_0 ~ N(0, I) and of ARPACK's start vector.
        every: score iterations every, 2·every, ... and the last one.

    Returns:
        ``[{"iteration", "overlap", "nc1", "nc1_trace", "nc1_w"}]`` for t = every, ..., iterations:
        ``nc1``/``nc1_trace`` of y_t (the official "features"), ``nc1_w`` of w_t ("normalized features"),
        ``overlap`` of pred = [y_t < 0].
    """
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    if num_classes != 2:
        raise ValueError(f"the official power iteration predicts signs: it needs C = 2, got C={num_classes}")
    if iterations < 1 or every < 1:
        raise ValueError(f"need iterations >= 1 and every >= 1, got {iterations}, {every}")
    n = labels.shape[0]
    m = spectral_matrix(edge_index, n, method)
    shift = float(m.values().square().sum().sqrt())  # ‖M‖_F (torch.norm(M, p=2) of the flattened matrix)

    def apply(x: Tensor) -> Tensor:  # M̂ x = ‖M‖_F x − M x
        return shift * x - torch.sparse.mm(m, x)

    rng = np.random.default_rng(seed)
    op = LinearOperator((n, n), matvec=lambda v: apply(torch.from_numpy(np.asarray(v, dtype=np.float64)
                                                                       .reshape(n, -1))).numpy().ravel(),
                        dtype=np.float64)
    _, vecs = eigsh(op, k=1, which="LA", v0=rng.standard_normal(n), tol=1e-12)
    v = torch.from_numpy(vecs[:, 0]).to(torch.float64)
    v = v / v.norm()
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    out = []
    for t in range(1, iterations + 1):
        y = apply(w)
        w = y - (y[:, 0] @ v) * v[:, None]
        w = w / w.norm()
        if t % every == 0 or t == iterations:
            s_y = ClassStats(num_classes=2).update(y, labels)
            s_w = ClassStats(num_classes=2).update(w, labels)
            pred = (y[:, 0] < 0).long()
            out.append({"iteration": t, "overlap": overlap(pred, labels.cpu(), 2), "nc1": _nc1_or_nan(s_y),
                        "nc1_trace": _nc1_or_nan(s_y, nc1_trace), "nc1_w": _nc1_or_nan(s_w)})
    return out


def _nc1_or_nan(s: ClassStats, fn=nc1) -> float:  # noqa: ANN001
    try:
        return float(fn(s))
    except ValueError:
        return math.nan
