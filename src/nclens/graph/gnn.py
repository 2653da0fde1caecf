"""GraphConv GNNs for community detection, permutation-invariant losses and the overlap score.

The layer (Kothapalli, Tirer & Bruna 2023, eq. 1), with node features as rows::

    h_i' = W2 · mean_{j∈N(i)} h_j + W1 · h_i          (no bias; W1 optional)

i.e. H' = W1 H + W2 H Â with features as columns and Â = A D⁻¹ (an isolated node's neighbour mean
is 0). :class:`GraphConv` is torch_geometric's ``GraphConv(aggr="mean", bias=False)`` as the
official code customises it (``gnn_collapse/models/graphconv.py``: ``lin_root`` = W1 optional,
``lin_rel`` = W2), computed with a sparse CSR matrix P = Âᵀ (row i averages the neighbours of i)
and Pᵀ for the backward pass (:func:`mean_operator`, :class:`MeanAggregate`; ~7× faster than
message passing on CPU for the small feature widths of these experiments).

:class:`GraphConvGNN` stacks blocks of a GraphConv and (optionally) BatchNorm and ReLU, and ends with a
GraphConv to C outputs (the classifier whose W1, W2 the gUFM of :mod:`nclens.graph.gufm` models).
Two block orders:

* ``"conv-bn-relu"`` (nclens 0.1's model): num_layers × (GraphConv → BN → ReLU), the first from d to
  the hidden width;
* ``"conv-relu-bn"`` with ``projection=True`` — the official ``GraphConvModel``: a projection GraphConv
  d → hidden → ReLU → BN, then num_layers × (GraphConv → ReLU → BN), then the final GraphConv.

BatchNorm always normalises with the statistics of the nodes it is given (``track_running_stats=False``):
the official code keeps its model in training mode when testing for the same reason (``OnlineRunner``:
"it is better to unfreeze the batch norm values during testing").

Communities carry no names, so the loss is minimised over the C! relabellings of the targets, per
graph (:func:`permutation_invariant_loss`, whose ``loss`` names mean what they mean in the loss
registry :data:`nclens.nn.losses.LOSSES`: ``mse`` = ``nn.MSELoss`` mean over N·C — the official
``compute_mse_loss_multiclass``; ``mse_half`` = ½‖o − e_k‖² per node, nclens 0.1's GNN "mse"; ``mse_sum``; ``ce``),
and accuracy is the best-permutation accuracy; overlap = (acc − 1/C)/(1 − 1/C) (Decelle et al. 2011;
Chen, Li & Bruna 2019; ``compute_accuracy_multiclass`` of the official code).

Example:
    >>> import torch
    >>> from nclens.graph.gnn import permutation_invariant_loss, overlap
    >>> y = torch.tensor([0, 0, 1, 1])
    >>> out = torch.tensor([[0., 1.], [0., 1.], [1., 0.], [1., 0.]])   # perfect, with labels swapped
    >>> float(permutation_invariant_loss(out, y, 2, loss="mse")), overlap(out.argmax(1), y, 2)
    (0.0, 1.0)
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "GNNConfig",
    "GraphConv",
    "GraphConvGNN",
    "MeanAggregate",
    "mean_operator",
    "mean_aggregate",
    "normalized_adjacency",
    "permutations",
    "permutation_invariant_loss",
    "PERMUTATION_LOSSES",
    "BLOCK_ORDERS",
    "best_permutation_accuracy",
    "best_permutation",
    "overlap",
    "graph_items",
]

#: Largest C whose C! permutations are enumerated by the loss (8! = 40,320).
MAX_PERMUTATION_CLASSES = 8
#: Losses of :func:`permutation_invariant_loss` (names of :data:`nclens.nn.losses.LOSSES`).
PERMUTATION_LOSSES = ("mse", "mse_half", "mse_sum", "ce")
#: Block orders of :class:`GraphConvGNN`.
BLOCK_ORDERS = ("conv-bn-relu", "conv-relu-bn")

Operator = tuple[Tensor, Tensor]


def mean_aggregate(x: Tensor, edge_index: Tensor, num_nodes: int | None = None) -> Tensor:
    """Neighbour means (Âᵀ X in node-major form): row i = mean_{j∈N(i)} x_j, 0 for isolated nodes.

    ``edge_index`` holds directed pairs (source j, target i); an undirected graph lists both.
    With H = Xᵀ (features as columns) this is H Â, Â = A D⁻¹. Computed in ``x``'s dtype by
    ``index_add`` (the reference the sparse operator is tested against).
    """
    n = x.shape[0] if num_nodes is None else num_nodes
    src, dst = edge_index[0], edge_index[1]
    out = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, dst, x[src])
    deg = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(
        0, dst, torch.ones_like(dst, dtype=x.dtype)
    )
    return out / deg.clamp_min(1.0)[:, None]


def normalized_adjacency(edge_index: Tensor, num_nodes: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Â = A D⁻¹ as a sparse (N, N) COO tensor: Â_{ji} = A_{ji}/D_i (column i sums to 1, or 0 if isolated)."""
    dst = edge_index[1]
    deg = torch.zeros(num_nodes, dtype=dtype, device=edge_index.device).index_add_(
        0, dst, torch.ones_like(dst, dtype=dtype)
    )
    values = 1.0 / deg[dst]
    return torch.sparse_coo_tensor(edge_index, values, (num_nodes, num_nodes), check_invariants=False).coalesce()


