"""Neural collapse in graph neural networks (Kothapalli, Tirer & Bruna, NeurIPS 2023).

Library modules (import them directly):

* :mod:`nclens.graph.sbm` — SBM (nclens's exact-p and the official max(A, Aᵀ) sampler) and regular-SBM
  graphs, Gaussian node features, seeded datasets with edge statistics.
* :mod:`nclens.graph.gnn` — GraphConv GNN (sparse CSR aggregation; nclens's and the official block order),
  permutation-invariant losses named by the loss registry, overlap, best permutation.
* :mod:`nclens.graph.nc` — per-layer node NC of H and H Â (ETF and orthogonal-frame variants), the
  official NC2/NC3 set of the head and of Ŷ = W1 H + W2 H Â, Tr Σ ratios with predictions and bounds.
* :mod:`nclens.graph.gufm` — graph unconstrained feature model (checkpointable solver) and the
  structural condition.
* :mod:`nclens.graph.spectral` — Bethe Hessian / normalised Laplacian: nclens's subspace iteration and the
  official deflated power iteration.

The platform shape: :mod:`nclens.graph.config` (typed configs), :mod:`nclens.graph.experiment` (kinds
``gnn`` and ``gufm``), :mod:`nclens.graph.figures`, shipped ``configs/*.yaml`` (``nclens configs``).

This package file imports nothing heavy (torch_geometric is never required; it is a cross-check only).
"""

__all__ = ["sbm", "gnn", "nc", "gufm", "spectral", "config", "experiment", "figures"]
