"""Neural collapse in graph neural networks (Kothapalli, Tirer & Bruna, NeurIPS 2023).

Submodules (import them directly; they need the ``graph`` extra, torch_geometric):

* :mod:`nclens.graph.sbm` — SBM and regular-SBM graphs, Gaussian node features, seeded datasets.
* :mod:`nclens.graph.gnn` — GraphConv GNN, permutation-invariant MSE/CE losses, overlap.
* :mod:`nclens.graph.nc` — per-layer node NC of H and H Â, Tr Σ ratios and their weight predictions.
* :mod:`nclens.graph.gufm` — graph unconstrained feature model and the structural condition.
* :mod:`nclens.graph.spectral` — Bethe Hessian / normalised Laplacian power iteration baselines.
* :mod:`nclens.graph.experiment` — runs ``experiments/gnn_*.yaml`` into a run folder with figures.

This package file imports nothing heavy, so ``import nclens.graph`` works without torch_geometric.
"""

__all__ = ["sbm", "gnn", "nc", "gufm", "spectral", "experiment"]