def mean_operator(edge_index: Tensor, num_nodes: int, *, dtype: torch.dtype = torch.float32) -> Operator:
    """(P, Pᵀ) as sparse CSR matrices: P[i, j] = 1/D_i for every edge j → i (P = Âᵀ, so P X = mean of neighbours).

    Build once per graph; :class:`MeanAggregate` uses P forward and Pᵀ backward.

    Example:
        >>> import torch
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> p, _ = mean_operator(ei, 3)
        >>> p.to_dense().tolist()
        [[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]
    """
    src, dst = edge_index[0], edge_index[1]
    deg = torch.zeros(num_nodes, dtype=dtype, device=edge_index.device).index_add_(
        0, dst, torch.ones(dst.numel(), dtype=dtype, device=edge_index.device)
    )
    values = 1.0 / deg[dst]
    p = torch.sparse_coo_tensor(torch.stack([dst, src]), values, (num_nodes, num_nodes), check_invariants=False)
    p = p.coalesce()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return p.to_sparse_csr(), p.t().coalesce().to_sparse_csr()


class MeanAggregate(torch.autograd.Function):
    """y = P x with the gradient Pᵀ g (P, Pᵀ from :func:`mean_operator`); no gradient for P."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, p: Tensor, p_t: Tensor) -> Tensor:  # noqa: D102
        ctx.p_t = p_t
        return p @ x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # noqa: D102
        return ctx.p_t @ grad.contiguous(), None, None


def _operator(graph: Tensor | Operator, num_nodes: int, dtype: torch.dtype) -> Operator:
    if isinstance(graph, Tensor):  # an edge_index
        return mean_operator(graph, num_nodes, dtype=dtype)
    p, p_t = graph
    if p.dtype != dtype:
        p, p_t = p.to(dtype), p_t.to(dtype)
    return p, p_t


class GraphConv(nn.Module):
    """h_i' = W1 h_i + W2 mean_{j∈N(i)} h_j, bias-free (``lin_root`` = W1, optional; ``lin_rel`` = W2).

    The official ``GraphConv`` (``gnn_collapse/models/graphconv.py``) with ``aggr="mean"``, ``bias=False``;
    ``forward(x, graph)`` takes an ``edge_index`` or a precomputed :func:`mean_operator`.
    """

    def __init__(self, in_dim: int, out_dim: int, *, use_w1: bool = True) -> None:
        super().__init__()
        self.lin_rel = nn.Linear(in_dim, out_dim, bias=False)
        self.lin_root = nn.Linear(in_dim, out_dim, bias=False) if use_w1 else None

    @property
    def weights(self) -> tuple[Tensor | None, Tensor]:
        """(W1, W2), each (out, in); W1 is ``None`` without a root weight."""
        return (self.lin_root.weight if self.lin_root is not None else None), self.lin_rel.weight

    def forward(self, x: Tensor, graph: Tensor | Operator) -> Tensor:
        p, p_t = _operator(graph, x.shape[0], x.dtype)
        out = self.lin_rel(MeanAggregate.apply(x, p, p_t))
        if self.lin_root is not None:
            out = out + self.lin_root(x)
        return out


@dataclass(frozen=True)
class GNNConfig:
    """Architecture of :class:`GraphConvGNN`.

    Attributes:
        in_dim: d of the input node features.
        hidden: width of every hidden block.
        num_layers: hidden GraphConv blocks after the (optional) projection block.
        num_classes: C outputs of the final GraphConv layer.
        use_w1: keep the root weight W1 (``False``: h' = W2 · mean of neighbours only).
        batch_norm: BatchNorm in every block (per-graph statistics, see the module docstring).
        block_order: ``"conv-bn-relu"`` (nclens 0.1) or ``"conv-relu-bn"`` (official).
        projection: one more block first, d → hidden (the official ``proj_layer``); then all
            ``num_layers`` blocks are hidden → hidden.
    """

    in_dim: int = 8
    hidden: int = 16
    num_layers: int = 8
    num_classes: int = 2
    use_w1: bool = True
    batch_norm: bool = True
    block_order: str = "conv-bn-relu"
    projection: bool = False

    def __post_init__(self) -> None:
        for name in ("in_dim", "hidden", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.block_order not in BLOCK_ORDERS:
            raise ValueError(f"block_order must be one of {list(BLOCK_ORDERS)}, got {self.block_order!r}")

    @property
    def num_blocks(self) -> int:
        """Blocks in total: ``num_layers`` plus the projection block."""
        return self.num_layers + int(self.projection)


class GraphConvGNN(nn.Module):
    """Blocks of GraphConv (+ BatchNorm, ReLU in ``block_order``) then a GraphConv to C outputs; no biases.

    ``forward(x, graph, return_features=True)`` also returns the features of every depth:
    ``features[0]`` is the input and ``features[l]`` the output of block l (the input of the next
    GraphConv), and ``stages[l - 1]`` the block's intermediate features by name (``"conv"``: the
    GraphConv output before normalisation — the linear map the Tr Σ predictions of
    :mod:`nclens.graph.nc` describe —, ``"bn"``, ``"relu"``).

    Example:
        >>> import torch
        >>> from nclens.graph.gnn import GNNConfig, GraphConvGNN
        >>> net = GraphConvGNN(GNNConfig(in_dim=4, hidden=8, num_layers=2, num_classes=2))
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> net(torch.randn(3, 4), ei).shape
        torch.Size([3, 2])
    """

    def __init__(self, config: GNNConfig) -> None:
        super().__init__()
        self.config = config
        dims = [config.in_dim] + [config.hidden] * config.num_blocks
        self.convs = nn.ModuleList(
            GraphConv(dims[i], dims[i + 1], use_w1=config.use_w1) for i in range(config.num_blocks)
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(config.hidden, track_running_stats=False) if config.batch_norm else nn.Identity()
            for _ in range(config.num_blocks)
        )
        self.head = GraphConv(config.hidden, config.num_classes, use_w1=config.use_w1)

    def layer_weights(self) -> list[tuple[Tensor | None, Tensor]]:
        """(W1, W2) of every block, then of the head."""
        return [c.weights for c in self.convs] + [self.head.weights]

    def forward(self, x: Tensor, graph: Tensor | Operator, *, return_features: bool = False):  # noqa: ANN201
        op = _operator(graph, x.shape[0], x.dtype)
        features = [x]
        stages: list[dict[str, Tensor]] = []
        h = x
        order = self.config.block_order
        for conv, norm in zip(self.convs, self.norms):
            z = conv(h, op)
            stage = {"conv": z}
            if order == "conv-bn-relu":
                if self.config.batch_norm:
                    z = norm(z)
                    stage["bn"] = z
                z = torch.relu(z)
                stage["relu"] = z
            else:
                z = torch.relu(z)
                stage["relu"] = z
                if self.config.batch_norm:
                    z = norm(z)
                    stage["bn"] = z
            h = z
            stages.append(stage)
            features.append(h)
        out = self.head(h, op)
        if return_features:
            return out, features, stages
        return out


def permutations(num_classes: int, device: torch.device | str | None = None) -> Tensor:
    """All C! permutations of 0..C−1 as a (C!, C) int64 tensor (C <= 8)."""
    if not 2 <= num_classes <= MAX_PERMUTATION_CLASSES:
        raise ValueError(
            f"permutation-invariant losses enumerate C! relabellings; need 2 <= C <= "
            f"{MAX_PERMUTATION_CLASSES}, got C={num_classes}"
        )
    return torch.tensor(list(itertools.permutations(range(num_classes))), dtype=torch.long, device=device)


def _check_outputs(outputs: Tensor, labels: Tensor, num_classes: int) -> None:
    if outputs.ndim != 2 or outputs.shape[1] != num_classes:
        raise ValueError(f"outputs must be (N, C={num_classes}), got shape {tuple(outputs.shape)}")
    if labels.shape != (outputs.shape[0],):
        raise ValueError(f"labels must be ({outputs.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]")


def _per_node_terms(outputs: Tensor, loss: str) -> tuple[Tensor, Tensor, float]:
    """(base (N,), score (N, C), scale): the per-node loss for target class k is base − scale · score[:, k]."""
    c = outputs.shape[1]
    if loss == "ce":  # −log softmax(o)_k
        return torch.zeros(outputs.shape[0], dtype=outputs.dtype, device=outputs.device), \
            torch.log_softmax(outputs, dim=1), 1.0
    sq = outputs.square().sum(1) + 1.0  # ‖o − e_k‖² = ‖o‖² + 1 − 2 o_k
    factor = {"mse": 1.0 / c, "mse_sum": 1.0, "mse_half": 0.5}[loss]
    return factor * sq, outputs, 2.0 * factor


def permutation_invariant_loss(
    outputs: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    loss: str = "mse",
    batch: Tensor | None = None,
) -> Tensor:
    """Mean over graphs of min over relabellings π of the graph's mean node loss.

    For graph g with nodes V_g: L_g = min_π (1/|V_g|) Σ_{i∈V_g} ℓ(o_i, π(y_i)) with ℓ the per-sample
    loss of the registry's ``loss`` (:data:`nclens.nn.losses.LOSSES`): ``mse`` (1/C)‖o − e_k‖² (so
    L_g is ``nn.MSELoss`` over N·C, the official ``compute_mse_loss_multiclass``), ``mse_half``
    ½‖o − e_k‖², ``mse_sum`` ‖o − e_k‖², ``ce`` −log softmax(o)_k (the official
    ``compute_ce_loss_multiclass``); returns mean_g L_g. All C! relabellings are evaluated at once
    (a (C!, N) gather; no loop over nodes).

    Args:
        outputs: (N, C) network outputs.
        labels: (N,) int labels in 0..C−1.
        num_classes: C.
        loss: one of :data:`PERMUTATION_LOSSES`.
        batch: (N,) graph index of each node; ``None`` = one graph.
    """
    _check_outputs(outputs, labels, num_classes)
    if loss not in PERMUTATION_LOSSES:
        raise ValueError(f"loss must be one of {list(PERMUTATION_LOSSES)} (the loss registry's names), got {loss!r}")
    perms = permutations(num_classes, outputs.device)  # (P, C)
    base, score, scale = _per_node_terms(outputs, loss)
    target = perms[:, labels]  # (P, N): π(y_i)
    per_node = base[None, :] - scale * score.gather(1, target.T).T  # (P, N)
    if batch is None:
        return per_node.mean(1).min()
    num_graphs = int(batch.max()) + 1
    sums = torch.zeros(perms.shape[0], num_graphs, dtype=per_node.dtype, device=per_node.device)
    sums.index_add_(1, batch, per_node)
    sizes = torch.bincount(batch, minlength=num_graphs).to(per_node.dtype)
    return (sums / sizes).min(0).values.mean()


def _assignment(pred: Tensor, labels: Tensor, num_classes: int) -> tuple[Any, Any, Any]:
    from scipy.optimize import linear_sum_assignment

    if pred.shape != labels.shape or pred.ndim != 1:
        raise ValueError(f"pred and labels must be 1-D of one shape, got {tuple(pred.shape)}, {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("accuracy of zero nodes is undefined")
    conf = torch.zeros(num_classes * num_classes, dtype=torch.long)
    conf.index_add_(0, (pred.cpu() * num_classes + labels.cpu()).long(), torch.ones(pred.numel(), dtype=torch.long))
    conf = conf.view(num_classes, num_classes).numpy()  # conf[predicted, true]
    rows, cols = linear_sum_assignment(conf, maximize=True)
    return conf, rows, cols


def best_permutation_accuracy(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """max over relabellings π of mean[π(pred_i) = y_i], by optimal assignment on the C×C confusion."""
    conf, rows, cols = _assignment(pred, labels, num_classes)
    return float(conf[rows, cols].sum() / labels.numel())


def best_permutation(pred: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """The output matched to each class: ``perm[c]`` = the predicted label that best matches true class c.

    Communities carry no names, so a trained GNN's output k may stand for any class; ``W[perm]`` puts
    the head's rows in class order (row c ↔ class c) before comparing them with class means.

    Example:
        >>> import torch
        >>> best_permutation(torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1]), 2).tolist()
        [1, 0]
    """
    _, rows, cols = _assignment(pred, labels, num_classes)
    perm = torch.empty(num_classes, dtype=torch.long)
    perm[torch.as_tensor(cols)] = torch.as_tensor(rows, dtype=torch.long)
    return perm


def overlap(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """Overlap (acc_π − 1/C)/(1 − 1/C) with acc_π the best-permutation accuracy (1 perfect, ≈0 chance)."""
    acc = best_permutation_accuracy(pred, labels, num_classes)
    chance = 1.0 / num_classes
    return (acc - chance) / (1.0 - chance)


def graph_items(graphs: Sequence[Any], *, dtype: torch.dtype = torch.float32) -> list[tuple[Tensor, ...]]:
    """Ready training items ``(x, edge_index, y, P, Pᵀ)`` of graphs with ``x``, ``edge_index``, ``y`` (one per step)."""
    items = []
    for g in graphs:
        p, p_t = mean_operator(g.edge_index, g.x.shape[0], dtype=dtype)
        items.append((g.x.to(dtype), g.edge_index, g.y, p, p_t))
    return items


def init_scale(module: nn.Module, gain: float = 1.0) -> None:
    """Re-initialise every linear weight with N(0, gain²/fan_in) (useful for deep, bias-free stacks)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
